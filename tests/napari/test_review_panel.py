"""The "Review" panel in a real napari window (Xvfb) on a real results store (the demo
model over a synthetic 8192 x 4096 slide: a 2 x 4 grid of 8 bags, made by a real cohort
run): click / paint marks, the shortcut keys, grouped undo/redo, autosave, reopen,
export, the cohort row updated, a refused save that loses nothing, another model's
marks warned about (docs/gui.md "Review marks")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cohort_folder import build_cohort
from qtpy.QtCore import QPoint, QSettings, Qt
from qtpy.QtTest import QTest

from napari_mran._napari._qt.cohort_panel import CohortPanel
from napari_mran._napari._qt.review_panel import ReviewPanel
from napari_mran._napari.shown import find_shown, results_in
from napari_mran.cli import main
from napari_mran.export.reviews import export_reviews
from napari_mran.review import Reviews

STORE = "slide_0000.mran.zarr"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("review"), n=1, width=8192, height=4096)


@pytest.fixture
def folder(cohort, tmp_path) -> Path:
    out = tmp_path / "pred"
    shutil.copytree(cohort, out)
    return out


def _open(viewer, store: Path):
    viewer.open(str(store), plugin="napari-mran")
    return find_shown(viewer, results_in(viewer)[-1])


def _panel(make_napari_viewer, tmp_path, store: Path):
    viewer = make_napari_viewer(show=True)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    panel = ReviewPanel(viewer, settings=settings)
    viewer.window.add_dock_widget(panel, name="Review")
    shown = _open(viewer, store)
    panel.set_shown(shown)
    return viewer, panel, shown


def _click_world(viewer, world_yx) -> None:
    """A real left click on the canvas at world point *world_yx* (centred there)."""
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(world_yx)
    native = viewer.window._qt_viewer.canvas.native
    QTest.mouseClick(native, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     QPoint(native.width() // 2, native.height() // 2))


def _paint(qtbot, panel, yx, value) -> None:
    """A brush stroke at data pixel *yx*; the panel reads it once napari is done."""
    panel.layer.paint(yx, value)
    qtbot.waitUntil(lambda: panel.layer.data[yx] == panel.session._raster[yx]
                    and not (panel.layer.data != panel.session._raster).any(), timeout=5000)
    qtbot.wait(10)


def _bag_centre(shown, i):
    (y0, x0), (y1, x1) = shown.frame.box_to_world(shown.result.boxes[i])
    return ((y0 + y1) / 2, (x0 + x1) / 2)


def _key(viewer, key, mods=Qt.KeyboardModifier.NoModifier) -> None:
    QTest.keyClick(viewer.window._qt_viewer.canvas.native, key, mods)


def _focus(viewer, qtbot) -> None:
    window = viewer.window._qt_window
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    viewer.window._qt_viewer.canvas.native.setFocus()


def test_layer_sits_on_the_patch_grid(make_napari_viewer, tmp_path, folder):
    viewer, panel, shown = _panel(make_napari_viewer, tmp_path, folder / STORE)
    layer = panel.layer
    assert layer in viewer.layers and layer.name.endswith("review marks")
    assert layer.data.shape == (16, 32) and not layer.data.any()
    patch = shown.layers["patch attention"]
    assert np.allclose(layer.scale, patch.scale) and np.allclose(layer.translate, patch.translate)
    assert viewer.layers.selection.active is layer
    # the legend's colours are the layer's
    assert np.allclose(layer.colormap.map(1)[:3], np.array([0, 170, 0]) / 255)
    assert panel.classes.count() == 2 and "Label: tumour" in panel.legend.text()
    assert "A)" in panel.agree.toolTip() and "Shift+P" in panel.patch_mode.toolTip()
    # hiding the panel (its window closing) saves what is unsaved
    panel.session.mark_place(4)
    panel.hide()
    assert [m.mark for m in Reviews.load(folder / STORE).marks] == ["agree"]


def test_click_paint_keys_undo_autosave(make_napari_viewer, qtbot, tmp_path, folder):
    store = folder / STORE
    viewer, panel, shown = _panel(make_napari_viewer, tmp_path, store)
    layer, rv = panel.layer, panel.session.reviews
    panel.reviewer.setText("dr review")
    panel.reviewer.editingFinished.emit()
    _focus(viewer, qtbot)
    # a click in pan/zoom mode marks the whole bag under the cursor (bag 5 = row 1, col 1)
    _click_world(viewer, _bag_centre(shown, 5))
    assert rv.mark_at(5).mark == "agree" and (layer.data[8:16, 8:16] == 1).all()
    assert layer.data.sum() == 64
    _click_world(viewer, _bag_centre(shown, 5))   # the same mark again: cleared
    assert rv.mark_at(5) is None and not layer.data.any()
    panel.undo_btn.click()                         # one click = one undo step
    assert rv.mark_at(5).mark == "agree" and layer.data.sum() == 64
    # D: disagree; a brush stroke anywhere in bag 2 marks bag 2
    _key(viewer, Qt.Key.Key_D)
    assert panel.disagree.isChecked() and layer.selected_label == 2
    layer.mode = "paint"
    layer.brush_size = 1
    _paint(qtbot, panel, (3, 20), layer.selected_label)
    assert rv.mark_at(2).mark == "disagree" and (layer.data[0:8, 16:24] == 2).all()
    # Shift+P: patch mode; L: the class label; one painted pixel marks one patch
    _key(viewer, Qt.Key.Key_P, Qt.KeyboardModifier.ShiftModifier)
    _key(viewer, Qt.Key.Key_L)
    panel.classes.setCurrentText("tumour")
    assert panel.patch_mode.isChecked() and layer.selected_label == 4
    _paint(qtbot, panel, (9, 30), layer.selected_label)
    m = rv.mark_at(7, 1 * 8 + 6)
    assert (m.mark, m.label, m.reviewer) == ("label", "tumour", "dr review")
    assert layer.data[9, 30] == 4 and layer.data[8, 24] == 0 and rv.mark_at(7) is None
    assert panel.counts.text().startswith("3 mark(s): 2 bag(s), 1 patch(es)")
    # a value that means nothing is drawn away, nothing marked
    before = layer.data.copy()
    _paint(qtbot, panel, (12, 2), 9)
    assert (layer.data == before).all() and rv.counts()["marks"] == 3
    # Ctrl+Z on the layer undoes the last mark, Redo brings it back
    _key(viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert rv.mark_at(7, 14) is None and layer.data[9, 30] == 0
    panel.redo_btn.click()
    assert rv.mark_at(7, 14).label == "tumour" and layer.data[9, 30] == 4
    # the eraser in bag mode clears a bag's mark
    _key(viewer, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)
    _paint(qtbot, panel, (1, 17), 0)
    assert rv.mark_at(2) is None and not layer.data[0:8, 16:24].any()
    # autosave, atomically into the store
    qtbot.waitUntil(lambda: not rv.dirty, timeout=10000)
    again = Reviews.load(store)
    assert [(m.mark, m.patch_index) for m in again.marks] == [("agree", None), ("label", 14)]
    assert {m.reviewer for m in again.marks} == {"dr review"}
    assert panel.status.text() == "saved"
    assert QSettings(str(tmp_path / "settings.ini"),
                     QSettings.Format.IniFormat).value("review/reviewer") == "dr review"


def test_close_reopen_export_and_cohort_row(make_napari_viewer, qtbot, tmp_path, folder):
    store = folder / STORE
    viewer, panel, shown = _panel(make_napari_viewer, tmp_path, store)
    cohort = CohortPanel(viewer)
    viewer.window.add_dock_widget(cohort, name="Cohort review")
    assert cohort.open_folder(folder)
    qtbot.waitUntil(lambda: all(r.details for r in cohort.table.rows), timeout=20000)
    row = next(r for r in cohort.table.rows if r.name == "slide_0000.svs")
    assert row.reviewed == 0
    panel.set_mark("label", "normal")
    panel.session.mark_place(0)
    panel.set_mark("agree")
    panel.session.mark_place(3, 63)
    assert panel.save() and row.reviewed == 2  # the cohort row is updated
    panel.session.mark_place(6)                 # unsaved when the result goes
    panel.set_shown(None)
    assert panel.layer is None and not any(ly.name.endswith("review marks")
                                           for ly in viewer.layers)
    viewer.layers.clear()
    panel.set_shown(_open(viewer, store))
    data = panel.layer.data
    assert (data[0:8, 0:8] == 3).all() and data[7, 31] == 1 and (data[8:16, 16:24] == 1).all()
    assert panel.session.reviews.counts()["marks"] == 3 and not panel.session.reviews.dirty
    out = export_reviews(shown.result, tmp_path / "marks.geojson", store=store, format="geojson")
    fc = json.loads(out.read_text())
    names = sorted(f["properties"]["classification"]["name"] for f in fc["features"])
    assert names == ["Agree", "Agree", "normal"]
    patch = next(f for f in fc["features"] if f["properties"]["patch_index"] == 63)
    assert patch["properties"]["bag_index"] == 3 and fc["napari_mran"]["model_warning"] is None


def test_refused_save_loses_nothing(make_napari_viewer, tmp_path, folder, errors):
    store = folder / STORE
    viewer, panel, _shown = _panel(make_napari_viewer, tmp_path, store)
    panel.session.mark_place(1)
    other = Reviews.load(store)
    other.set_bag(4, "disagree", reviewer="someone else")
    other.save()
    assert not panel.save()
    assert panel.status.text().startswith("NOT SAVED") and "another session" in errors[-1]
    panel.set_shown(None)
    assert [m.reviewer for m in Reviews.load(store).marks] == ["someone else"]
    (kept,) = sorted(folder.glob(f"{STORE}.unsaved-reviews-*.json"))
    marks = json.loads(kept.read_text())["marks"]
    assert [(m["mark"], m["bag_box"]) for m in marks] == [("agree", [2048, 0, 4096, 2048])]
    assert str(kept) in errors[-1]


def test_marks_of_another_model_warn(make_napari_viewer, tmp_path, folder, model_file):
    store = folder / STORE
    rv = Reviews.load(store)
    rv.set_bag(0, "agree", reviewer="dr a")
    rv.save()
    other = tmp_path / "other"
    assert main(["analyze", str(_slide_of(store)), "--model", str(model_file), "--out",
                 str(other), "--quiet"]) == 0
    theirs = other / STORE
    shutil.copytree(store / "reviews", theirs / "reviews")
    viewer, panel, _shown = _panel(make_napari_viewer, tmp_path, theirs)
    assert not panel.warning.isHidden() and "another model version" in panel.warning.text()
    assert panel.layer.data[0:8, 0:8].all()


def _slide_of(store: Path) -> Path:
    from napari_mran.results import SlideResult

    return Path(SlideResult.load(store).provenance["slide"]["path"])


def _synced(qtbot, panel) -> None:
    """Wait until the panel has turned what napari wrote into marks and redrawn them."""
    qtbot.waitUntil(lambda: not (panel.layer.data != panel.session._raster).any(), timeout=5000)
    qtbot.wait(10)


def test_fill_and_polygon_tools_mark_bags_and_patches(make_napari_viewer, qtbot, tmp_path,
                                                      folder):
    """napari's other Labels tools on the review layer: the polygon and the fill bucket
    become marks like a brush stroke (every bag the stroke touches, in bag mode; each
    patch, in patch mode), each one undo step."""
    viewer, panel, shown = _panel(make_napari_viewer, tmp_path, folder / STORE)
    layer, rv = panel.layer, panel.session.reviews

    def bag_marks():
        return {b: rv.mark_at(b).mark for b in range(8) if rv.mark_at(b) is not None}

    def patch_marks():
        return {(b, p): rv.mark_at(b, p).label for b in range(8) for p in range(64)
                if rv.mark_at(b, p) is not None}

    # bag mode, disagree: a polygon over patches of bags 0 and 1 (rows 1-6, columns 2-10)
    # marks bags 0 and 1, nothing else
    panel.session.set_current("disagree")
    layer.paint_polygon(np.array([[1, 2], [1, 10], [6, 10], [6, 2]]), layer.selected_label)
    _synced(qtbot, panel)
    assert bag_marks() == {0: "disagree", 1: "disagree"}
    assert (layer.data[0:8, 0:16] == 2).all() and not layer.data[:, 16:].any()
    # the fill bucket on an unmarked place: the unmarked area is one connected component,
    # so every unmarked bag is marked agree, in one undo step
    panel.session.set_current("agree")
    layer.contiguous = True
    layer.fill((12, 30), layer.selected_label)
    _synced(qtbot, panel)
    assert bag_marks() == {0: "disagree", 1: "disagree", **{b: "agree" for b in range(2, 8)}}
    assert panel.session.undo() and bag_marks() == {0: "disagree", 1: "disagree"}
    assert not layer.data[:, 16:].any() and not layer.data[8:, :].any()
    # patch mode, a class label: the fill bucket over the disagree area marks each of its
    # 128 patches (bags 0 and 1); the bag marks stay underneath; one undo removes them all
    panel.session.set_mode("patch")
    panel.session.set_current("label", "tumour")
    layer.fill((3, 3), layer.selected_label)
    _synced(qtbot, panel)
    marks = patch_marks()
    assert len(marks) == 128 and set(marks.values()) == {"tumour"}
    assert {b for b, _ in marks} == {0, 1}
    assert bag_marks() == {0: "disagree", 1: "disagree"}
    assert panel.session.undo() and not patch_marks()
