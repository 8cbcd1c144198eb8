"""The Settings tab: how to analyse (device, bag size, tissue, edge bags, input check,
batch size, torch.compile, the region to analyse inside) and where to save the results
store."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ...inference import AnalysisOptions
from ...vocab import (DEVICES, EDGE_POLICIES, STAIN_NORMALIZATIONS, TISSUE_METHODS,
                      EdgePolicy, TissueMethod)
from ..storage import default_results_folder

DEVICE_LABELS = {"auto": "Auto", "cpu": "CPU", "cuda": "GPU (CUDA)", "mps": "Apple GPU (MPS)"}
TISSUE_LABELS = {TissueMethod.REFERENCE: "reference", TissueMethod.EXACT: "exact (level 0)",
                 TissueMethod.OTSU: "Otsu"}
EDGE_LABELS = {EdgePolicy.PAD: "pad (whole tissue)", EdgePolicy.DROP: "drop (authors' rule)"}
STAIN_LABELS = {"off": "off", "macenko": "Macenko", "reinhard": "Reinhard"}
COMPILE_CHOICES = (("auto", "auto"), ("on", True), ("off", False))
WHOLE_SLIDE = "whole slide"
BAG_UNITS = (("px", "px"), ("µm", "um"))


def fill_combo(combo: QComboBox, values, labels: dict[str, str]) -> QComboBox:
    """One item per value of a vocabulary (napari_mran.vocab), shown with its label."""
    for value in values:
        combo.addItem(labels.get(value, value), value)
    return combo


class SettingsPanel(QWidget):
    """The analysis options (:meth:`options`) and the results folder (:meth:`save_folder`)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.folder_edited = False  # the user chose the folder: no default replaces it
        form = QFormLayout(self)
        self.device_combo = fill_combo(QComboBox(), DEVICES, DEVICE_LABELS)
        self.device_info = QLabel("looking for devices…")
        self.device_info.setWordWrap(True)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.device_info)
        form.addRow("Bag size", self._bag_row())

        self.tissue_combo = fill_combo(QComboBox(), TISSUE_METHODS, TISSUE_LABELS)
        self.tissue_combo.setToolTip("reference: MRAN's white-fraction rule per bag; Otsu: "
                                     "an Otsu threshold on the low-resolution slide")
        form.addRow("Tissue", self.tissue_combo)
        self.edge_combo = fill_combo(QComboBox(), EDGE_POLICIES, EDGE_LABELS)
        self.edge_combo.setToolTip("Partial bags at the right and bottom edges: pad = analysed "
                                   "with white outside the slide; drop = left out, as the "
                                   "MRAN authors did (exact reproduction)")
        form.addRow("Edge bags", self.edge_combo)
        self.region_combo = QComboBox()
        self.region_combo.addItem(WHOLE_SLIDE, None)
        self.region_combo.setToolTip("Analyse only the bags that meet the polygons, "
                                     "rectangles and ellipses of a Shapes layer drawn on the "
                                     "slide (docs/roi.md)")
        form.addRow("Analyse inside", self.region_combo)
        self.allow_check = QCheckBox("analyse input that is not brightfield H&&E")  # (&& shows one &)
        self.allow_check.setToolTip("By default a slide that fails the brightfield H&E check "
                                    "(fluorescence, grey, other stains) is refused; the "
                                    "override is recorded in provenance")
        form.addRow("Input check", self.allow_check)
        self.stain_combo = fill_combo(QComboBox(), STAIN_NORMALIZATIONS, STAIN_LABELS)
        self.stain_combo.setToolTip("Normalise each bag's stains before the model: to the "
                                    "reference file below, else the model's training "
                                    "cohort, else the built-in H&E reference. Macenko "
                                    "unmixes the stains (for another stain or scanner); "
                                    "Reinhard only matches colour statistics (docs/stain.md)")
        self.preview_btn = QPushButton("Preview")
        self.preview_btn.setToolTip("Show the slide's smallest level normalised as the "
                                    "analysis would (same fit and reference) as a layer "
                                    "over the slide: check that the nuclei stay blue")
        self.stain_combo.currentIndexChanged.connect(self._on_stain_method)
        stain_row = QHBoxLayout()
        stain_row.addWidget(self.stain_combo, 1)
        stain_row.addWidget(self.preview_btn)
        form.addRow("Stain normalisation", stain_row)
        self._on_stain_method()
        self.stain_ref = QLineEdit()
        self.stain_ref.setPlaceholderText("reference: model's / built-in")
        self.stain_ref.setToolTip("Optional stain reference: a JSON reference, a PNG/JPEG/"
                                  "TIFF region or a slide (its smallest level)")
        form.addRow("", self.stain_ref)

        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText("auto")
        self.batch_spin.setValue(0)
        self.batch_spin.setToolTip("Bags per forward pass (auto: 2 on CPU, by free memory "
                                   "on a GPU; halved automatically on out-of-memory)")
        form.addRow("Batch size", self.batch_spin)
        self.compile_combo = QComboBox()
        for text, data in COMPILE_CHOICES:
            self.compile_combo.addItem(text, data)
        self.compile_combo.setToolTip("torch.compile the CNN (auto: on CPU for slides with "
                                      ">= 64 bags; the first batch then takes longer)")
        form.addRow("torch.compile", self.compile_combo)

        self.save_check = QCheckBox("save (.mran.zarr) in:")
        self.save_check.setChecked(True)
        form.addRow("Results", self.save_check)
        form.addRow("", self._folder_row())

    def _bag_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.bag_px = QSpinBox()
        self.bag_px.setRange(256, 16384)
        self.bag_px.setSingleStep(256)
        self.bag_px.setValue(2048)
        self.bag_um = QDoubleSpinBox()
        self.bag_um.setRange(50.0, 10000.0)
        self.bag_um.setDecimals(1)
        self.bag_um.setValue(1024.0)
        self.bag_um.setSuffix(" µm")
        self.bag_um.setVisible(False)
        self.bag_unit = QComboBox()
        for text, data in BAG_UNITS:
            self.bag_unit.addItem(text, data)
        self.bag_unit.setToolTip("µm makes 20x and 40x scans give the same physical bags "
                                 "(needs the slide's MPP)")
        self.bag_unit.currentIndexChanged.connect(self._on_bag_unit)
        row.addWidget(self.bag_px, 1)
        row.addWidget(self.bag_um, 1)
        row.addWidget(self.bag_unit)
        return row

    def _folder_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setToolTip("Default: a 'mran-results' folder beside the slide if "
                                    "that is writable, else the napari-mran cache folder")
        self.folder_edit.textEdited.connect(self._on_folder_edited)
        self.folder_edit.setMinimumWidth(80)
        self.folder_btn = QPushButton("…")
        self.folder_btn.setMaximumWidth(30)
        self.folder_btn.clicked.connect(self._browse_folder)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.folder_btn)
        return row

    # ------------------------------------------------------------------ reading
    def options(self) -> AnalysisOptions:
        """The analysis options chosen (ValueError naming a bad one).  A stain reference
        file is only checked to exist here: reading and fitting it (a slide's smallest
        level: about a second) is the analysis worker's, whose errors are notifications
        naming the file."""
        um = self.bag_unit.currentData() == "um"
        reference = self.stain_ref.text().strip() or None
        if reference is not None and self.stain_combo.currentData() != "off":
            from ...stain.user import check_stain_reference_file

            check_stain_reference_file(reference)  # ValueError
        return AnalysisOptions(
            bag_px=None if um else int(self.bag_px.value()),
            bag_um=float(self.bag_um.value()) if um else None,
            tissue_method=self.tissue_combo.currentData(),
            edge=self.edge_combo.currentData(),
            allow_non_brightfield=self.allow_check.isChecked(),
            stain_normalize=self.stain_combo.currentData(),
            stain_reference=self.stain_ref.text().strip() or None,
            device=self.device_combo.currentData(),
            batch_size=self.batch_spin.value() or "auto",
            compile=self.compile_combo.currentData())

    def device(self) -> str:
        return self.device_combo.currentData()

    def region_layer(self) -> str | None:
        """The name of the Shapes layer to analyse inside, or None (whole slide)."""
        return self.region_combo.currentData()

    def set_region_layers(self, names: list[str]) -> None:
        """The viewer's Shapes layers changed: one item each; the choice is kept while its
        layer exists (else back to the whole slide)."""
        chosen = self.region_layer()
        self.region_combo.blockSignals(True)
        self.region_combo.clear()
        self.region_combo.addItem(WHOLE_SLIDE, None)
        for name in names:
            self.region_combo.addItem(name, name)
        index = self.region_combo.findData(chosen) if chosen in names else 0
        self.region_combo.setCurrentIndex(max(0, index))
        self.region_combo.blockSignals(False)

    def save_folder(self, slide_path: str) -> Path | None:
        """Where to save the results store, or None when saving is off."""
        if not self.save_check.isChecked():
            return None
        text = self.folder_edit.text()
        if not text.strip():
            return default_results_folder(slide_path)
        return Path(text).expanduser()

    # ------------------------------------------------------------------ updating
    def set_bag_px(self, bag_px: int) -> None:
        """The model's bag size (when a model is chosen)."""
        self.bag_px.setValue(int(bag_px))

    def show_devices(self, info: dict) -> None:
        """What the environment probe found (:func:`..jobs.probe_environment`)."""
        cuda, mps = info.get("cuda"), info.get("mps")
        found = [f"CUDA: {cuda}"] if cuda else []
        if mps:
            found.append("Apple MPS")
        self.device_info.setText("found: " + (", ".join(found) if found else "CPU only"))
        model = self.device_combo.model()
        model.item(self.device_combo.findData("cuda")).setEnabled(bool(cuda))
        model.item(self.device_combo.findData("mps")).setEnabled(bool(mps))
        if info.get("torch_error"):
            self.device_info.setText(f"torch unavailable: {info['torch_error']}")

    def follow_slide(self, slide) -> None:
        """The slide to analyse changed: its default results folder, µm only with an MPP."""
        if not self.folder_edited:
            self.folder_edit.setText(str(default_results_folder(slide.path)))
        has_mpp = slide.mpp is not None
        self.bag_unit.model().item(self.bag_unit.findData("um")).setEnabled(has_mpp)
        if not has_mpp and self.bag_unit.currentData() == "um":
            self.bag_unit.setCurrentIndex(self.bag_unit.findData("px"))
        self.bag_unit.setToolTip("" if has_mpp else "This slide has no MPP: bag size in "
                                 "level-0 pixels only")

    def set_editable(self, on: bool) -> None:
        """Every control on or off (off while an analysis runs)."""
        for w in (self.device_combo, self.bag_px, self.bag_um, self.bag_unit,
                  self.tissue_combo, self.edge_combo, self.region_combo, self.allow_check,
                  self.stain_combo, self.stain_ref, self.batch_spin, self.compile_combo,
                  self.save_check, self.folder_edit, self.folder_btn):
            w.setEnabled(on)
        self._on_stain_method()

    def _on_stain_method(self, *_args) -> None:
        self.preview_btn.setEnabled(self.stain_combo.isEnabled()
                                    and self.stain_combo.currentData() != "off")

    def _on_bag_unit(self, *_args) -> None:
        um = self.bag_unit.currentData() == "um"
        self.bag_px.setVisible(not um)
        self.bag_um.setVisible(um)

    def _on_folder_edited(self, *_args) -> None:
        self.folder_edited = True

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for results",
                                                  self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)
            self.folder_edited = True
