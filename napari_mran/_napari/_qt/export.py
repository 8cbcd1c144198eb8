"""Export…: the dialog (folder, formats) and the export run (a worker thread that asks
before replacing existing files).

The dialog offers the review marks of the result shown (``reviews``: GeoJSON + CSV,
docs/review.md) when that result has a results store holding marks; otherwise the
choice is disabled and its tooltip says why.  Marks still waiting for the Review tab's
autosave are saved first, so the export and the dialog see what the reviewer marked."""

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

from ...errors import MRANError
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
#: the review marks of the shown result's store: offered only when it holds marks
#: (ticked then: a reviewer who marked bags wants them with the results)
REVIEWS_TEXT = "Review marks (GeoJSON + CSV)"


def shown_store(widget) -> str | None:
    """The results store of the result *widget* (the Analyze dock) shows, if any."""
    shown = getattr(widget, "_shown", None)
    return None if shown is None else shown.results_path()


def save_pending_reviews(widget) -> None:
    """Save the marks the Review tab of *widget* has not saved yet (its autosave waits
    1.5 s after a change), so that the export reads them from the store."""
    panel = getattr(widget, "review", None)
    session = getattr(panel, "session", None)
    if session is not None and session.reviews.dirty:
        panel.save()


def review_marks_state(store: str | os.PathLike | None) -> tuple[bool, str]:
    """``(can export, why)``: whether *store* holds review marks to export; *why* is the
    tooltip of the dialog's choice."""
    from ...review import review_summary

    if not store:
        return False, ("The result shown is not in a results store (.mran.zarr): review "
                       "marks live in the store; open the store to review and export them")
    try:
        summary = review_summary(store)
    except (MRANError, OSError) as exc:
        return False, f"The review marks of {store} cannot be read: {exc}"
    if not summary.get("marks"):
        return False, (f"{store} holds no review marks yet: mark bags or patches in the "
                       "Review tab first")
    return True, (f"{summary['marks']} review mark(s) of {Path(store).name} by "
                  f"{', '.join(summary['reviewers'])}: <slide>.reviews.geojson (QuPath "
                  "annotations) and <slide>.reviews.csv")


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

    def __init__(self, parent, folder: str, slide_name: str, *,
                 store: str | os.PathLike | None | bool = True):
        """*store*: the results store whose review marks are offered (None: none; True:
        that of the result *parent*, the Analyze dock, shows)."""
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
        lay.addWidget(self._reviews_check(parent, store))
        note = QLabel("<small>Heatmaps use the weighting shown in the panel. Existing files "
                      "are only replaced after you confirm.</small>")
        note.setWordWrap(True)
        lay.addWidget(note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok |
                                   QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def _reviews_check(self, parent, store) -> QCheckBox:
        """The review-marks choice: enabled and ticked when the store holds marks."""
        if store is True:
            save_pending_reviews(parent)
            store = shown_store(parent)
        cb = QCheckBox(REVIEWS_TEXT)
        ok, why = review_marks_state(store)
        cb.setEnabled(ok)
        cb.setChecked(ok)
        cb.setToolTip(why)
        self.store = str(store) if ok else None
        self.checks[ExportKind.REVIEWS.value] = cb
        return cb

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export folder", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def folder(self) -> str:
        return self.folder_edit.text().strip()

    def selected(self) -> list[str]:
        """The export kinds ticked (napari_mran.vocab.EXPORT_KINDS spelling)."""
        return [k for k, cb in self.checks.items() if cb.isChecked()]


def export_plan(result, folder: str | os.PathLike, kinds: list[str], weighting: str,
                store: str | os.PathLike | None = None) -> list[tuple]:
    """(kind, path, options) of every file the chosen export kinds write
    (:func:`napari_mran.export.export_plan`, with the weighting shown; *store*: whose
    review marks the ``reviews`` kind writes)."""
    from ...export.plan import export_plan as plan

    return [(job.kind, job.path, job.options)
            for job in plan(result, folder, kinds, weighting=weighting, store=store,
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

    def _marks_store(self, result, store) -> str | None:
        """The store whose review marks are exported, after saving pending marks: *store*,
        or that of the result the parent (the Analyze dock) shows when it is *result*;
        None (and an error shown) when it holds none."""
        widget = self.parent()
        save_pending_reviews(widget)
        if store is None and getattr(getattr(widget, "_shown", None), "result", None) is result:
            store = shown_store(widget)
        ok, why = review_marks_state(store)
        if not ok:
            notifications.show_error(f"napari-mran: nothing exported: {why}")
            return None
        return str(store)

    def export(self, result, folder: str | os.PathLike, kinds: list[str],
               weighting: str, store: str | os.PathLike | None = None) -> Any:
        """Write the chosen exports in a worker; ask before replacing existing files.
        ``reviews`` among *kinds* exports the review marks of *store* (default: the
        store of the result the parent dock shows); when it holds none nothing is
        written (as ``napari-mran export``).  Returns the worker, or None when nothing
        is to be written."""
        if any(str(k).lower() == ExportKind.REVIEWS.value for k in kinds):
            store = self._marks_store(result, store)
            if store is None:
                return None
        plan = export_plan(result, folder, kinds, weighting, store)
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
