"""``make demo``: the main job end to end on the bundled sample slide.

With a display it opens napari with the slide; without one (a server, CI) it
prints the slide's summary.
"""

from __future__ import annotations

import os
import sys


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and \
        os.environ.get("QT_QPA_PLATFORM") != "offscreen"


def main(argv: list[str] | None = None) -> int:
    from ._napari.sample_data import sample_slide_path
    from .slide import open_slide

    path = sample_slide_path()
    with open_slide(path) as slide:
        print(slide.summary())
    if not _has_display() or "--headless" in (argv or sys.argv[1:]):
        print("\n(no display: headless summary only; run on a desktop to open napari)")
        return 0
    from ._napari.launch import open_viewer

    open_viewer([str(path)], title="napari-mran demo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
