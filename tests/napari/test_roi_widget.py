"""The widget's "Analyse inside: whole slide | <Shapes layer>" in a real viewer: the choices
follow the viewer's Shapes layers, an analysis inside a drawn rectangle reads only the bags
it meets, bad geometry is a notification (no crash, no run), and a Region shown back as a
Shapes layer lands where it was drawn."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils import notifications
from qtpy.QtCore import Qt

from napari_mran._napari import keys
from napari_mran._napari.frame import SlideFrame
from napari_mran._napari.roi_layers import (ELLIPSE_POINTS, region_from_shapes,
                                            region_layer_data)
from napari_mran._napari.sample_data import sample_slide_path
from docking import open_and_dock


def _choices(widget) -> list[str]:
    combo = widget.settings.region_combo
    return [combo.itemText(i) for i in range(combo.count())]


def _world_rect(frame: SlideFrame, x0, y0, x1, y1) -> np.ndarray:
    (wy0, wx0), (wy1, wx1) = frame.to_world(x0, y0), frame.to_world(x1, y1)
    return np.array([[wy0, wx0], [wy0, wx1], [wy1, wx1], [wy1, wx0]])


def test_analyse_inside_a_drawn_rectangle(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, sample_slide_path())
    assert _choices(widget) == ["whole slide"]
    slide_layer = widget.current_slide_layer()
    frame = SlideFrame.from_layer(slide_layer)
    assert frame.units == "um"  # CMU-1: 0.499 µm/px, so the rectangle is drawn in µm
    # the top-left bag of the 2220 x 2967 px slide (2048 px bags) only
    viewer.add_shapes([_world_rect(frame, 200, 300, 1500, 1600)], shape_type="rectangle",
                      name="ROI")
    viewer.add_shapes([np.array([[0.0, 0.0], [10.0, 10.0]])], shape_type="line", name="ruler")
    assert _choices(widget) == ["whole slide", "ROI", "ruler"]
    widget.settings.region_combo.setCurrentIndex(1)
    seen = []
    monkeypatch.setattr(notifications, "show_error", seen.append)
    qtbot.mouseClick(widget.runner.analyze_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120000)
    assert widget.runner.last_error is None and not seen, (widget.runner.last_error, seen)
    result = widget.runner.last_outcome.result
    assert result.boxes.tolist() == [[0, 0, 2048, 2048]]
    region = result.provenance["region"]
    assert region["source"] == "napari shapes layer 'ROI'" and region["bags_outside"] >= 1
    assert region["bbox"] == pytest.approx([200, 300, 1500, 1600], abs=1e-6)
    cells = result.heatmap("cell").data  # 64 level-0 px per cell
    centres = (np.arange(cells.shape[0]) + 0.5) * 64, (np.arange(cells.shape[1]) + 0.5) * 64
    outside = ~((centres[0][:, None] > 300) & (centres[0][:, None] < 1600)
                & (centres[1][None] > 200) & (centres[1][None] < 1500))
    assert np.isnan(cells[outside]).all() and np.isfinite(cells[~outside]).any()
    # removing the layer takes it off the list and back to the whole slide
    viewer.layers.remove("ROI")
    assert _choices(widget) == ["whole slide", "ruler"]
    assert widget.settings.region_layer() is None


def test_bad_geometry_is_a_notification(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer(show=True)
    widget = open_and_dock(viewer, qtbot, sample_slide_path())
    frame = SlideFrame.from_layer(widget.current_slide_layer())
    bow = np.array([frame.to_world(*p) for p in [(100, 100), (1500, 900), (1500, 100),
                                                 (100, 800)]])
    viewer.add_shapes([bow], shape_type="polygon", name="crossed")
    viewer.add_shapes([np.array([[0.0, 0.0], [10.0, 10.0]])], shape_type="path", name="path")
    seen = []
    monkeypatch.setattr(notifications, "show_error", seen.append)
    for i, why in ((1, "self-intersecting ring"), (2, "holds no polygon, rectangle or ellipse")):
        widget.settings.region_combo.setCurrentIndex(i)
        qtbot.mouseClick(widget.runner.analyze_btn, Qt.MouseButton.LeftButton)
        assert not widget.is_running and why in seen[-1]
    assert "napari shapes layer 'crossed'" in seen[0]
    assert not [ly for ly in viewer.layers if "attention" in ly.name]  # nothing started


def test_shapes_to_region_and_back(make_napari_viewer):
    viewer = make_napari_viewer()
    slide_layer = viewer.open(str(sample_slide_path()), plugin="napari-mran")[0]
    frame = SlideFrame.from_layer(slide_layer)
    w, h = slide_layer.metadata[keys.SLIDE].dimensions
    corners = _world_rect(frame, 400, 400, 1400, 1000)
    shapes = viewer.add_shapes([corners, corners], shape_type=["rectangle", "ellipse"],
                               name="two")
    region = region_from_shapes(shapes, frame, (w, h))
    rect, ellipse = (poly[0] for poly in region.polygons)
    np.testing.assert_allclose(rect.min(0), [400, 400], atol=1e-6)
    np.testing.assert_allclose(rect.max(0), [1400, 1000], atol=1e-6)
    assert len(ellipse) == ELLIPSE_POINTS
    # a 64-gon inscribed in the ellipse: area just under pi * a * b
    area = region.area_px() - 1000 * 600
    assert 0.99 * np.pi * 500 * 300 < area < np.pi * 500 * 300
    data, kwargs = region_layer_data(region, frame)
    back = viewer.add_shapes(data, **kwargs)
    again = region_from_shapes(back, frame, (w, h))
    assert again.sha256 == region.sha256
