"""Browsing a 100-slide cohort in the "Cohort review" panel: event-loop stalls and memory.

Builds (once, cached under benchmarks/out/) a predict output folder of N synthetic slides
(the real pipeline: ``make_cohort`` + ``predict_cohort`` with the demo model), opens it
in a real napari window (Xvfb when there is no display), waits for every row's details,
then browses S slides with the next-slide shortcut (Ctrl+Shift+Down), each time until
its layers are in.  A 10 ms QTimer records the event loop's gaps.  Prints the worst
stall, the counts over 100 / 250 ms and the RSS growth over the browse, and writes them
to docs/performance.md ("Cohort review: browsing, latest run").

    python benchmarks/bench_cohort_browse.py --slides 100 --browse 20 [--profile]

``--profile`` prints where the main thread was during the stalls (``_stall_sampler``);
``--announce`` measures the old way (the topmost result layer re-inserted on every row,
``cohort_panel.ANNOUNCE_BY_INSERT = True``); ``--with-analyze`` docks the Analyze slide
widget too, which adopts each row's result (its Result and Review tabs), as a
pathologist working with both docks sees it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _ensure_display() -> None:
    if os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no X display and no xvfb-run: install xvfb")
    env = dict(os.environ, QT_QPA_PLATFORM="xcb")
    sys.exit(subprocess.call([xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable,
                              *sys.argv], env=env))


def cohort_folder(n: int) -> Path:
    from cohort_folder import build_cohort

    root = ROOT / "benchmarks" / "out" / f"cohort{n}"
    if not (root / "pred" / "predictions.csv").is_file():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        build_cohort(root, n=n)
        print(f"built and predicted {n} slides in {time.perf_counter() - t0:.0f} s")
    return root / "pred"


class Gaps:
    """Event-loop gaps seen by a 10 ms timer."""

    def __init__(self, sampler=None):
        from qtpy.QtCore import QElapsedTimer, QTimer

        self.gaps: list[int] = []
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.gaps.append(self.clock.restart()))
        if sampler is not None:
            self.timer.timeout.connect(sampler.tick)
        self.clock.start()
        self.timer.start()

    def take(self) -> list[int]:
        out, self.gaps = self.gaps, []
        return out


def wait(signal=None, cond=None, timeout_ms: int = 60000) -> None:
    """Run the event loop until *signal* fires or *cond()* holds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    if signal is not None:
        signal.connect(loop.quit)
    poll = QTimer()
    if cond is not None:
        poll.timeout.connect(lambda: cond() and loop.quit())
        poll.start(20)
    QTimer.singleShot(timeout_ms, loop.quit)
    loop.exec()
    poll.stop()
    if signal is not None:
        signal.disconnect(loop.quit)


def run(folder: Path, browse: int, profile: bool = False, with_analyze: bool = False) -> dict:
    import napari
    import psutil
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_mran._napari._qt.cohort_panel import CohortPanel

    viewer = napari.Viewer(show=True)
    panel = CohortPanel(viewer)
    viewer.window.add_dock_widget(panel, name="Cohort review")
    if with_analyze:
        viewer.window.add_plugin_dock_widget("napari-mran", "Analyze slide")
    window = viewer.window._qt_window
    wait(cond=lambda: False, timeout_ms=1500)  # the window is up, pre-warming done
    sampler = None
    if profile:
        from _stall_sampler import StallSampler

        sampler = StallSampler()
    gaps = Gaps(sampler)
    t0 = time.perf_counter()
    panel.open_folder(folder)
    wait(cond=lambda: all(r.details for r in panel.table.rows))
    load = {"s": time.perf_counter() - t0, "gaps": gaps.take()}
    window.activateWindow()
    panel.select_row(next(r.index for r in panel.table.rows if not r.failed))
    wait(signal=panel.row_shown)
    proc = psutil.Process()
    rss = [proc.memory_info().rss]
    gaps.take()
    if sampler is not None:
        sampler.samples.clear()
    t0 = time.perf_counter()
    mods = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    seen, per_slide = [], []
    for _ in range(browse):
        QTest.keyClick(window, Qt.Key.Key_Down, mods)
        wait(signal=panel.row_shown)
        rss.append(proc.memory_info().rss)
        got = gaps.take()
        seen += got
        per_slide.append(max(got, default=0))
    wait(cond=lambda: False, timeout_ms=300)  # what the last row's show leaves queued
    seen += gaps.take()
    browse_s = time.perf_counter() - t0
    if sampler is not None:
        sampler.stop()
        from _stall_sampler import stall_paths

        print(sampler.report(top=30))
        print("\n".join(stall_paths(sampler, min_ms=100).splitlines()[:40]))
    n_layers = len(viewer.layers)
    viewer.close()
    return {"load": load, "browse_gaps": seen, "browse_s": browse_s, "rss": rss,
            "layers_at_end": n_layers, "per_slide": per_slide}


def report(n: int, browse: int, out: dict) -> str:
    g, lg = out["browse_gaps"], out["load"]["gaps"]
    growth = (max(out["rss"]) - out["rss"][0]) / 2**20
    half = len(out["rss"]) // 2
    late = (max(out["rss"][half:]) - out["rss"][half]) / 2**20
    return "\n".join([
        f"cohort of {n} slides; load {out['load']['s']:.1f} s (table + every row's "
        f"details), worst stall {max(lg)} ms, {sum(x > 100 for x in lg)} over 100 ms, "
        f"{sum(x > 250 for x in lg)} over 250 ms",
        f"browsing {browse} slides ({out['browse_s'] / browse:.2f} s per slide): worst stall "
        f"{max(g)} ms, {sum(x > 100 for x in g)} stalls over 100 ms, "
        f"{sum(x > 250 for x in g)} over 250 ms",
        "worst stall per slide (ms): " + " ".join(str(x) for x in out["per_slide"]),
        f"RSS after the first slide {out['rss'][0] / 2**20:.0f} MiB, peak growth over the "
        f"browse {growth:.0f} MiB (second half: {late:.0f} MiB); layers at the end: "
        f"{out['layers_at_end']}",
        f"(os.getloadavg() = {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=100)
    ap.add_argument("--browse", type=int, default=20)
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/performance.md")
    ap.add_argument("--with-analyze", action="store_true",
                    help="dock the Analyze slide widget too (it adopts each row's result)")
    ap.add_argument("--announce", action="store_true",
                    help="the old way: re-insert the topmost result layer on every row")
    ap.add_argument("--profile", action="store_true",
                    help="print where the browse's stalls were (stack samples while late)")
    args = ap.parse_args()
    _ensure_display()
    folder = cohort_folder(args.slides)
    if args.announce:
        from napari_mran._napari._qt import cohort_panel

        cohort_panel.ANNOUNCE_BY_INSERT = True
    text = report(args.slides, args.browse,
                  run(folder, args.browse, args.profile, args.with_analyze))
    print(text)
    if not args.no_doc:
        from _doc import write_section

        write_section("performance.md", "Cohort review: browsing, latest run", _doc_body(text))
    return 0


def _doc_body(text: str) -> str:
    return ("`benchmarks/bench_cohort_browse.py` (a real napari window under Xvfb, the "
            "\"Cohort review\" panel over a predict folder of synthetic 4096 x 2048 slides "
            "made by the demo model, the next-slide shortcut pressed and each slide waited "
            "for until its layers are in; a 10 ms QTimer records the event loop's "
            "gaps):\n\n```\n" + text + "\n```\n")


if __name__ == "__main__":
    sys.exit(main())
