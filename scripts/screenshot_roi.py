"""Screenshots of "Analyse inside: <Shapes layer>" (docs/gui.md, "Regions of interest").

    .venv/bin/python scripts/screenshot_roi.py [--out docs/screenshots] [--seed 11]

A synthetic tumour slide (8192 x 6144 px, 0.5 µm/px: 4 x 3 bags of 2048 px) is made in
a temporary folder and opened in a real napari window (1600 x 1000) with the "Analyze
slide" panel and the bundled demo model.  A polygon is drawn around the slide's first
tumour region (from the ground truth) as a Shapes layer named "ROI".  Writes, in --out:

  roi-drawn.png    the polygon on the slide; Settings tab with "Analyse inside: ROI"
  roi-result.png   after Analyze: bag outlines and attention only where the region is

Deterministic (same seed, model, window size and camera).  Prints what the analysis
kept (bags in the region, left out) and checks that no attention is shown outside the
region.  Needs an X display: without one it re-runs itself under ``xvfb-run``.
Nothing outside --out is written (the results store goes to the temporary folder).
"""

from __future__ import annotations

import sys
import time

from _shots import analyse, ensure_display, napari_window, open_widget, save_results_in, shot_parser

WINDOW = (1600, 1000)
SIZE = (8192, 6144)


def _polygon(box, size, pad: int = 700):
    """An irregular hexagon (level-0 x, y) around a tumour *box*, clipped to the slide."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = (x1 - x0) / 2 + pad, (y1 - y0) / 2 + pad
    pts = [(cx - rx, cy - 0.3 * ry), (cx - 0.4 * rx, cy - ry), (cx + 0.7 * rx, cy - 0.9 * ry),
           (cx + rx, cy + 0.2 * ry), (cx + 0.3 * rx, cy + ry), (cx - 0.8 * rx, cy + 0.7 * ry)]
    w, h = size
    return [(min(max(x, 40.0), w - 40.0), min(max(y, 40.0), h - 40.0)) for x, y in pts]


def _draw_roi(viewer, slide_layer, info):
    import numpy as np

    from napari_mran._napari.frame import SlideFrame

    frame = SlideFrame.from_layer(slide_layer)
    poly = _polygon(info.tumour_boxes[0], SIZE)
    world = np.array([frame.to_world(x, y) for x, y in poly])
    viewer.add_shapes([world], shape_type="polygon", name="ROI", edge_width=24,
                      edge_color="yellow", face_color=[1.0, 1.0, 0.0, 0.08],
                      **frame.layer_units())  # µm like the slide: the scale bar keeps its unit
    return poly


def _inside(poly, x, y):
    """Even-odd test of points (x, y) against the polygon (level-0 px)."""
    import numpy as np

    inside = np.zeros(x.shape, bool)
    for (ax, ay), (bx, by) in zip(poly, poly[1:] + poly[:1]):
        crosses = (ay > y) != (by > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < xs)
    return inside


def _check(widget, poly) -> str:
    """What the run kept; raises if a cell outside the region shows attention."""
    import numpy as np

    result = widget.runner.last_outcome.result
    region = result.provenance["region"]
    heat = result.heatmap("cell").data
    cell = result.bag_px / 32  # 32 x 32 cells per bag
    y, x = np.mgrid[:heat.shape[0], :heat.shape[1]]
    coloured = np.isfinite(heat)
    outside = coloured & ~_inside(poly, (x + 0.5) * cell, (y + 0.5) * cell)
    if outside.any():
        raise AssertionError(f"{int(outside.sum())} cells outside the region show attention")
    return (f"{len(result.boxes)} bags analysed (meeting the region), "
            f"{region['bags_outside']} tissue bags left out, {int(coloured.sum())} cells "
            f"coloured, none outside; region {region['source']}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = shot_parser(__doc__, seed=11).parse_args(argv)
    ensure_display(__file__, argv)

    from napari_mran.synthetic import make_slide

    with napari_window(args.out, "mran-roi-shots-", WINDOW) as (gui, work, viewer):
        t0 = time.perf_counter()
        info = make_slide(work / "synthetic-roi.svs", *SIZE, tumour=True, seed=args.seed)
        print(f"synthetic slide {SIZE[0]} x {SIZE[1]} px: {time.perf_counter() - t0:.1f} s")
        slide_layer = viewer.open(str(info.path), plugin="napari-mran")[0]
        widget = open_widget(viewer, gui)
        save_results_in(widget, work / "results")
        poly = _draw_roi(viewer, slide_layer, info)
        combo = widget.settings.region_combo
        combo.setCurrentIndex(combo.findData("ROI"))
        widget.tabs.setCurrentIndex(0)
        viewer.reset_view()
        gui.save(gui.window_shot(viewer), "roi-drawn.png")

        seconds = analyse(widget, gui)
        print(f"analysis: {seconds:.1f} s; {_check(widget, poly)}")
        # global weighting (γα): the patches of the tumour bags stand out; 3 top bags
        widget.results.weight_global.setChecked(True)
        widget.results.top_k.setValue(3)
        viewer.layers.selection.active = next(
            ly for ly in viewer.layers if ly.name.endswith("patch attention"))
        viewer.reset_view()
        gui.save(gui.window_shot(viewer), "roi-result.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
