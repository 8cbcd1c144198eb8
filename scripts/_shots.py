"""Shared helpers of the screenshot scripts (docs/gui.md): a real napari window under
an X display (Xvfb when there is none), waiting for the GUI, saving PNGs.

Not a public module: the ``scripts/make_screenshots.py`` and ``screenshot_*.py`` scripts
import it from their own folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"


def ensure_display(script: str, argv: list[str], screen: str = "1920x1200x24") -> None:
    """Return when there is an X display; else re-run *script* under ``xvfb-run`` and exit
    with its status (offscreen Qt cannot draw napari's canvas, docs/install.md)."""
    if os.environ.get("DISPLAY") or os.environ.get("MRAN_SCREENSHOTS_CHILD"):
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no X display and no xvfb-run: install xvfb (apt-get install xvfb xauth)")
    env = dict(os.environ, QT_QPA_PLATFORM="xcb", MRAN_SCREENSHOTS_CHILD="1")
    cmd = [xvfb, "-a", "-s", f"-screen 0 {screen}", sys.executable, script, *argv]
    sys.exit(subprocess.call(cmd, env=env))


def shot_parser(doc: str, seed: int) -> argparse.ArgumentParser:
    """The options every screenshot script takes: ``--out`` (default docs/screenshots)
    and ``--seed`` of its synthetic slide (default *seed*)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", default=str(SHOTS))
    ap.add_argument("--seed", type=int, default=seed)
    return ap


@contextlib.contextmanager
def napari_window(out: str | Path, prefix: str, window: tuple[int, int]
                  ) -> Iterator[tuple[Gui, Path, object]]:
    """``(Gui writing to out, a temporary work folder, a shown napari viewer of size
    window)`` with the plugin's Mesa software-GL guard installed; the viewer is closed
    when the block ends normally, the work folder removed in any case."""
    import napari

    from napari_mran._napari._qt.gl_guard import install as install_gl_guard

    install_gl_guard()  # the plugin's Mesa software-GL guard (docs/gui.md, Known problems)
    gui = Gui(Path(out))
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        viewer = napari.Viewer(title="napari-mran", show=True)
        viewer.window.resize(*window)
        yield gui, work, viewer
        viewer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save_results_in(widget, folder: Path) -> None:
    """Make the "Analyze slide" widget save its results in *folder* (as if typed)."""
    widget.settings.folder_edit.setText(str(folder))
    widget.settings.folder_edited = True


class Gui:
    """The Qt application of a screenshot script: let it run, wait for a state, save."""

    def __init__(self, out: Path):
        from qtpy.QtWidgets import QApplication

        self.app = QApplication.instance() or QApplication([])
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    def settle(self, seconds: float = 0.6) -> None:
        """Run the event loop for *seconds* (layers drawn, timers fired)."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def wait_for(self, cond, timeout: float = 600.0, what: str = "the expected state") -> None:
        end = time.perf_counter() + timeout
        while not cond():
            if time.perf_counter() > end:
                raise TimeoutError(f"the GUI did not reach {what} in {timeout:.0f} s")
            self.app.processEvents()
            time.sleep(0.01)

    def save(self, array, name: str) -> Path:
        """Write the RGB(A) *array* as ``out/name`` (RGB PNG) and say so."""
        import numpy as np
        from PIL import Image

        path = self.out / name
        Image.fromarray(np.ascontiguousarray(np.asarray(array)[..., :3])).save(path, optimize=True)
        print(f"  wrote {path} ({path.stat().st_size // 1024} KiB)")
        return path

    def window_shot(self, viewer):
        """The whole napari window (canvas, layer list, docks, status bar)."""
        self.settle(0.4)
        return viewer.screenshot(canvas_only=False, flash=False)

    def canvas_shot(self, viewer):
        self.settle(0.6)
        return viewer.screenshot(canvas_only=True, flash=False)


def save_window(viewer, out: Path, settle: float = 1.5) -> Path:
    """Let the window draw for *settle* seconds, write it (whole window, PNG) to *out*,
    close the viewer."""
    gui = Gui(Path(out).parent)
    gui.settle(settle)
    path = gui.save(viewer.screenshot(canvas_only=False, flash=False), Path(out).name)
    viewer.close()
    return path


def grab_widget(widget):
    """A Qt widget (a dialog, a panel) as an RGB array."""
    import numpy as np
    from qtpy.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    bgra = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return bgra[:, :image.width(), 2::-1].copy()


def open_widget(viewer, gui: Gui):
    """Dock "Analyze slide" and wait for its device probe and the demo model (a random
    model when the installation has no demo model: the pictures then show the GUI only).
    Returns the widget."""
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    gui.wait_for(lambda: widget._env is not None, 120, "the device probe")
    gui.wait_for(lambda: widget.models.model is not None or widget.models.loading is None,
                 120, "the demo model")
    if widget.models.model is None:
        import torch

        from napari_mran.model import MRAN, MRANConfig

        torch.manual_seed(0)
        widget.set_model(MRAN(MRANConfig(width=0.125, class_names=["normal", "tumour"])),
                         "random weights (no demo model bundled)")
    return widget


def analyse(widget, gui: Gui) -> float:
    """Click *Analyze* and wait for the end; the seconds it took.  Raises when the run
    ended with an error (the screenshots would not show what their captions say)."""
    t0 = time.perf_counter()
    widget.runner.analyze_btn.click()
    gui.wait_for(lambda: not widget.is_running, 900, "the end of the analysis")
    if widget.runner.last_error is not None:
        raise RuntimeError(f"the analysis failed: {widget.runner.last_error}")
    gui.settle(1.0)
    return time.perf_counter() - t0
