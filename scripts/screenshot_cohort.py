"""docs/screenshots/cohort-panel.png: the "Cohort review" panel over a predict folder of
synthetic slides (demo model), one slide shown with its attention layers.

    python scripts/screenshot_cohort.py [--folder PREDICT_OUTPUT]

Without ``--folder`` it builds a 6-slide cohort in a temporary folder.  Needs an X
display (re-runs itself under xvfb-run otherwise).
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
    from bench_cohort_browse import wait

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", help="a predict output folder (default: build one)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots" / "cohort-panel.png"))
    args = ap.parse_args()
    ensure_display(__file__, sys.argv[1:], screen="1600x1000x24")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else _build(Path(tmp))
        _shoot(folder, Path(args.out), wait)
    return 0


def _build(tmp: Path) -> Path:
    from cohort_folder import build_cohort

    return build_cohort(tmp, n=6)


def _shoot(folder: Path, out: Path, wait) -> None:
    import napari
    from _shots import save_window
    from qtpy.QtCore import Qt

    from napari_mran._napari._qt.cohort_panel import CohortPanel

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1700, 900)
    panel = CohortPanel(viewer)
    panel.setMinimumWidth(660)  # the dock dragged wider: every column shows
    viewer.window.add_dock_widget(panel, name="Cohort review")
    panel.open_folder(folder)
    wait(cond=lambda: all(r.details for r in panel.table.rows))
    panel.view.sortByColumn(2, Qt.SortOrder.DescendingOrder)
    panel.select_row(next(r.index for r in panel.table.rows if r.predicted == "tumour"))
    wait(signal=panel.row_shown)
    save_window(viewer, out)


if __name__ == "__main__":
    sys.exit(main())
