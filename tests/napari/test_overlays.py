"""Overlays that keep the tissue readable, and the reading aids (docs/gui.md "Overlays",
"Reading aids"), on the bundled real H&E (CMU-1-Small-Region) analysed with the demo
model, in a real, shown napari viewer: pixels are sampled from canvas screenshots."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Layer
from napari.utils.colormaps import AVAILABLE_COLORMAPS

from napari_mran._events import drain
from napari_mran._napari import colormaps as C
from napari_mran._napari import layers as L
from napari_mran._napari._qt.colorbar import UNITS, ColorBars
from napari_mran._napari._qt.result_panel import ResultPanel
from napari_mran._napari.frame import SlideFrame
from napari_mran._napari.sample_data import sample_slide_path
from napari_mran._napari.shown import show_scale_bar
from napari_mran.slide import open_slide
from napari_mran.vocab import LEVELS, Level


@pytest.fixture(scope="module")
def cmu_result():
    from napari_mran.analysis import analyze_slide
    from napari_mran.model import DEMO_MODEL_PATH, load_model

    if not DEMO_MODEL_PATH.is_file():
        pytest.skip("the demo model is not bundled")
    return drain(analyze_slide(sample_slide_path(), load_model("demo")))


def _settle(qtbot, viewer):
    qtbot.wait(300)
    return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(np.int16)


def _cell_centres(viewer, shot, layer):
    """(row, col) of each heatmap cell's centre on the canvas, and a mask of the cells
    whose centre is inside the canvas (camera centre, zoom, no rotation)."""
    h, w = shot.shape[:2]
    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom
    rows, cols = np.mgrid[0:layer.data.shape[0], 0:layer.data.shape[1]]
    wy = layer.translate[0] + rows * layer.scale[0]
    wx = layer.translate[1] + cols * layer.scale[1]
    py = np.round(h / 2 + (wy - cy) * zoom).astype(int)
    px = np.round(w / 2 + (wx - cx) * zoom).astype(int)
    inside = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    return np.clip(py, 0, h - 1), np.clip(px, 0, w - 1), inside


def test_ramps_are_transparent_low_and_registered():
    for level in LEVELS:
        ramp = C.RAMPS[level]
        assert ramp.name in AVAILABLE_COLORMAPS and L.COLORMAPS[level] == ramp.name
        alpha = C.rgba_table(ramp, 101)[:, 3]
        assert alpha[0] == 0.0 and abs(alpha[-1] - C.TOP_ALPHA) < 1e-6
        assert np.all(np.diff(alpha) >= 0)          # opacity grows with the value
        assert alpha[25] < 0.15                      # the lower quarter barely tints
        assert np.asarray(ramp.nan_color)[3] == 0.0  # NaN: no colour
    tops = [tuple(np.round(C.rgba_table(C.RAMPS[lv], 3)[1, :3], 2)) for lv in LEVELS]
    assert len(set(tops)) == 3                       # one distinguishable ramp per level
    assert C.colormap_for(Level.PATCH, "viridis") == "viridis"
    with pytest.raises(ValueError, match="unknown colour map 'nope'"):
        C.colormap_for(Level.PATCH, "nope")
    assert L.DEFAULT_OPACITY == 1.0 and C.opacity_for("magma") == 0.6


def test_overlay_keeps_low_attention_tissue_readable(make_napari_viewer, qtbot, cmu_result):
    """Slide alone vs slide + patch attention: over low-attention tissue the new default
    changes the pixels far less than the old viridis at 0.6; where there is no value
    (NaN) the pixels are those of the slide."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1000, 800)
    slide_layer = viewer.add_layer(Layer.create(*L.slide_layer_data(
        open_slide(sample_slide_path()))))
    viewer.reset_view()
    base = _settle(qtbot, viewer)
    frame = SlideFrame.from_layer(slide_layer)
    data, kw, kind = next(t for t in L.result_layer_data(cmu_result, frame)
                          if t[1]["name"].endswith(L.ROLES[Level.PATCH]))
    new_layer = viewer.add_layer(Layer.create(data, kw, kind))
    assert new_layer.opacity == 1.0 and new_layer.colormap.name == L.COLORMAPS[Level.PATCH]
    new = _settle(qtbot, viewer)
    viewer.layers.remove(new_layer)
    old_layer = viewer.add_layer(Layer.create(data, {**kw, "colormap": "viridis",
                                                     "opacity": 0.6}, kind))
    old = _settle(qtbot, viewer)

    py, px, inside = _cell_centres(viewer, base, old_layer)
    lo, hi = old_layer.contrast_limits
    rel = (data - lo) / (hi - lo)

    def patch(shot):  # the 7 x 7 canvas pixels around each cell centre
        return np.stack([shot[np.clip(py + dy, 0, len(shot) - 1),
                              np.clip(px + dx, 0, shot.shape[1] - 1)]
                         for dy in range(-3, 4) for dx in range(-3, 4)])
    tissue = patch(base).mean(axis=(0, -1)) < 225       # H&E, not glass (~243)
    low = inside & tissue & np.isfinite(data) & (rel < 0.4)
    empty = inside & ~np.isfinite(data)
    print(f"\n{low.sum()} low-attention tissue cells, {empty.sum()} without a value")
    assert low.sum() >= 8 and empty.sum() >= 8

    def diff(shot, mask):
        return np.abs(patch(shot)[:, mask] - patch(base)[:, mask]).mean()
    d_new, d_old = diff(new, low), diff(old, low)
    print(f"\nmean |overlay - slide| over {low.sum()} low-attention tissue cells: "
          f"new {d_new:.1f}, old {d_old:.1f} (ratio {d_new / d_old:.2f})")
    assert d_new < 0.3 * d_old
    assert diff(new, empty) <= 1.0 and diff(old, empty) <= 1.0


def test_colour_bars_follow_layer_and_show_units(make_napari_viewer, qtbot, cmu_result):
    viewer = make_napari_viewer(show=True)
    for t in L.result_layer_data(cmu_result):
        viewer.add_layer(Layer.create(*t))
    panel = ResultPanel(viewer)
    qtbot.addWidget(panel)
    panel.show_prediction(cmu_result)
    row = panel.colorbars.rows[Level.PATCH]
    layer = viewer.layers[f"{cmu_result.slide_name} {L.DEMO_TAG} {L.ROLES[Level.PATCH]}"]
    assert row.colormap_name == L.COLORMAPS[Level.PATCH]
    assert row.limits == pytest.approx(tuple(layer.contrast_limits))
    assert "softmax over the 64 patches" in row.unit.text()
    layer.contrast_limits = (0.01, 0.05)          # napari's own layer controls
    layer.colormap = "magma"
    assert row.limits == pytest.approx((0.01, 0.05)) and row.lo.text() == "0.01"
    assert row.colormap_name == "magma"
    panel.weight_global.setChecked(True)
    panel.show_caption()
    assert UNITS["global"][Level.CELL] in panel.colorbars.rows[Level.CELL].unit.text()
    # the colour map choice: the old opaque map and its opacity, then back
    panel.colormap_combo.setCurrentIndex(panel.colormap_combo.findData("viridis"))
    assert panel.display().colormap == "viridis" and panel.display().opacity == 0.6
    panel.colormap_combo.setCurrentIndex(0)
    assert panel.display().colormap == C.RAMP_CHOICE and panel.display().opacity == 1.0
    bars = ColorBars({lv: C.colormap_for(lv) for lv in LEVELS})
    qtbot.addWidget(bars)
    # the ramp's gradient is drawn over a grey checkerboard: its low end shows the grey,
    # its high end the colour
    img = bars.rows[Level.BAG].bar.pixmap().toImage()

    def spread(x):
        c = img.pixelColor(x, 0)
        return max(c.red(), c.green(), c.blue()) - min(c.red(), c.green(), c.blue())
    assert spread(0) <= 8 and spread(img.width() - 1) > 60


def test_scale_bar_on_once_in_micrometres(make_napari_viewer, qtbot):
    from napari_mran._napari.shown import scale_bar_of

    viewer = make_napari_viewer(show=True)
    bar = scale_bar_of(viewer)
    assert bar is viewer.canvas.overlays.scale_bar  # napari 0.9's, not the deprecated one
    assert not bar.visible
    viewer.open(str(sample_slide_path()), plugin="napari-mran")
    assert bar.visible
    assert tuple(str(u) for u in viewer.layers[0].units) == ("micrometer", "micrometer")
    bar.visible = False  # the user turns it off: opening again keeps it off
    viewer.open(str(sample_slide_path()), plugin="napari-mran")
    assert not bar.visible
    assert not show_scale_bar(viewer, open_slide(sample_slide_path()))


def test_progressive_paint_matches_the_masked_heatmap(cmu_result):
    """Painting bag by bag with the tissue cells gives SlideResult.heatmap's rasters,
    background (NaN) cells and pixels past the slide's edge included."""
    from napari_mran._napari.raster import empty_raster, paint_batch

    r = cmu_result
    rasters = {lv: empty_raster(lv, tuple(r.slide_size), r.bag_px) for lv in LEVELS[1:]}
    for i in range(r.n_bags):  # one bag per event, as the widget paints
        paint_batch(rasters, r.bag_px, r.boxes[i:i + 1], r.patch_attention[i:i + 1],
                    r.cell_attention[i:i + 1],
                    None if r.cell_tissue is None else r.cell_tissue[i:i + 1],
                    tuple(r.slide_size))
    for lv, raster in rasters.items():
        want = r.heatmap(lv, "local").data
        assert np.array_equal(np.isnan(raster), np.isnan(want))
        assert np.allclose(np.nan_to_num(raster), np.nan_to_num(want), atol=1e-6)
    if r.cell_tissue is not None and not r.cell_tissue.all():
        # the background cells of tissue bags stay uncoloured: more NaN than unmasked
        plain = {Level.CELL: empty_raster(Level.CELL, tuple(r.slide_size), r.bag_px)}
        paint_batch(plain, r.bag_px, r.boxes, r.patch_attention, r.cell_attention)
        assert np.isnan(rasters[Level.CELL]).sum() > np.isnan(plain[Level.CELL]).sum()
