"""The Export dialog offers the review marks of the result shown (GeoJSON + CSV) when its
results store holds marks, and says why not otherwise; the export runs through the
widget's real export path.  A real napari window (Xvfb) on a real store: the bundled
CMU-1-Small-Region analysed by the demo model, marks saved with
:class:`napari_mran.review.Reviews`, the store opened with the reader."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_mran._napari._qt import widget as W
from napari_mran._napari._qt.export import REVIEWS_TEXT, ExportDialog
from napari_mran.analysis import predict_slide
from napari_mran.model import load_model
from napari_mran.results import SlideResult
from napari_mran.review import Reviews

SLIDE = Path(__file__).resolve().parents[2] / "napari_mran" / "data" / "CMU-1-Small-Region.svs"
STEM = "CMU-1-Small-Region"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    result = predict_slide(str(SLIDE), load_model("demo"), compile=False)
    return result.save(tmp_path_factory.mktemp("dialog") / "cmu.mran.zarr")


@pytest.fixture
def store(analysed, tmp_path) -> Path:
    out = tmp_path / "cmu.mran.zarr"
    shutil.copytree(analysed, out)
    return out


def _open_in_widget(make_napari_viewer, qtbot, store: Path):
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    assert isinstance(w, W.AnalyzeSlideWidget)
    viewer.open(str(store), plugin="napari-mran")
    qtbot.waitUntil(lambda: w._shown is not None, timeout=30000)
    return viewer, w


def _wait_export(qtbot, w) -> None:
    qtbot.waitUntil(lambda: w.exporter.worker is None and w.exporter.last is not None,
                    timeout=60000)


def _accept_dialog_into(folder: Path) -> None:
    """When the modal Export dialog is up: point it at *folder* and press OK."""
    def accept():
        dlg = QApplication.activeModalWidget()
        if not isinstance(dlg, ExportDialog):
            QTimer.singleShot(50, accept)
            return
        dlg.folder_edit.setText(str(folder))
        dlg.accept()

    QTimer.singleShot(0, accept)


def test_dialog_exports_the_review_marks(make_napari_viewer, qtbot, tmp_path, store):
    rv = Reviews.load(store)
    rv.set_bag(0, "agree", reviewer="dr a")
    rv.set_patch(1, 12, "label", "tumour", reviewer="dr b")
    rv.save()
    _viewer, w = _open_in_widget(make_napari_viewer, qtbot, store)
    # one more mark in the Review tab, not yet autosaved: the dialog saves it first
    w.tabs.setCurrentWidget(w.review)  # the Review tab opens the store's marks
    qtbot.waitUntil(lambda: w.review.session is not None, timeout=10000)
    w.review.set_mark("disagree")
    assert w.review.session.mark_place(1)
    assert w.review.session.reviews.dirty

    dlg = ExportDialog(w, str(tmp_path), STEM)
    cb = dlg.checks["reviews"]
    assert cb.text() == REVIEWS_TEXT and cb.isEnabled() and cb.isChecked()
    assert "3 review mark(s) of cmu.mran.zarr by dr a, dr b" in cb.toolTip()
    assert len(Reviews.load(store).marks) == 3 and not w.review.session.reviews.dirty
    assert "reviews" in dlg.selected()
    dlg.reject()

    out = tmp_path / "export"
    _accept_dialog_into(out)
    w.open_export_dialog()  # the real path: the dialog, then the widget's export()
    _wait_export(qtbot, w)
    written = sorted(Path(p).name for p in w.exporter.last)
    assert f"{STEM}.reviews.geojson" in written and f"{STEM}.reviews.csv" in written
    assert f"{STEM}.patches.geojson" in written  # the other ticked kinds too

    gj = json.loads((out / f"{STEM}.reviews.geojson").read_text())
    got = {(f["properties"]["bag_index"], f["properties"]["patch_index"],
            f["properties"]["classification"]["name"]) for f in gj["features"]}
    assert got == {(0, None, "Agree"), (1, 12, "tumour"), (1, None, "Disagree")}
    assert len(gj["features"]) == 3
    assert gj["napari_mran"]["counts"]["marks"] == 3
    with open(out / f"{STEM}.reviews.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["mark"] for r in rows) == ["agree", "disagree", "label"]
    assert {r["reviewer"] for r in rows if r["mark"] != "disagree"} == {"dr a", "dr b"}
    # the patch GeoJSON of the same export honours the shown-cell mask
    result = SlideResult.load(store)
    n_shown = int((result.shown("patch") & result.slide_boxes("patch")[1]).sum())
    patches = json.loads((out / f"{STEM}.patches.geojson").read_text())
    assert len(patches["features"]) == n_shown < int(result.slide_boxes("patch")[1].sum())


def test_no_marks_disabled_with_the_reason(make_napari_viewer, qtbot, tmp_path, store,
                                           errors):
    _viewer, w = _open_in_widget(make_napari_viewer, qtbot, store)
    dlg = ExportDialog(w, str(tmp_path), STEM)
    cb = dlg.checks["reviews"]
    assert not cb.isEnabled() and not cb.isChecked() and "reviews" not in dlg.selected()
    assert "holds no review marks yet" in cb.toolTip() and str(store) in cb.toolTip()
    dlg.reject()
    # asked anyway (e.g. by a script): an error naming the store, nothing written
    out = tmp_path / "export"
    assert w.export(out, ["csv", "reviews"]) is None
    assert errors and str(store) in errors[-1] and "no review marks" in errors[-1]
    assert not out.exists()


def test_unreadable_marks_and_no_store_are_explained(make_napari_viewer, qtbot, tmp_path,
                                                     store):
    rv = Reviews.load(store)
    rv.set_bag(0, "agree", reviewer="dr a")
    rv.save()
    record = store / "reviews" / "zarr.json"
    doc = json.loads(record.read_text())
    text = json.dumps(doc).replace('"agree"', '"disagree"')  # edited by hand
    assert text != json.dumps(doc)
    record.write_text(text)
    _viewer, w = _open_in_widget(make_napari_viewer, qtbot, store)
    dlg = ExportDialog(w, str(tmp_path), STEM)
    cb = dlg.checks["reviews"]
    assert not cb.isEnabled() and "cannot be read" in cb.toolTip()
    dlg.reject()
    # a result that is not in a results store (e.g. a run that could not save it)
    dlg = ExportDialog(w, str(tmp_path), STEM, store=None)
    cb = dlg.checks["reviews"]
    assert not cb.isEnabled() and "not in a results store" in cb.toolTip()
    dlg.reject()
    assert record.read_text() == text  # nothing rewritten
