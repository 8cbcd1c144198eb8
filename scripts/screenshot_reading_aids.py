"""Screenshots of the reading aids (docs/gui.md, "Reading aids").

    .venv/bin/python scripts/screenshot_reading_aids.py [--out docs/screenshots] [--seed 11]

In a real napari window (1600 x 1000) with the "Analyze slide" panel and the bundled
demo model.  Writes, in --out:

  colour-bars.png   the bundled real H&E (CMU-1-Small-Region) analysed; the Result tab
                    with a colour bar per level (unit, limits) and the µm scale bar
  side-by-side.png  a synthetic tumour slide and its tumour-free twin (same seed, same
                    tissue; 4096 x 6144 px) analysed, then *Side by side…*: one viewbox
                    each, one shared colour scale per level

Deterministic (same slides, model, window size and camera).  Prints the contrast limits
of each slide and the shared ones, and checks that the colour bars and both slides'
layers use the shared ones (and that the scale bar is on, in µm).  Needs an X display: without one it re-runs itself
under ``xvfb-run``.  Nothing outside --out is written (the synthetic slides and the
results stores go to a temporary folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

from _shots import Gui, analyse, ensure_display, napari_window, open_widget, save_results_in, shot_parser

WINDOW = (1600, 1000)
TWIN = (4096, 6144)  # width, height: 2 x 3 bags; tall slides suit two viewboxes side by side


def _limits(viewer) -> dict[str, tuple[float, float]]:
    return {ly.name: tuple(round(float(v), 4) for v in ly.contrast_limits)
            for ly in viewer.layers if ly.name.endswith("attention") and ly.visible}


def _colour_bars(viewer, widget, gui: Gui) -> None:
    from napari_mran._napari.sample_data import sample_slide_path

    slide_layer = viewer.open(str(sample_slide_path()), plugin="napari-mran")[0]
    seconds = analyse(widget, gui)
    bar = viewer.canvas.overlays.scale_bar
    units = {str(u) for u in slide_layer.units}
    print(f"CMU-1-Small-Region analysed in {seconds:.1f} s; scale bar visible: "
          f"{bar.visible}, slide layer units: {units}")
    if not bar.visible or units != {"micrometer"}:
        raise AssertionError("the scale bar should be on, in µm")
    for level, row in widget.results.colorbars.rows.items():
        print(f"  colour bar {level}: limits {tuple(round(float(v), 4) for v in row.limits)}")
    viewer.reset_view()
    gui.save(gui.window_shot(viewer), "colour-bars.png")


def _twins(work: Path, seed: int) -> list[Path]:
    from napari_mran.synthetic import make_slide

    paths = []
    for tumour in (False, True):
        name = f"twin-{'tumour' if tumour else 'normal'}.svs"
        paths.append(make_slide(work / name, *TWIN, tumour=tumour, seed=seed).path)
    return paths


def _side_by_side(viewer, widget, gui: Gui, work: Path, seed: int) -> None:
    viewer.layers.clear()
    gui.settle(0.5)
    for path in _twins(work, seed):  # normal first: the tumour result is shown at the end
        layer = viewer.open(str(path), plugin="napari-mran")[0]
        viewer.layers.selection.active = layer
        gui.settle(0.3)
        print(f"{path.name} analysed in {analyse(widget, gui):.1f} s")
    own = _limits(viewer)
    widget.results.compare_btn.click()  # two results: no question asked
    gui.wait_for(lambda: widget.results.compare is not None, 30, "side by side")
    shared = widget.results.compare.limits
    for level, row in widget.results.colorbars.rows.items():  # the bars read both slides
        want = tuple(round(float(v), 6) for v in shared[level])
        lows_highs = {tuple(round(float(v), 6) for v in ly.contrast_limits)
                      for ly in viewer.layers if ly.name.endswith(f"{level} attention")}
        if lows_highs != {want} or tuple(round(float(v), 6) for v in row.limits) != want:
            raise AssertionError(f"{level}: limits not shared: {lows_highs}, bar {row.limits}")
    print("contrast limits, each slide's own:", own)
    print("shared per level (side by side):", {k: tuple(round(v, 4) for v in lim)
                                               for k, lim in shared.items()})
    viewer.reset_view()
    gui.save(gui.window_shot(viewer), "side-by-side.png")
    widget.results.compare_btn.click()  # and back: grid off, the layers as they were
    gui.settle(0.3)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = shot_parser(__doc__, seed=11).parse_args(argv)
    ensure_display(__file__, argv)
    with napari_window(args.out, "mran-aids-shots-", WINDOW) as (gui, work, viewer):
        widget = open_widget(viewer, gui)
        save_results_in(widget, work / "results")
        _colour_bars(viewer, widget, gui)
        _side_by_side(viewer, widget, gui, work, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
