"""The model row: the bundled demo model, checkpoint files (loaded in a worker thread)
or a model object handed over by a script, and what the chosen model is."""

from __future__ import annotations

import html
import os
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..jobs import load_model_job
from ..texts import model_summary

DEMO, BROWSE, OBJECT = "demo", "browse", "object"  # item data other than checkpoint paths
CHECKPOINT_FILTER = "MRAN checkpoints (*.safetensors *.pt *.pth *.ckpt);;All files (*)"


class ModelPicker(QWidget):
    """Combo box + File… button + a summary of the model (:attr:`model`, None while
    none is chosen or one is loading)."""

    #: the model, or whether one is loading, changed (enable Analyze or not)
    changed = Signal()
    #: a model is chosen (ready to use)
    chosen = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = None
        self.loading = None                     # the worker loading a model, if any
        self._models: dict[int, Any] = {}       # combo index -> loaded model
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.combo = QComboBox()
        self.combo.addItem("Demo model (checking…)", DEMO)
        self.combo.addItem("Checkpoint file…", BROWSE)
        self.combo.activated.connect(self._on_activated)
        row.addWidget(self.combo, 1)
        self.browse_btn = QPushButton("File…")
        self.browse_btn.setToolTip("Choose an MRAN checkpoint (.safetensors, or a reference "
                                   ".pt/.pth; pickles are opened weights-only)")
        self.browse_btn.clicked.connect(self._browse)
        row.addWidget(self.browse_btn)
        col.addLayout(row)
        self.info = QLabel("No model loaded")
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.TextFormat.RichText)
        col.addWidget(self.info)

    def set_editable(self, on: bool) -> None:
        self.combo.setEnabled(on)
        self.browse_btn.setEnabled(on)

    def waiting_why(self) -> str:
        """Why Analyze waits for the model."""
        return "Choose a model first" if self.loading is None else "Loading the model…"

    # ------------------------------------------------------------------ choosing
    def set_model(self, model, label: str = "model") -> None:
        """Use an already loaded model (scripts and tests)."""
        idx = self.combo.count()
        self.combo.addItem(label, OBJECT)
        self._models[idx] = model
        self.combo.setCurrentIndex(idx)
        self._use(model)

    def open_checkpoint(self, path: str) -> None:
        """Load the checkpoint at *path* (in a worker thread) and use it."""
        idx = self.combo.findData(path)
        if idx < 0:
            idx = self.combo.count()
            self.combo.addItem(os.path.basename(path), path)
            self.combo.setItemData(idx, path, Qt.ItemDataRole.ToolTipRole)
        self.combo.setCurrentIndex(idx)
        self._load(path, idx)

    def show_demo_availability(self, info: dict) -> None:
        """What the environment probe found about the bundled demo model; picks it when
        nothing else is chosen."""
        item = self.combo.model().item(0)
        if info.get("demo"):
            self.combo.setItemText(0, "Demo model (bundled)")
            item.setEnabled(True)
            item.setToolTip(info.get("demo_path") or "")
            if self.model is None and self.combo.currentIndex() == 0:
                self._load(DEMO, 0)
        else:
            self.combo.setItemText(0, "Demo model (not bundled)")
            item.setEnabled(False)
            item.setToolTip("The demo checkpoint is not part of this installation "
                            f"(expected {info.get('demo_path')}); choose a checkpoint file")
            if self.model is None:
                self.info.setText("The demo model is not bundled in this installation: "
                                  "choose a checkpoint file (Browse…).")

    def _use(self, model) -> None:
        self.model = model
        self.loading = None
        short, full = model_summary(model)
        self.info.setText(short)
        self.info.setToolTip(full)
        self.chosen.emit(model)
        self.changed.emit()

    def _on_activated(self, index: int) -> None:
        data = self.combo.itemData(index)
        if data == BROWSE:
            self._browse()
        elif data == DEMO:
            self._load(DEMO, index)
        elif index in self._models:  # a model object, or a checkpoint loaded before
            self._use(self._models[index])
        else:  # a checkpoint path
            self._load(data, index)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "MRAN checkpoint", "", CHECKPOINT_FILTER)
        if not path:
            self._restore_selection()
            return
        self.open_checkpoint(path)

    def _restore_selection(self) -> None:
        for idx, model in self._models.items():
            if model is self.model:
                self.combo.setCurrentIndex(idx)
                return

    def _load(self, spec: str, index: int) -> None:
        self.model = None
        self.info.setText(f"Loading {html.escape(os.path.basename(spec))}…")
        worker = create_worker(load_model_job, spec, _ignore_errors=True)
        self.loading = worker
        self.changed.emit()

        def done(model, worker=worker):
            if self.loading is not worker:
                return
            self._models[index] = model
            self._use(model)

        def failed(exc, worker=worker):
            if self.loading is not worker:
                return
            self.loading = None
            self.info.setText(f"<span style='color:#e66'>Cannot load the model: "
                              f"{html.escape(str(exc))}</span>")
            notifications.show_error(f"napari-mran: cannot load the model: {exc}")
            self.changed.emit()

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()
