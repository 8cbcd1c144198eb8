"""The Result tab's display part: the slide prediction, the display controls
(weighting, colour scale, opacity, top X %, top bags), the colour bars and the
top-bags table."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHeaderView,
    QLabel,
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
from ..shown import Display, top_bag_rows
from ..texts import prediction_html

SCALING_LABELS = {"minmax": "min–max of this slide", "percentile": "1–99th percentile",
                  "fixed": "fixed 0–1 (compare slides)"}
TABLE_HEADER = ("#", "γ", "P(class)", "x, y (px)")


def gradient_pixmap(colormap: str, width: int = 140, height: int = 12) -> QPixmap:
    """A horizontal colour bar (low values left) of a napari colormap."""
    from napari.utils.colormaps import ensure_colormap

    rgba = ensure_colormap(colormap).map(np.linspace(0.0, 1.0, width))  # (width, 4) float
    row = (np.clip(rgba[:, :3], 0, 1) * 255).astype(np.uint8)           # (width, 3)
    rgb = np.ascontiguousarray(np.broadcast_to(row, (height, width, 3)))
    image = QImage(rgb.tobytes(), width, height, 3 * width, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


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

    def __init__(self, parent=None):
        super().__init__(parent)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        self.prediction_label = QLabel("No result yet")
        self.prediction_label.setWordWrap(True)
        self.prediction_label.setTextFormat(Qt.TextFormat.RichText)
        col.addWidget(self.prediction_label)
        col.addLayout(self._controls())
        col.addLayout(self._colorbars())
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

    def _colorbars(self) -> QGridLayout:
        # colour bars of the three attention layers (napari's canvas colour-bar overlay
        # is not used: napari 0.9.2 segfaults drawing after such a layer is removed)
        grid = QGridLayout()
        self.colorbars = {}
        for row, level in enumerate(LEVELS):
            name = QLabel(L.ROLES[level].replace(" attention", ""))
            bar = QLabel()
            bar.setPixmap(gradient_pixmap(L.COLORMAPS[level], 110, 12))
            bar.setFixedSize(110, 12)
            bar.setToolTip(f"{L.ROLES[level]}: colormap {L.COLORMAPS[level]}")
            lo, hi = QLabel("–"), QLabel("–")
            hi.setAlignment(Qt.AlignmentFlag.AlignRight)
            grid.addWidget(name, row, 0)
            grid.addWidget(lo, row, 1)
            grid.addWidget(bar, row, 2)
            grid.addWidget(hi, row, 3)
            grid.setColumnStretch(2, 1)
            self.colorbars[level] = (bar, lo, hi)
        return grid

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
                       opacity=self.opacity_slider.value() / 100.0, top_k=self.top_k.value())

    def bag_of_row(self, row: int) -> int | None:
        """The bag index shown in *row* of the top-bags table, or None."""
        if row < 0 or row >= self.top_table.rowCount():
            return None
        return int(self.top_table.item(row, 0).data(Qt.ItemDataRole.UserRole))

    # ------------------------------------------------------------------ showing
    def set_editable(self, on: bool) -> None:
        for w in (self.weight_local, self.weight_global, self.scaling_combo,
                  self.opacity_slider, self.top_percent, self.top_k, self.top_table):
            w.setEnabled(on)

    def show_prediction(self, result) -> None:
        self.prediction_label.setText(prediction_html(result))
        self.set_editable(True)

    def show_limits(self, limits: dict[str, tuple[float, float]]) -> None:
        """The contrast limits of the levels in *limits* under their colour bars."""
        for level, (lo, hi) in limits.items():
            _bar, lo_label, hi_label = self.colorbars[level]
            lo_label.setText("–" if lo is None else f"{lo:.3g}")
            hi_label.setText("–" if hi is None else f"{hi:.3g}")

    def show_caption(self) -> None:
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
        self.set_editable(False)
