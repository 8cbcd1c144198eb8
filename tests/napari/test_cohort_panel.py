"""The "Cohort review" panel in a real napari window (Xvfb): open a predict folder, sort,
filter, browse rows (the slide's layers in, the previous slide's out, the user's layers
kept), the next/previous shortcuts, failed rows notified, reviews updating a row."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from cohort_folder import build_cohort
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_mran._napari import keys
from napari_mran._napari import layers as L
from napari_mran._napari._qt import cohort_panel as CP
from napari_mran.review import Reviews


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture
def folder(cohort, tmp_path) -> Path:
    out = tmp_path / "pred"
    shutil.copytree(cohort, out)
    return out


def _panel(make_napari_viewer, qtbot, folder):
    viewer = make_napari_viewer(show=True)
    panel = CP.CohortPanel(viewer)
    viewer.window.add_dock_widget(panel, name="Cohort review")
    assert panel.open_folder(folder)
    qtbot.waitUntil(lambda: all(r.details for r in panel.table.rows), timeout=20000)
    return viewer, panel


def _row(panel, name: str) -> int:
    return next(r.index for r in panel.table.rows if r.name == name)


def _show(qtbot, panel, name: str) -> None:
    i = _row(panel, name)
    with qtbot.waitSignal(panel.row_shown, timeout=20000):
        panel.select_row(i)
    assert panel.shown_row == i


def _names(viewer) -> list[str]:
    return [ly.name for ly in viewer.layers]


def _column(panel, key: str) -> list[str]:
    col = [k for k, _ in CP.COLUMNS].index(key)
    return [panel.proxy.index(r, col).data() for r in range(panel.proxy.rowCount())]


def test_table_sort_and_filter(make_napari_viewer, qtbot, folder):
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    assert panel.proxy.rowCount() == 5
    assert _column(panel, "name") == sorted(_column(panel, "name"))
    panel.view.sortByColumn(2, Qt.SortOrder.DescendingOrder)  # probability
    probs = [float(p) for p in _column(panel, "probability") if p != "—"]
    assert len(probs) == 4 and probs == sorted(probs, reverse=True)
    assert all(p != "—" for p in _column(panel, "top_attention")[:4])
    panel.filter_edit.setText("normal")
    assert set(_column(panel, "predicted")) == {"normal"}
    panel.filter_edit.setText("")
    panel.only_degraded.setChecked(True)
    assert panel.proxy.rowCount() == 0 and "0 of 5 slides" in panel.status.text()
    panel.only_degraded.setChecked(False)
    assert panel.proxy.rowCount() == 5


def test_select_rows_swaps_layers_keeps_users(make_napari_viewer, qtbot, folder):
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    mine = viewer.add_image(np.zeros((8, 8)), name="my layer")
    _show(qtbot, panel, "slide_0000.svs")
    first = _names(viewer)
    assert first[0] == "my layer" and first[1] == "slide_0000.svs" and len(first) == 7
    assert "slide_0000.svs [DEMO model] patch attention" in first
    _show(qtbot, panel, "slide_0001.svs")
    assert _names(viewer)[:2] == ["my layer", "slide_0001.svs"] and len(viewer.layers) == 7
    assert not any("slide_0000" in n for n in _names(viewer))
    viewer.layers.remove(viewer.layers["slide_0001.svs [DEMO model] top bags"])  # the user's
    _show(qtbot, panel, "slide_0002.svs")
    assert mine in viewer.layers and len(viewer.layers) == 7
    assert not any("slide_0001" in n for n in _names(viewer))


def _by_role(viewer) -> dict:
    return {L.layer_role(ly.metadata): ly for ly in viewer.layers}


def test_row_switch_updates_layers_in_place(make_napari_viewer, qtbot, folder, monkeypatch):
    """ANNOUNCE_BY_INSERT on (the old way): the previous row's layers show the next row
    (the same layer objects with the new slide, heatmaps, metadata and names; the user's
    visibility kept); only the topmost result layer is added anew."""
    monkeypatch.setattr(CP, "ANNOUNCE_BY_INSERT", True)
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    _show(qtbot, panel, "slide_0000.svs")
    before = _by_role(viewer)
    before[L.ROLES["cell"]].visible = True  # the user's choice
    _show(qtbot, panel, "slide_0001.svs")
    after = _by_role(viewer)
    assert list(after) == list(before) and len(viewer.layers) == 6
    assert all(after[r] is before[r] for r in before if r != L.TOP_ROLE)
    assert after[L.TOP_ROLE] is not before[L.TOP_ROLE]
    slide = after[L.SLIDE_ROLE].metadata[keys.SLIDE]
    assert Path(slide.path).name == "slide_0001.svs" and panel._slides == [slide]
    assert after[L.SLIDE_ROLE].data[0].shape[:2] == tuple(slide.dimensions)[::-1]
    result = after[L.TOP_ROLE].metadata[keys.RESULT]
    assert "slide_0001" in result.slide_name
    for level in ("bag", "patch", "cell"):
        layer = after[L.ROLES[level]]
        assert layer.metadata[keys.RESULT] is result
        assert layer.name == f"slide_0001.svs [DEMO model] {L.ROLES[level]}"
        np.testing.assert_array_equal(np.asarray(layer.data), result.heatmap(level).data)
    assert after[L.ROLES["cell"]].visible and not after[L.ROLES["bag"]].visible
    assert len(after[L.TOP_ROLE].data) == min(10, result.n_bags)


def test_row_switch_without_announce_keeps_every_layer(make_napari_viewer, qtbot, folder,
                                                      monkeypatch):
    """ANNOUNCE_BY_INSERT off (the default): every layer is updated in place, and the
    result layers all change result together (in the last step)."""
    assert CP.ANNOUNCE_BY_INSERT is False
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    _show(qtbot, panel, "slide_0000.svs")
    before = _by_role(viewer)
    old = before[L.TOP_ROLE].metadata[keys.RESULT]
    seen = []  # the results of the result layers each time one's metadata changes
    for ly in viewer.layers:
        ly.events.metadata.connect(lambda e: seen.append(
            {id(x.metadata.get(keys.RESULT)) for x in viewer.layers} - {id(None)}))
    _show(qtbot, panel, "slide_0001.svs")
    after = _by_role(viewer)
    assert list(after) == list(before)
    assert all(after[r] is before[r] for r in before) and len(viewer.layers) == 6
    result = after[L.TOP_ROLE].metadata[keys.RESULT]
    assert "slide_0001" in result.slide_name and len(after[L.TOP_ROLE].data) > 0
    assert all(ly.metadata[keys.RESULT] is result for r, ly in after.items()
               if r != L.SLIDE_ROLE)
    # the result layers kept the previous result until the last step set all five
    assert all(x == {id(old)} for x in seen[:-5]) and seen[-1] == {id(result)}


def test_analyze_widget_follows_the_rows(make_napari_viewer, qtbot, folder):
    """With the Analyze widget docked, each row's result is the one its panels control
    (its Review tab must never mark the previous row's store)."""
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    for name in ("slide_0000.svs", "slide_0001.svs", "slide_0002.svs"):
        _show(qtbot, panel, name)
        result = _by_role(viewer)[L.TOP_ROLE].metadata[keys.RESULT]
        qtbot.waitUntil(lambda r=result: widget._shown is not None
                        and widget._shown.result is r, timeout=5000)
        layers = widget._shown.layers
        assert set(layers) == set(L.ROLE_ORDER)
        assert all(ly.metadata[keys.RESULT] is result for ly in layers.values())
        assert all(ly in viewer.layers for ly in layers.values())


def test_next_previous_shortcuts(make_napari_viewer, qtbot, folder):
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    assert CP.NEXT_KEY in panel.next_btn.toolTip() and CP.PREVIOUS_KEY in panel.prev_btn.toolTip()
    window = viewer.window._qt_window
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    order = _column(panel, "name")
    mods = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    expected = [order[1], order[2], order[3], order[2]]  # order[0] is broken.svs
    panel.select_row(_row(panel, order[1]))
    qtbot.waitUntil(lambda: panel.shown_row == _row(panel, order[1]), timeout=20000)
    for key, name in zip([Qt.Key.Key_Down, Qt.Key.Key_Down, Qt.Key.Key_Up], expected[1:]):
        with qtbot.waitSignal(panel.row_shown, timeout=20000):
            QTest.keyClick(window, key, mods)
        assert panel.shown_row == _row(panel, name) and name in _names(viewer)


def test_failed_and_missing_rows_are_notified(make_napari_viewer, qtbot, folder, errors):
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    _show(qtbot, panel, "slide_0000.svs")
    i = _row(panel, "broken.svs")
    with qtbot.waitSignal(panel.row_shown, timeout=20000) as sig:
        panel.select_row(i)
    assert sig.args == [-1] and "broken.svs" in errors[-1] and "predict failed" in errors[-1]
    assert len(viewer.layers) == 0  # the previous slide is not left looking selected
    store = Path(panel.table.rows[_row(panel, "slide_0003.svs")].store)
    (store / "slide_probs" / "zarr.json").write_text("{not json")
    with qtbot.waitSignal(panel.row_shown, timeout=20000) as sig:
        panel.select_row(_row(panel, "slide_0003.svs"))
    assert sig.args == [-1] and "slide_0003" in errors[-1]
    assert "ResultsError" in panel.table.rows[_row(panel, "slide_0003.svs")].error


def test_row_updates_after_slide_reviewed(make_napari_viewer, qtbot, folder):
    viewer, panel = _panel(make_napari_viewer, qtbot, folder)
    i = _row(panel, "slide_0001.svs")
    store = panel.table.rows[i].store
    reviews = Reviews.load(store)
    reviews.set_bag(0, "agree")
    reviews.save()
    assert panel.slide_reviewed(store) and panel.table.rows[i].reviewed == 1
    cell = panel.model.index(i, [k for k, _ in CP.COLUMNS].index("reviewed"))
    assert cell.data() == "1"
    panel.only_unreviewed.setChecked(True)
    assert "slide_0001.svs" not in _column(panel, "name") and panel.proxy.rowCount() == 4
    assert not panel.slide_reviewed(str(folder / "elsewhere.mran.zarr"))


def test_not_a_predict_folder_notifies(make_napari_viewer, tmp_path, errors):
    panel = CP.CohortPanel(make_napari_viewer())
    assert not panel.open_folder(tmp_path)
    assert "predictions.csv: no such file" in errors[-1] and str(tmp_path) in errors[-1]
    assert panel.table is None
