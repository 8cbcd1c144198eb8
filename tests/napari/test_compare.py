"""Side by side (docs/gui.md "Reading aids"): two real slides analysed with the demo model,
in a real viewer: grid mode, one viewbox each, identical contrast limits per level, and
everything put back when it is turned off."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari.layers import Layer
from slide_writers import write_svs_pyramid

from napari_mran._events import drain
from napari_mran._napari import layers as L
from napari_mran._napari._qt.result_panel import ResultPanel
from napari_mran._napari.compare import CompareError, grid_of, side_by_side
from napari_mran._napari.frame import SlideFrame
from napari_mran._napari.sample_data import sample_slide_path
from napari_mran.slide import open_slide
from napari_mran.vocab import LEVELS


@pytest.fixture(scope="module")
def two_results(tmp_path_factory):
    """CMU-1-Small-Region and a mirrored copy of it (another real slide), analysed."""
    from napari_mran.analysis import analyze_slide
    from napari_mran.model import DEMO_MODEL_PATH, load_model

    if not DEMO_MODEL_PATH.is_file():
        pytest.skip("the demo model is not bundled")
    pixels = tifffile.imread(sample_slide_path())
    mirrored = write_svs_pyramid(tmp_path_factory.mktemp("cmp") / "mirrored.svs",
                                 np.ascontiguousarray(pixels[:, ::-1]), downsamples=(1, 4),
                                 tile=256, mpp=0.499)
    model = load_model("demo")
    return [(p, drain(analyze_slide(p, model))) for p in (sample_slide_path(), mirrored)]


def _open(viewer, path, result):
    slide_layer = viewer.add_layer(Layer.create(*L.slide_layer_data(open_slide(path))))
    for t in L.result_layer_data(result, SlideFrame.from_layer(slide_layer)):
        viewer.add_layer(Layer.create(*t))


def _attention(viewer, result, level):
    return next(ly for ly in viewer.layers if ly.metadata.get("mran_result") is result
                and ly.name.endswith(L.ROLES[level]))


def _looks(viewer):
    return {ly.name: (tuple(getattr(ly, "contrast_limits", ())), ly.visible)
            for ly in viewer.layers}


def test_side_by_side_shares_limits_and_restores(make_napari_viewer, qtbot, two_results):
    viewer = make_napari_viewer(show=True)
    (pa, ra), (pb, rb) = two_results
    _open(viewer, pa, ra)
    _open(viewer, pb, rb)
    before = _looks(viewer)
    order = [ly.name for ly in viewer.layers]
    own = {lv: (tuple(_attention(viewer, ra, lv).contrast_limits),
                tuple(_attention(viewer, rb, lv).contrast_limits)) for lv in LEVELS}
    assert any(a != b for a, b in own.values())  # two slides: their own scales differ
    with pytest.raises(CompareError, match="two different results"):
        side_by_side(viewer, ra, ra)

    state = side_by_side(viewer, ra, rb)
    assert grid_of(viewer).enabled and grid_of(viewer).stride == 1 + len(LEVELS)
    assert grid_of(viewer).actual_shape(list(viewer.layers)) == (1, 2)
    for lv in LEVELS:
        la, lb = _attention(viewer, ra, lv), _attention(viewer, rb, lv)
        assert tuple(la.contrast_limits) == tuple(lb.contrast_limits) == state.limits[lv]
        lo, hi = state.limits[lv]
        assert lo == min(own[lv][0][0], own[lv][1][0]) and hi == max(own[lv][0][1],
                                                                     own[lv][1][1])
    # each slide with its own layers in its own viewbox
    pos = {ly.name: grid_of(viewer).position(i, list(viewer.layers))
           for i, ly in enumerate(viewer.layers) if ly.visible}
    assert {p for n, p in pos.items() if ra.slide_name in n} == {(0, 0)}
    assert {p for n, p in pos.items() if "mirrored" in n} == {(0, 1)}
    qtbot.wait(200)  # drawn without error

    state.restore()
    assert not grid_of(viewer).enabled and [ly.name for ly in viewer.layers] == order
    assert _looks(viewer) == before


def test_side_by_side_button(make_napari_viewer, qtbot, two_results):
    viewer = make_napari_viewer(show=True)
    (pa, ra), (pb, rb) = two_results
    panel = ResultPanel(viewer)
    qtbot.addWidget(panel)
    _open(viewer, pa, ra)
    panel.show_prediction(ra)
    panel.compare_btn.setChecked(True)      # only one result: a warning, stays off
    assert not panel.compare_btn.isChecked() and not grid_of(viewer).enabled
    _open(viewer, pb, rb)
    panel.compare_btn.setChecked(True)
    assert grid_of(viewer).enabled and panel.compare is not None
    row = panel.colorbars.rows[LEVELS[1]]    # the shared colour bar shows the shared scale
    assert row.limits == pytest.approx(panel.compare.limits[LEVELS[1]])
    panel.compare_btn.setChecked(False)
    assert not grid_of(viewer).enabled and panel.compare is None
