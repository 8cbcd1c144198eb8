"""Export…: the dialog (folder, formats) and the export run (a worker thread that asks
before replacing existing files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import notifications
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
)

from ...vocab import ExportKind, file_stem
from ..jobs import export_job

#: what the dialog offers (napari_mran.vocab.ExportKind; the overview picture needs the
#: slide file and is the CLI's), and what is ticked at first
DIALOG_KINDS = {ExportKind.GEOJSON: "QuPath GeoJSON (bags, patches)",
                ExportKind.CSV: "CSV tables (bags, patches, cells)",
                ExportKind.OME_TIFF: "OME-TIFF heatmaps (bag, patch, cell)",
                ExportKind.OME_ZARR: "OME-Zarr heatmaps (bag, patch, cell)",
                ExportKind.PROVENANCE: "Provenance record (JSON)"}
TICKED = (ExportKind.GEOJSON, ExportKind.CSV, ExportKind.PROVENANCE)


def ask_overwrite(parent, paths: list[str]) -> bool:
    """Ask whether the existing *paths* may be replaced."""
    shown = "\n".join(paths[:8]) + ("\n…" if len(paths) > 8 else "")
    answer = QMessageBox.question(
        parent, "Replace existing files?",
        f"{len(paths)} file(s) already exist:\n\n{shown}\n\nReplace them?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class ExportDialog(QDialog):
    """Choose a folder and what to export."""

    def __init__(self, parent, folder: str, slide_name: str):
        super().__init__(parent)
        self.setWindowTitle(f"Export MRAN results of {slide_name}")
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.folder_edit = QLineEdit(folder)
        btn = QPushButton("…")
        btn.clicked.connect(self._browse)
        row.addWidget(QLabel("Folder"))
        row.addWidget(self.folder_edit, 1)
        row.addWidget(btn)
        lay.addLayout(row)
        self.checks = {}
        for kind, text in DIALOG_KINDS.items():
            cb = QCheckBox(text)
            cb.setChecked(kind in TICKED)
            self.checks[kind.value] = cb
            lay.addWidget(cb)
        note = QLabel("<small>Heatmaps use the weighting shown in the panel. Existing files "
                      "are only replaced after you confirm.</small>")
        note.setWordWrap(True)
        lay.addWidget(note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok |
                                   QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def folder(self) -> str:
        return self.folder_edit.text().strip()

    def selected(self) -> list[str]:
        """The export kinds ticked (napari_mran.vocab.EXPORT_KINDS spelling)."""
        return [k for k, cb in self.checks.items() if cb.isChecked()]


def export_plan(result, folder: str | os.PathLike, kinds: list[str], weighting: str
                ) -> list[tuple]:
    """(kind, path, options) of every file the chosen export kinds write
    (:func:`napari_mran.export.export_plan`, with the weighting shown)."""
    from ...export.plan import export_plan as plan

    return [(job.kind, job.path, job.options)
            for job in plan(result, folder, kinds, weighting=weighting,
                            stem=file_stem(result.slide_name or "slide"))]


class Exporter(QObject):
    """Writes exports of a result in a worker thread, one export at a time."""

    #: an export started (True) or ended (False)
    busy = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.worker = None
        self.last: list[str] | str | None = None   # the paths written, or the error
        self.confirm_overwrite = lambda paths: ask_overwrite(parent, paths)

    def export(self, result, folder: str | os.PathLike, kinds: list[str],
               weighting: str) -> Any:
        """Write the chosen exports in a worker; ask before replacing existing files.
        Returns the worker, or None when nothing is to be written."""
        plan = export_plan(result, folder, kinds, weighting)
        existing = [str(p) for _k, p, _o in plan if os.path.lexists(p)]
        overwrite = False
        if existing:
            if not self.confirm_overwrite(existing):
                plan = [(k, p, o) for k, p, o in plan if str(p) not in existing]
                if not plan:
                    notifications.show_info("napari-mran: nothing exported (all files exist)")
                    return None
            else:
                overwrite = True
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            notifications.show_error(f"napari-mran: cannot create {folder}: {exc}")
            return None
        jobs = [(k, str(p), o, overwrite and str(p) in existing) for k, p, o in plan]
        worker = create_worker(export_job, result, jobs, _ignore_errors=True)
        self.worker = worker
        self.last = None
        self.busy.emit(True)

        def done(paths):
            self.last = paths
            self.worker = None
            self.busy.emit(False)
            notifications.show_info(f"napari-mran: exported {len(paths)} file(s) to {folder}")

        def failed(exc):
            self.last = str(exc)
            self.worker = None
            self.busy.emit(False)
            notifications.show_error(f"napari-mran: export failed: {exc}")

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.start()
        return worker
