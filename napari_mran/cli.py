"""``napari-mran`` command line: a thin front end over the headless core.

Every subcommand returns an exit status; errors print ``error: <file>: <reason>``
to stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._events import drain as _drain
from .errors import MRANError


def _cmd_info(args) -> int:
    from .slide import open_slide

    for path in args.slides:
        with open_slide(path, mpp=args.mpp) as slide:
            if args.json:
                print(json.dumps({
                    "path": slide.path, "vendor": slide.vendor,
                    "level_dimensions": slide.level_dimensions,
                    "level_downsamples": slide.level_downsamples,
                    "mpp": slide.mpp, "mpp_source": slide.mpp_source,
                    "objective_power": slide.objective_power,
                    "associated_images": list(slide.associated_images),
                    "warnings": slide.warnings,
                }, indent=2))
            else:
                print(slide.summary())
    return 0


class _Progress:
    """One-line progress on stderr (tqdm when installed and stderr is a terminal)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def line(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        if self.tty and not final:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _cmd_train(args) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(epochs=args.epochs, width=args.width, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, n_folds=args.folds, fold=args.fold, split_file=args.split_file,
                      bag_px=args.bag_px, tissue_method=args.tissue_method,
                      max_bags_per_slide=args.max_bags_per_slide, device=args.device,
                      workers=args.workers,
                      class_names=args.class_names.split(",") if args.class_names else None)
    progress = _Progress(args.quiet)

    def show(ev):
        if ev.stage == "epoch":
            progress.line(ev.message, final=True)
        elif ev.stage == "upstream":
            eta = f", ETA {ev.eta_s:.0f} s" if ev.eta_s is not None else ""
            progress.line(f"{ev.message} loss {ev.loss:.3f}{eta}")
        elif ev.stage == "prepare":
            progress.line(ev.message, final=True)

    summary = _drain(train(args.slides, args.labels, args.out, cfg, resume=args.resume,
                           command="napari-mran " + " ".join(sys.argv[1:])), show)
    print(json.dumps({"model": str(summary.model_path), "best_epoch": summary.best_epoch,
                      "best": summary.best_metrics.get("val", summary.best_metrics.get("train"))},
                     indent=2))
    return 0


EXPORTS = ("geojson", "csv", "ome-tiff", "ome-zarr", "provenance", "overview")


def analysis_outputs(out_dir, stem: str, exports) -> dict[str, Path]:
    """Final names of everything ``analyze`` writes for one slide."""
    out = Path(out_dir)
    names = {"store": f"{stem}.mran.zarr", "geojson": f"{stem}.bags.geojson",
             "csv": f"{stem}.patches.csv", "ome-tiff": f"{stem}.patch-attention.ome.tif",
             "ome-zarr": f"{stem}.patch-attention.ome.zarr", "provenance": f"{stem}.provenance.json",
             "overview": f"{stem}.overview.png"}
    return {k: out / v for k, v in names.items() if k == "store" or k in exports}


def _cmd_analyze(args) -> int:
    from .analysis import analyze_slide
    from .errors import OutputExistsError, ResultsError
    from .export.plan import file_stem
    from .model import load_model
    from .slide import open_slide

    exports = [e for e in args.export.split(",") if e] if args.export else []
    bad = [e for e in exports if e not in EXPORTS]
    if bad:
        raise ResultsError(f"unknown export(s) {bad}; choose from {', '.join(EXPORTS)}")
    out = Path(args.out)
    model = load_model(args.model)
    progress = _Progress(args.quiet)
    status = 0
    for path in args.slides:
        with open_slide(path, mpp=args.mpp) as slide:
            stem = file_stem(path) or "slide"
            targets = analysis_outputs(out, stem, exports)
            # refuse before computing: never overwrite unasked, fail early on unwritable folders
            existing = [str(p) for p in targets.values() if p.exists()]
            if existing and not args.overwrite:
                raise OutputExistsError(f"{existing[0]}: already exists (use --overwrite, or "
                                        "choose another --out)")
            _make_out_dir(out)

            def show(ev):
                if ev.stage == "bags":
                    eta = f", ETA {ev.eta_s:.0f} s" if ev.eta_s is not None else ""
                    progress.line(f"{Path(path).name}: {ev.message}{eta}")
                elif ev.stage in ("tissue", "done"):
                    progress.line(f"{Path(path).name}: {ev.message}", final=True)

            result = _drain(analyze_slide(slide, model, bag_um=args.bag_um,
                                          tissue_method=args.tissue_method,
                                          batch_size=args.batch_size, device=args.device,
                                          amp=args.amp), show)
            result.save(targets["store"], overwrite=args.overwrite)
            _write_exports(result, slide, targets, args.overwrite)
            if result.degraded:
                status = 1
                print(f"warning: {path}: {len(result.failed_boxes)} bag(s) failed to decode; "
                      "the result is flagged degraded", file=sys.stderr)
            print(json.dumps({"slide": str(path), "slide_probs": dict(zip(
                result.class_names, map(float, result.slide_probs))), "bags": result.n_bags,
                "outputs": {k: str(v) for k, v in targets.items()}}, indent=2))
    return status


def _make_out_dir(out: Path) -> None:
    """Create the output folder (and parents); a clear ResultsError when it cannot be
    made or written."""
    import os

    from .errors import ResultsError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"{out}: cannot create the output folder "
                           f"({exc.strerror or type(exc).__name__})") from None
    if not os.access(out, os.W_OK):
        raise ResultsError(f"{out}: the output folder is not writable")


def _write_exports(result, slide, targets, overwrite: bool) -> None:
    from .export import (export_csv, export_geojson, export_ome_tiff, export_ome_zarr,
                         export_provenance)
    from .overview import write_overview

    if "geojson" in targets:
        export_geojson(result, targets["geojson"], level="bag", overwrite=overwrite)
    if "csv" in targets:
        export_csv(result, targets["csv"], level="patch", overwrite=overwrite)
    if "ome-tiff" in targets:
        export_ome_tiff(result, targets["ome-tiff"], level="patch", weighting="global",
                        overwrite=overwrite)
    if "ome-zarr" in targets:
        export_ome_zarr(result, targets["ome-zarr"], level="patch", weighting="global",
                        overwrite=overwrite)
    if "provenance" in targets:
        export_provenance(result, targets["provenance"], overwrite=overwrite)
    if "overview" in targets:
        write_overview(slide, result, targets["overview"], overwrite=overwrite)


def _cmd_export(args) -> int:
    """Exports of a saved results store: planned first, refused before writing anything
    if a file exists (unless --overwrite), then written one by one, atomically."""
    import os

    from .errors import OutputExistsError, ResultsError
    from .export.plan import export_plan, normalise_kind, write_export
    from .results import SlideResult

    kinds = []
    for k in (k.strip().lower() for k in args.format.split(",") if k.strip()):
        try:
            kinds.append(k if k == "overview" else normalise_kind(k))
        except ResultsError:
            raise ResultsError(f"--format: unknown export format {k!r}; choose from "
                               "geojson, csv, ome-tiff, ome-zarr, provenance, "
                               "overview") from None
    if not kinds:
        raise ResultsError("--format: name at least one of geojson, csv, ome-tiff, "
                           "ome-zarr, provenance, overview")
    store = Path(args.result)
    result = SlideResult.load(store)
    out = Path(args.out) if args.out else store.resolve().parent
    levels = [v for v in args.level.split(",") if v.strip()] if args.level else None
    plan = export_plan(result, out, [k for k in kinds if k != "overview"],
                       weighting=args.weighting or "local", levels=levels,
                       gzip_geojson=args.gzip)
    overview = None
    if "overview" in kinds:
        from .export.plan import file_stem

        overview = out / f"{file_stem(result.slide_name or 'slide')}.overview.png"
    targets = [job.path for job in plan] + ([overview] if overview else [])
    existing = [str(p) for p in targets if os.path.lexists(p)]
    if existing and not args.overwrite:
        raise OutputExistsError(f"{existing[0]}: already exists (use --overwrite, or "
                                "choose another --out)")
    slide = None
    written = []
    try:
        if overview is not None:  # needs the slide: open it before writing anything
            from .slide import open_slide

            slide_path = (result.provenance.get("slide") or {}).get("path")
            if not slide_path or not os.path.exists(slide_path):
                raise ResultsError(f"{store}: the overview needs the slide, and "
                                   f"{slide_path or 'its path'} is not there")
            slide = open_slide(slide_path)
            if tuple(slide.dimensions) != tuple(result.slide_size):
                raise ResultsError(f"{slide_path}: {slide.dimensions[0]} x "
                                   f"{slide.dimensions[1]} px, but {store} was computed on "
                                   f"{result.slide_size[0]} x {result.slide_size[1]} px")
        _make_out_dir(out)
        for job in plan:
            written.append(str(write_export(result, job, overwrite=args.overwrite)))
        if overview is not None:
            from .overview import write_overview

            # (global by default, as `analyze` writes it)
            written.append(str(write_overview(slide, result, overview,
                                              weighting=args.weighting or "global",
                                              overwrite=args.overwrite)))
    finally:
        if slide is not None:
            slide.close()
    print(json.dumps({"result": str(store), "written": written}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="napari-mran", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"napari-mran {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print what a slide holds (levels, MPP, vendor)")
    info.add_argument("slides", nargs="+")
    info.add_argument("--mpp", type=float, default=None, help="override µm/px of level 0")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    an = sub.add_parser("analyze", help="analyse slides with MRAN: results store + exports")
    an.add_argument("slides", nargs="+")
    an.add_argument("--model", default="demo", help="checkpoint file, or 'demo' (synthetic demo model)")
    an.add_argument("--out", required=True, help="output folder (created if needed)")
    an.add_argument("--export", default="geojson,csv,provenance,overview",
                    help=f"comma-separated subset of {','.join(EXPORTS)} ('' for none)")
    an.add_argument("--bag-um", type=float, default=None, help="bag side in µm (default 2048 px)")
    an.add_argument("--tissue-method", choices=["reference", "otsu"], default="reference")
    an.add_argument("--batch-size", default="auto")
    an.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    an.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                    help="reduced precision: auto = bf16/fp16 autocast on CUDA only")
    an.add_argument("--mpp", type=float, default=None, help="override µm/px of level 0")
    an.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    an.add_argument("--quiet", action="store_true")
    an.set_defaults(func=_cmd_analyze)

    ex = sub.add_parser("export", help="write exports of a results store (.mran.zarr)")
    ex.add_argument("result", help="a .mran.zarr results store")
    ex.add_argument("--format", required=True,
                    help="comma-separated: geojson, csv, ome-tiff, ome-zarr, provenance, overview")
    ex.add_argument("--out", default=None, help="output folder (default: the store's folder)")
    ex.add_argument("--level", default=None,
                    help="comma-separated subset of bag,patch,cell (default: per format, "
                         "docs/cli.md)")
    ex.add_argument("--weighting", choices=["local", "global"], default=None,
                    help="attention of the heatmaps and GeoJSON scores: local (alpha, beta; "
                         "the default) or global (gamma*alpha, gamma*alpha*beta); the "
                         "overview is global unless this says local")
    ex.add_argument("--gzip", action="store_true", help="GeoJSON as .geojson.gz")
    ex.add_argument("--overwrite", action="store_true", help="replace existing files")
    ex.set_defaults(func=_cmd_export)

    tr = sub.add_parser("train", help="train MRAN on labelled slides (two-branch scheme)")
    tr.add_argument("--slides", required=True, help="folder holding the slides")
    tr.add_argument("--labels", required=True, help="labels.csv with columns slide,label,case")
    tr.add_argument("--out", required=True, help="run folder (new, or existing with --resume)")
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run")
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier (1 = ResNet-18)")
    tr.add_argument("--lr", type=float, default=1e-4)
    tr.add_argument("--batch-size", type=int, default=4, help="bags per upstream step")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--folds", type=int, default=5)
    tr.add_argument("--fold", type=int, default=0, help="test fold (the next one validates)")
    tr.add_argument("--split-file", default=None, help="CSV slide,split (train/val/test) instead of folds")
    tr.add_argument("--bag-px", type=int, default=2048)
    tr.add_argument("--tissue-method", choices=["reference", "otsu"], default="reference")
    tr.add_argument("--max-bags-per-slide", type=int, default=None)
    tr.add_argument("--class-names", default=None, help="comma-separated, in label order")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--workers", type=int, default=4, help="bag decoding threads")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=_cmd_train)
    from importlib.util import find_spec

    if find_spec("napari_mran._cli_cohort") is not None:
        from ._cli_cohort import register
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MRANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
