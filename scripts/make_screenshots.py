"""Screenshots of the napari GUI tour (docs/gui.md) in a real napari window.

    .venv/bin/python scripts/make_screenshots.py [--out docs/screenshots] [--size 12288]

Needs an X display: without one the script re-runs itself under ``xvfb-run`` (Debian's
``xvfb`` package) with ``QT_QPA_PLATFORM=xcb`` -- offscreen Qt cannot draw napari's
canvas (docs/install.md).  Writes, in --out:

  01-slide-opened.png      the bundled CMU-1-Small-Region slide and the "Analyze slide" panel
  02-analysis-running.png  a synthetic tumour slide mid-analysis (progress, painted bags)
  03-attention-layers.png  bag / patch / cell attention over the slide, side by side
  04-top-bags.png          the ranked top bags; the first one clicked and zoomed to
  05-hover.png             the status bar with the scores under the cursor (+ a crop of it)
  06-export.png            the Export dialog (formats, review marks, folder)

The model is the bundled demo model (trained on synthetic slides; not for diagnosis)
when present, else a random-weight model (the pictures then show the GUI, not
meaningful attention).  Timings are printed; nothing outside --out is written (the
synthetic slide and its results store go to a temporary folder, removed at the end).  The helpers (display,
waiting, saving) are in ``scripts/_shots.py``; the ROI and reading-aid pictures are made
by ``screenshot_roi.py`` and ``screenshot_reading_aids.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _shots import Gui, ensure_display, grab_widget, napari_window, open_widget, save_results_in, shot_parser

WINDOW = (1600, 1000)


def _label(img, text: str):
    """A white caption on black at the top left of a PIL image."""
    from PIL import ImageDraw, ImageFont

    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 22)
    except OSError:
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    _x0, _y0, x1, y1 = draw.textbbox((10, 8), text, font=font)
    draw.rectangle([0, 0, x1 + 10, y1 + 8], fill=(0, 0, 0))
    draw.text((10, 8), text, fill=(255, 255, 255), font=font)
    return img


def shot_01(viewer, gui: Gui):
    """The bundled H&E and the panel, Settings tab (region, stain normalisation, ...)."""
    from napari_mran._napari.sample_data import sample_slide_path

    viewer.open(str(sample_slide_path()), plugin="napari-mran")
    widget = open_widget(viewer, gui)
    widget.tabs.setCurrentIndex(0)  # Settings
    viewer.reset_view()
    gui.save(gui.window_shot(viewer), "01-slide-opened.png")
    return widget


def shot_02(viewer, widget, gui: Gui, work: Path, size: int, seed: int) -> None:
    """A synthetic tumour slide mid-analysis, then to the end."""
    from napari_mran.synthetic import make_slide

    slide_path = work / f"synthetic-tumour-{size}.svs"
    t0 = time.perf_counter()
    make_slide(slide_path, size, size, tumour=True, seed=seed)
    print(f"synthetic slide {size} px: {time.perf_counter() - t0:.1f} s")
    viewer.layers.clear()
    viewer.open(str(slide_path), plugin="napari-mran")
    save_results_in(widget, work / "results")
    viewer.reset_view()
    gui.settle()
    t0 = time.perf_counter()
    runner = widget.runner
    runner.analyze_btn.click()
    gui.wait_for(lambda: runner.run is None or (
        runner.progress_bar.maximum() > 1 and runner.run.bags_done >= 1
        and runner.run.bags_done >= 0.4 * runner.progress_bar.maximum()), what="40 % done")
    runner.paint_progress()
    gui.save(gui.window_shot(viewer), "02-analysis-running.png")
    gui.wait_for(lambda: not widget.is_running, what="the end of the analysis")
    if runner.last_error is not None:
        raise RuntimeError(f"the analysis failed: {runner.last_error}")
    print(f"analysis ({widget.models.combo.currentText()}): {time.perf_counter() - t0:.1f} s; "
          f"{runner.progress_label.text()}")
    gui.settle(1.0)


def shot_03(viewer, gui: Gui) -> dict:
    """Bag, patch and cell attention, one canvas each, side by side in one picture."""
    import numpy as np
    from PIL import Image

    from napari_mran._napari import keys as K
    from napari_mran._napari import layers as L
    from napari_mran.vocab import LEVELS

    roles = {ly.metadata.get(K.ROLE): ly for ly in viewer.layers}
    viewer.reset_view()
    panels = []
    for level in LEVELS:
        for lv in LEVELS:
            roles[L.ROLES[lv]].visible = lv == level
        roles[L.TOP_ROLE].visible = False
        img = Image.fromarray(np.asarray(gui.canvas_shot(viewer))[..., :3])
        panels.append(np.asarray(_label(img, f"{L.ROLES[level]} ({L.COLORMAPS[level]})")))
    h = min(p.shape[0] for p in panels)
    gap = np.full((h, 8, 3), 255, np.uint8)
    row = np.concatenate([np.concatenate([p[:h], gap], axis=1) for p in panels], axis=1)
    row = Image.fromarray(np.ascontiguousarray(row[:, :-8]))
    if row.width > 1800:
        row = row.resize((1800, round(row.height * 1800 / row.width)), Image.Resampling.LANCZOS)
    gui.save(np.asarray(row), "03-attention-layers.png")
    for lv in LEVELS:
        roles[L.ROLES[lv]].visible = lv == "patch"
    roles[L.TOP_ROLE].visible = True
    return roles


def shot_04_05(viewer, widget, gui: Gui, roles: dict) -> None:
    """The top bags (first one clicked and zoomed to), then the scores under the cursor."""
    from napari_mran._napari import layers as L

    viewer.layers.selection.active = roles[L.ROLES["patch"]]
    widget.results.top_table.selectRow(0)
    widget.zoom_to_rank(0)
    gui.settle(1.0)
    gui.save(gui.window_shot(viewer), "04-top-bags.png")

    shown = widget._shown
    i = int(shown.result.top_bags(1)[0])
    (y0, x0), (y1, x1) = shown.frame.box_to_world(shown.result.boxes[i])
    viewer.mouse_over_canvas = True
    viewer.cursor.position = (y0 + 0.3 * (y1 - y0), x0 + 0.6 * (x1 - x0))
    viewer.update_status_from_cursor()
    gui.wait_for(lambda: isinstance(viewer.status, dict)
                 and "bag #" in viewer.status.get("coordinates", ""), 30, "the hover status")
    shot = gui.window_shot(viewer)
    gui.save(shot, "05-hover.png")
    status_h = 28 * shot.shape[0] // WINDOW[1]  # napari's status bar, bottom of the window
    gui.save(shot[-status_h:], "05-hover-statusbar.png")


def shot_06(widget, gui: Gui, work: Path) -> None:
    """The Export dialog as the panel opens it (the result's store: review marks offered
    when it holds some, else disabled with the reason)."""
    from napari_mran._napari._qt.export import ExportDialog

    shown = widget._shown
    dlg = ExportDialog(widget, str(work / "export"), shown.result.slide_name,
                       store=shown.results_path())
    dlg.show()
    gui.settle(0.5)
    gui.save(grab_widget(dlg), "06-export.png")
    dlg.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = shot_parser(__doc__, seed=11)
    parser.add_argument("--size", type=int, default=12288,
                        help="side of the synthetic tumour slide in pixels (default 12288)")
    args = parser.parse_args(argv)
    ensure_display(__file__, argv)
    t_start = time.perf_counter()
    with napari_window(args.out, "mran-shots-", WINDOW) as (gui, work, viewer):
        widget = shot_01(viewer, gui)
        shot_02(viewer, widget, gui, work, args.size, args.seed)
        roles = shot_03(viewer, gui)
        shot_04_05(viewer, widget, gui, roles)
        shot_06(widget, gui, work)
    print(f"done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
