"""Before/after screenshots of the attention overlay on the bundled real H&E.

    .venv/bin/python scripts/make_overlay_screenshots.py [--out docs/screenshots]

CMU-1-Small-Region analysed with the bundled demo model; the patch-attention layer over
the slide in a real napari window (1000 x 800), drawn with

  overlay-before.png   the old default: viridis at opacity 0.6
  overlay-after.png    the new default: the translucent patch ramp at opacity 1.0

Deterministic (same model, slide, window size and camera).  Needs an X display: without
one it re-runs itself under ``xvfb-run``.  Prints the mean |overlay - slide| over the
canvas for both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = ap.parse_args(argv)
    from _shots import ensure_display

    ensure_display(__file__, argv, screen="1600x1000x24")

    import time

    import napari
    import numpy as np
    from napari.layers import Layer
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from napari_mran._events import drain
    from napari_mran._napari import layers as L
    from napari_mran._napari._qt.gl_guard import install
    from napari_mran._napari.frame import SlideFrame
    from napari_mran._napari.sample_data import sample_slide_path
    from napari_mran.analysis import analyze_slide
    from napari_mran.model import load_model
    from napari_mran.slide import open_slide

    install()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = drain(analyze_slide(sample_slide_path(), load_model("demo")))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1000, 800)
    app = QApplication.instance()

    def shot():
        end = time.perf_counter() + 0.8
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)
        return viewer.screenshot(canvas_only=True, flash=False)[..., :3]

    slide_layer = viewer.add_layer(Layer.create(*L.slide_layer_data(
        open_slide(sample_slide_path()))))
    viewer.reset_view()
    viewer.canvas.overlays.scale_bar.visible = True
    data, kw, kind = next(t for t in L.result_layer_data(result, SlideFrame.from_layer(
        slide_layer)) if t[1]["name"].endswith(L.ROLES["patch"]))
    for name, extra in (("overlay-before.png", {"colormap": "viridis", "opacity": 0.6}),
                        ("overlay-after.png", {})):
        layer = viewer.add_layer(Layer.create(data, {**kw, **extra, "visible": False}, kind))
        base = shot().astype(np.int16)  # the slide alone, the same canvas size
        layer.visible = True
        img = shot()
        Image.fromarray(img).save(out / name)
        diff = np.abs(img.astype(np.int16) - base).mean()
        print(f"{out / name}: mean |overlay - slide| over the canvas {diff:.1f}")
        viewer.layers.remove(layer)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
