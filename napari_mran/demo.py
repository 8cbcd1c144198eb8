"""``make demo``: the main job end to end.

The bundled demo model (trained on synthetic slides; NOT for diagnosis) analyses the
bundled real H&E sample (CMU-1-Small-Region.svs) and a synthetic tumour slide. Results
stores, exports (GeoJSON, CSV, OME-TIFF, provenance) and PNG overviews go to
``demo-output/``. With a display, napari then opens with the slides and their attention
layers; without one (a server, CI) the run stops after writing the files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and \
        os.environ.get("QT_QPA_PLATFORM") != "offscreen"


def demo_slides(work: Path) -> list[Path]:
    """The bundled real sample and a synthetic tumour slide (made once, deterministic)."""
    from ._napari.sample_data import sample_slide_path
    from .synthetic import make_slide

    synth = work / "synthetic-tumour.svs"
    if not synth.exists():
        make_slide(synth, 8192, 8192, tumour=True, seed=2026)
    return [sample_slide_path(), synth]


def run(out: Path, *, overwrite: bool = True, quiet: bool = False) -> list[Path]:
    """Analyse the demo slides; return the results stores written."""
    from .analysis import predict_slide
    from .cli.analyze import analysis_targets, target_paths, write_outputs
    from .export.plan import file_stem
    from .model import load_model
    from .slide import open_slide

    out.mkdir(parents=True, exist_ok=True)
    model = load_model("demo")
    stores = []
    for path in demo_slides(out):
        t0 = time.perf_counter()
        with open_slide(path) as slide:
            result = predict_slide(slide, model)
            stem = file_stem(path)
            targets = analysis_targets(out, stem, ("geojson", "csv", "ome-tiff", "provenance",
                                                   "overview"))
            write_outputs(result, slide, targets, overwrite)
        stores.append(targets["store"])
        if not quiet:
            probs = ", ".join(f"{c} {p:.3f}" for c, p in zip(result.class_names, result.slide_probs))
            print(f"{path.name}: {result.n_bags} bags, {probs} ({time.perf_counter() - t0:.1f} s)")
            for kind, p in target_paths(targets).items():
                print(f"    {kind:10s} {p}")
    return stores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m napari_mran.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo-output")
    ap.add_argument("--headless", action="store_true", help="never open napari")
    args = ap.parse_args(argv)
    from .errors import MRANError

    print("napari-mran demo: the demo model was trained on synthetic slides; it is a "
          "demonstration, not for diagnosis.\n")
    try:
        stores = run(Path(args.out))
    except MRANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.headless or not _has_display():
        print(f"\n(no display: results, exports and PNG overviews are in {args.out}/; "
              "run on a desktop to open napari)")
        return 0
    from ._napari.launch import open_viewer

    # the synthetic tumour slide first (shown), the real H&E sample second (hidden layers)
    open_viewer([str(s) for s in reversed(stores)], title="napari-mran demo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
