"""The Result tab's display part: the slide prediction, the display controls
(weighting, colour scale, colour map, opacity, top X %, top bags), the colour bars with
units, side by side, and the top-bags table."""

from __future__ import annotations

from napari.utils import notifications
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPushButton,
    QRadioButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...vocab import COLOUR_SCALINGS, LEVELS, Weighting
from .. import layers as L
from ..colormaps import OPAQUE_CHOICES, RAMP_CHOICE, colormap_for, opacity_for
from ..compare import CompareError, side_by_side
from ..shown import Display, find_shown, results_in, top_bag_rows
from ..texts import prediction_html
from .colorbar import ColorBars

SCALING_LABELS = {"minmax": "min–max of this slide", "percentile": "1–99th percentile",
                  "fixed": "fixed 0–1 (compare slides)"}
TABLE_HEADER = ("#", "γ", "P(class)", "x, y (px)")


class ResultPanel(QWidget):
    """Shows a result's prediction and how its attention layers are drawn."""

    #: weighting, colour scale or top X % changed
    display_changed = Signal()
    #: opacity changed (0-1)
    opacity_changed = Signal(float)
    #: the number of top bags changed
    top_k_changed = Signal(int)
    #: a row of the top-bags table was chosen (its row number)
    row_chosen = Signal(int)

    def __init__(self, viewer=None, parent=None):
        super().__init__(parent)
        self._viewer = viewer
        self._result = None        # the result whose prediction is shown
        self.compare = None        # the side-by-side state (compare.SideBySide) when on
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        self.prediction_label = QLabel("No result yet")
        self.prediction_label.setWordWrap(True)
        self.prediction_label.setTextFormat(Qt.TextFormat.RichText)
        col.addWidget(self.prediction_label)
        col.addLayout(self._controls())
        self.colorbars = ColorBars({lv: colormap_for(lv) for lv in LEVELS})
        col.addWidget(self.colorbars)
        self.compare_btn = QPushButton("Side by side…")
        self.compare_btn.setCheckable(True)
        self.compare_btn.setToolTip("This result and another one in two views, with the "
                                    "same fixed colour scale per level")
        self.compare_btn.toggled.connect(self._toggle_compare)
        col.addWidget(self.compare_btn)
        self.colorbar_label = QLabel()
        self.colorbar_label.setWordWrap(True)
        self.colorbar_label.setTextFormat(Qt.TextFormat.RichText)
        col.addWidget(self.colorbar_label)
        col.addWidget(self._table())
        self.set_editable(False)

    def _controls(self) -> QFormLayout:
        form = QFormLayout()
        wrow = QVBoxLayout()
        self.weight_local = QRadioButton("local (α, β)")
        self.weight_global = QRadioButton("global (γα, γαβ)")
        self.weight_local.setChecked(True)
        self.weight_local.setToolTip("Attention within its bag (patch α) or patch (cell β)")
        self.weight_global.setToolTip("Attention weighted by its bag (γα) and patch (γαβ): "
                                      "comparable across the whole slide")
        self._weight_group = QButtonGroup(self)
        self._weight_group.addButton(self.weight_local)
        self._weight_group.addButton(self.weight_global)
        self.weight_local.toggled.connect(lambda *_: self.display_changed.emit())
        wrow.addWidget(self.weight_local)
        wrow.addWidget(self.weight_global)
        form.addRow("Weighting", wrow)

        self.scaling_combo = QComboBox()
        for value in COLOUR_SCALINGS:
            self.scaling_combo.addItem(SCALING_LABELS.get(value, value), value)
        self.scaling_combo.currentIndexChanged.connect(lambda *_: self.display_changed.emit())
        form.addRow("Colour scale", self.scaling_combo)

        self.colormap_combo = QComboBox()
        self.colormap_combo.addItem(f"{RAMP_CHOICE} (default)", RAMP_CHOICE)
        for name in OPAQUE_CHOICES:
            self.colormap_combo.addItem(f"{name} (opaque)", name)
        self.colormap_combo.setToolTip("Translucent ramp: low values leave the tissue "
                                       "visible, high values tint it")
        self.colormap_combo.currentIndexChanged.connect(self._on_colormap)
        form.addRow("Colour map", self.colormap_combo)

        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(int(L.DEFAULT_OPACITY * 100))
        self.opacity_slider.valueChanged.connect(lambda v: self.opacity_changed.emit(v / 100.0))
        form.addRow("Opacity", self.opacity_slider)

        self.top_percent = QDoubleSpinBox()
        self.top_percent.setRange(0.5, 100.0)
        self.top_percent.setDecimals(1)
        self.top_percent.setValue(100.0)
        self.top_percent.setSuffix(" %")
        self.top_percent.setToolTip("Show only the highest X % of each attention layer "
                                    "(100 % = everything)")
        self.top_percent.valueChanged.connect(lambda *_: self.display_changed.emit())
        form.addRow("Show only top", self.top_percent)

        self.top_k = QSpinBox()
        self.top_k.setRange(1, 200)
        self.top_k.setValue(10)
        self.top_k.valueChanged.connect(self.top_k_changed.emit)
        form.addRow("Top bags", self.top_k)
        return form

    def _table(self) -> QTableWidget:
        table = self.top_table = QTableWidget(0, len(TABLE_HEADER))
        table.setHorizontalHeaderLabels(list(TABLE_HEADER))
        table.verticalHeader().setVisible(False)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        table.setMinimumHeight(160)
        table.setToolTip("Bags by bag attention γ, highest first; click one to zoom to it")
        table.cellClicked.connect(lambda r, _c: self.row_chosen.emit(r))
        table.currentCellChanged.connect(lambda r, *_: self.row_chosen.emit(r))
        return table

    # ------------------------------------------------------------------ reading
    def weighting(self) -> str:
        return (Weighting.GLOBAL if self.weight_global.isChecked() else Weighting.LOCAL).value

    def display(self) -> Display:
        return Display(weighting=self.weighting(), scaling=self.scaling_combo.currentData(),
                       top_percent=float(self.top_percent.value()),
                       opacity=self.opacity_slider.value() / 100.0, top_k=self.top_k.value(),
                       colormap=self.colormap_combo.currentData())

    def bag_of_row(self, row: int) -> int | None:
        """The bag index shown in *row* of the top-bags table, or None."""
        if row < 0 or row >= self.top_table.rowCount():
            return None
        return int(self.top_table.item(row, 0).data(Qt.ItemDataRole.UserRole))

    # ------------------------------------------------------------------ showing
    def set_editable(self, on: bool) -> None:
        for w in (self.weight_local, self.weight_global, self.scaling_combo,
                  self.colormap_combo, self.opacity_slider, self.top_percent, self.top_k,
                  self.top_table, self.compare_btn):
            w.setEnabled(on)

    def show_prediction(self, result) -> None:
        self.prediction_label.setText(prediction_html(result))
        self._result = result
        self.set_editable(True)
        self.track_layers()

    def show_limits(self, limits: dict[str, tuple[float, float]]) -> None:
        """The contrast limits of the levels in *limits* beside their colour bars."""
        self.colorbars.show_limits(limits)

    def show_caption(self) -> None:
        self.colorbars.set_weighting(self.weighting())
        self.colorbars.set_colormaps({lv: colormap_for(lv, self.colormap_combo.currentData())
                                      for lv in LEVELS})
        self.colorbar_label.setText(
            f"<small>{self.scaling_combo.currentText()}, {self.weighting()} weighting; "
            "no colour = no tissue analysed.</small>")

    def fill_top_table(self, result) -> None:
        """The top bags of *result* (None: empty)."""
        table = self.top_table
        table.blockSignals(True)
        table.setRowCount(0)
        if result is not None:
            class_name, rows = top_bag_rows(result, self.top_k.value())
            table.setHorizontalHeaderLabels(["#", "γ", f"P({class_name})", "x, y (px)"])
            table.setRowCount(len(rows))
            for r, (index, cells) in enumerate(rows):
                for c, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    item.setData(Qt.ItemDataRole.UserRole, index)
                    table.setItem(r, c, item)
        table.blockSignals(False)

    def clear(self) -> None:
        """No result shown any more."""
        self.prediction_label.setText("No result shown")
        self.top_table.setRowCount(0)
        self.colorbar_label.setText("")
        self._result = None
        self.compare_btn.setChecked(False)
        self.colorbars.track({})
        self.set_editable(False)

    # ------------------------------------------------------------------ viewer
    def viewer(self):
        """The viewer of the results (given, else napari's current one)."""
        if self._viewer is None:
            import napari

            self._viewer = napari.current_viewer()
        return self._viewer

    def track_layers(self) -> None:
        """The colour bars follow the attention layers of the shown result."""
        viewer = self.viewer()
        shown = None if viewer is None or self._result is None else \
            find_shown(viewer, self._result)
        self.colorbars.track(dict(shown.attention_layers()) if shown else {})

    def _on_colormap(self, *_args) -> None:
        """A new colour map: its usual opacity (1.0 for the ramp, 0.6 opaque ones)."""
        self.opacity_slider.setValue(int(round(opacity_for(
            self.colormap_combo.currentData()) * 100)))
        self.display_changed.emit()

    # ------------------------------------------------------------------ side by side
    def _toggle_compare(self, on: bool) -> None:
        if not on:
            if self.compare is not None:
                self.compare.restore()
                self.compare = None
            return
        try:
            self.compare = self._start_compare()
        except CompareError as exc:
            notifications.show_warning(f"napari-mran: side by side: {exc}")
            self.compare = None
        if self.compare is None:
            self.compare_btn.blockSignals(True)
            self.compare_btn.setChecked(False)
            self.compare_btn.blockSignals(False)
        else:
            self.show_limits(self.compare.limits)

    def _start_compare(self):
        viewer = self.viewer()
        if viewer is None or self._result is None:
            return None
        others = [r for r in results_in(viewer) if r is not self._result]
        if not others:
            raise CompareError("open a second result (a .mran.zarr store or another run)")
        other = others[0]
        if len(others) > 1:
            names = [f"{i + 1}: {r.slide_name}" for i, r in enumerate(others)]
            name, ok = QInputDialog.getItem(self, "Side by side", "Compare with", names,
                                            0, False)
            if not ok:
                return None
            other = others[names.index(name)]
        return side_by_side(viewer, self._result, other)
