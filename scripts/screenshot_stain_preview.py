"""Screenshot of *Settings > Stain normalisation > Preview* (docs/gui.md).

    .venv/bin/python scripts/screenshot_stain_preview.py [--out docs/screenshots] [--seed 7]

A synthetic tumour slide as "scanner-b" shows it (napari_mran.synthetic: another lab
and scanner; 8192 x 8192 px, 0.5 µm/px) is made in a temporary folder and opened in a
real napari window (1600 x 1000) with the "Analyze slide" panel and the bundled demo
model.  Macenko is chosen and *Preview* clicked; napari's grid mode then shows the slide
as scanned (left) beside the preview layer (right).  Writes, in --out:

  stain-preview.png   the slide and its Macenko preview side by side; Settings tab

Deterministic (same seed, model, window size and camera).  Needs an X display: without
one it re-runs itself under ``xvfb-run``.  Nothing outside --out is written.
"""

from __future__ import annotations

import sys
import time

from _shots import ensure_display, napari_window, open_widget, shot_parser

WINDOW = (1600, 1000)
SIZE = 8192


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = shot_parser(__doc__, seed=7).parse_args(argv)
    ensure_display(__file__, argv)

    from napari_mran._napari._qt.stain_preview import META, SUFFIX
    from napari_mran.synthetic import make_slide

    with napari_window(args.out, "mran-stain-shots-", WINDOW) as (gui, work, viewer):
        t0 = time.perf_counter()
        info = make_slide(work / "scanner-b.svs", SIZE, SIZE, tumour=True, seed=args.seed,
                          tumour_fraction=0.4, stain_shift="scanner-b")
        print(f"synthetic scanner-b slide {SIZE} px: {time.perf_counter() - t0:.1f} s")
        slide_layer = viewer.open(str(info.path), plugin="napari-mran")[0]
        widget = open_widget(viewer, gui)
        combo = widget.settings.stain_combo
        combo.setCurrentIndex(combo.findData("macenko"))
        widget.tabs.setCurrentIndex(0)
        widget.settings.preview_btn.click()
        name = f"{slide_layer.name} {SUFFIX}"
        gui.wait_for(lambda: name in viewer.layers and not widget.stain_preview.running,
                     120, "the stain preview")
        if widget.stain_preview.last_error:
            raise RuntimeError(f"the preview failed: {widget.stain_preview.last_error}")
        used = viewer.layers[name].metadata[META]
        print(f"preview: reference {used['reference_source']}, source fitted on "
              f"{used['source_fitted_on']}")
        grid = viewer.canvas.grid  # napari's grid mode: one layer per panel
        grid.enabled, grid.stride = True, 1
        viewer.reset_view()
        gui.save(gui.window_shot(viewer), "stain-preview.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
