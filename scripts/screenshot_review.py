"""docs/screenshots/review-marks.png: the "Review" panel marking bags and patches of a
result (the demo model over a synthetic 8192 x 4096 slide: 8 bags).

    python scripts/screenshot_review.py [--out PNG]

It builds the slide and its results store in a temporary folder (nothing of the
user's is touched), marks a few bags and patches through the panel and saves them.
Needs an X display (re-runs itself under xvfb-run otherwise).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]


def main() -> int:
    from _shots import ensure_display

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots" / "review-marks.png"))
    args = ap.parse_args()
    ensure_display(__file__, sys.argv[1:], screen="1600x1000x24")
    with tempfile.TemporaryDirectory() as tmp:
        from cohort_folder import build_cohort

        folder = build_cohort(Path(tmp), n=1, width=8192, height=4096)
        _shoot(folder / "slide_0000.mran.zarr", Path(tmp), Path(args.out))
    return 0


def _mark(panel) -> None:
    s = panel.session
    panel.set_mark("agree")
    for bag in (1, 2, 5):
        s.mark_place(bag)
    panel.set_mark("disagree")
    s.mark_place(6)
    panel.set_mark("label", s.class_names[-1])
    panel.set_mode("patch")
    for p in (0, 9, 18, 27, 36, 45):
        s.mark_place(0, p)
    panel.save()


def _shoot(store: Path, tmp: Path, out: Path) -> None:
    import napari
    from _shots import save_window
    from qtpy.QtCore import QSettings

    from napari_mran._napari._qt.review_panel import ReviewPanel
    from napari_mran._napari.shown import find_shown, results_in

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("review/reviewer", "dr example")
    panel = ReviewPanel(viewer, settings=settings)
    viewer.window.add_dock_widget(panel, name="Review")
    viewer.open(str(store), plugin="napari-mran")
    panel.set_shown(find_shown(viewer, results_in(viewer)[-1]))
    _mark(panel)
    for ly in viewer.layers:
        if ly.name.endswith(("patch attention", "top bags")):
            ly.visible = False
    viewer.reset_view()
    save_window(viewer, out)


if __name__ == "__main__":
    sys.exit(main())
