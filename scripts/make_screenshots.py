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
  06-export.png            the Export dialog (formats, folder)

The model is the bundled demo model (trained on synthetic slides; not for diagnosis)
when present, else a random-weight model (the pictures then show the GUI, not
meaningful attention).  Timings are printed; nothing outside --out and the user cache
(the synthetic slide) is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1600, 1000)


def _ensure_display(argv: list[str]) -> None:
    if os.environ.get("DISPLAY") or os.environ.get("MRAN_SCREENSHOTS_CHILD"):
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no X display and no xvfb-run: install xvfb (apt-get install xvfb xauth)")
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", MRAN_SCREENSHOTS_CHILD="1")
    cmd = [xvfb, "-a", "-s", "-screen 0 1920x1200x24", sys.executable, __file__, *argv]
    sys.exit(subprocess.call(cmd, env=env))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--size", type=int, default=12288,
                        help="side of the synthetic tumour slide in pixels (default 12288)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    _ensure_display(argv)

    import napari
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    from qtpy.QtWidgets import QApplication

    from napari_mran._napari import keys as K
    from napari_mran._napari import layers as L
    from napari_mran._napari._qt.gl_guard import install as install_gl_guard
    from napari_mran._napari.sample_data import sample_slide_path
    from napari_mran.vocab import LEVELS

    # the plugin's guard against the Mesa software-GL crash (docs/gui.md, Known problems)

    install_gl_guard()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    app = QApplication.instance() or QApplication([])

    def settle(seconds: float = 0.6) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    def wait_for(cond, timeout: float = 600.0) -> None:
        end = time.perf_counter() + timeout
        while not cond():
            if time.perf_counter() > end:
                raise TimeoutError("the GUI did not reach the expected state")
            app.processEvents()
            time.sleep(0.01)

    def save(array, name: str) -> None:
        path = out / name
        Image.fromarray(np.asarray(array)[..., :3]).save(path, optimize=True)
        print(f"  wrote {path} ({path.stat().st_size // 1024} KiB)")

    def window_shot() -> np.ndarray:
        settle(0.4)
        return viewer.screenshot(canvas_only=False, flash=False)

    # ------------------------------------------------------------------ 1. a slide
    viewer = napari.Viewer(title="napari-mran", show=True)
    viewer.window.resize(*WINDOW)
    viewer.open(str(sample_slide_path()), plugin="napari-mran")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    wait_for(lambda: widget._env is not None)
    wait_for(lambda: widget.models.model is not None or widget.models.loading is None, 120)
    if widget.models.model is None:  # no demo model bundled: a random one shows the GUI
        import torch

        from napari_mran.model import MRAN, MRANConfig

        torch.manual_seed(0)
        widget.set_model(MRAN(MRANConfig(width=0.125, class_names=["normal", "tumour"])),
                         "random weights (no demo model bundled)")
    model_name = widget.models.combo.currentText()
    viewer.reset_view()
    save(window_shot(), "01-slide-opened.png")

    # ------------------------------------------------------------------ 2. analysis
    from napari_mran.synthetic import make_slide

    work = Path(tempfile.mkdtemp(prefix="mran-shots-"))
    slide_path = work / f"synthetic-tumour-{args.size}.svs"
    t0 = time.perf_counter()
    make_slide(slide_path, args.size, args.size, tumour=True, seed=args.seed)
    print(f"synthetic slide {args.size} px: {time.perf_counter() - t0:.1f} s")
    viewer.layers.clear()
    viewer.open(str(slide_path), plugin="napari-mran")
    widget.settings.folder_edit.setText(str(work / "results"))
    widget.settings.folder_edited = True
    viewer.reset_view()
    settle()
    t0 = time.perf_counter()
    runner = widget.runner
    runner.analyze_btn.click()
    wait_for(lambda: runner.run is None or (runner.run.bags_done >= 1 and
                                            runner.progress_bar.maximum() > 1 and
                                            runner.run.bags_done >= 0.4 *
                                            runner.progress_bar.maximum()))
    runner.paint_progress()
    save(window_shot(), "02-analysis-running.png")
    wait_for(lambda: not widget.is_running)
    print(f"analysis ({model_name}): {time.perf_counter() - t0:.1f} s; "
          f"{runner.progress_label.text()}")
    settle(1.0)

    # ------------------------------------------------------------------ 3. three levels
    roles = {ly.metadata.get(K.ROLE): ly for ly in viewer.layers}
    viewer.reset_view()
    panels = []
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 22)
    except OSError:
        font = ImageFont.load_default()
    for level in LEVELS:
        for lv in LEVELS:
            roles[L.ROLES[lv]].visible = lv == level
        roles[L.TOP_ROLE].visible = False
        settle(0.6)
        shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3]
        img = Image.fromarray(shot)
        draw = ImageDraw.Draw(img)
        label = f"{L.ROLES[level]} ({L.COLORMAPS[level]})"
        x0, y0, x1, y1 = draw.textbbox((10, 8), label, font=font)
        draw.rectangle([0, 0, x1 + 10, y1 + 8], fill=(0, 0, 0))
        draw.text((10, 8), label, fill=(255, 255, 255), font=font)
        panels.append(np.asarray(img))
    h = min(p.shape[0] for p in panels)
    gap = np.full((h, 8, 3), 255, np.uint8)
    row = np.concatenate([np.concatenate([p[:h], gap], axis=1) for p in panels], axis=1)
    row = Image.fromarray(np.ascontiguousarray(row[:, :-8]))
    if row.width > 1800:
        row = row.resize((1800, round(row.height * 1800 / row.width)), Image.Resampling.LANCZOS)
    save(np.asarray(row), "03-attention-layers.png")
    roles[L.ROLES["patch"]].visible = True
    roles[L.ROLES["bag"]].visible = False
    roles[L.ROLES["cell"]].visible = False
    roles[L.TOP_ROLE].visible = True

    # ------------------------------------------------------------------ 4. top bags
    viewer.layers.selection.active = roles[L.ROLES["patch"]]
    widget.results.top_table.selectRow(0)
    widget.zoom_to_rank(0)
    settle(1.0)
    save(window_shot(), "04-top-bags.png")

    # ------------------------------------------------------------------ 5. hover
    shown = widget._shown
    i = int(shown.result.top_bags(1)[0])
    (y0, x0), (y1, x1) = shown.frame.box_to_world(shown.result.boxes[i])
    viewer.mouse_over_canvas = True
    viewer.cursor.position = (y0 + 0.3 * (y1 - y0), x0 + 0.6 * (x1 - x0))
    viewer.update_status_from_cursor()
    wait_for(lambda: isinstance(viewer.status, dict)
             and "bag #" in viewer.status.get("coordinates", ""), 30)
    shot = window_shot()
    save(shot, "05-hover.png")
    status_h = 40 * shot.shape[0] // WINDOW[1]  # napari's status bar, bottom of the window
    save(shot[-status_h:], "05-hover-statusbar.png")

    # ------------------------------------------------------------------ 6. export
    from napari_mran._napari._qt.export import ExportDialog

    dlg = ExportDialog(widget, str(work / "export"), shown.result.slide_name)
    dlg.show()
    settle(0.5)
    from qtpy.QtGui import QImage

    image = dlg.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    bgra = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    save(bgra[:, :image.width(), 2::-1].copy(), "06-export.png")
    dlg.close()

    viewer.close()
    shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
