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

    docs = []
    for path in args.slides:
        with open_slide(path, mpp=args.mpp) as slide:
            if args.json:
                docs.append({
                    "path": slide.path, "vendor": slide.vendor,
                    "level_dimensions": slide.level_dimensions,
                    "level_downsamples": slide.level_downsamples,
                    "mpp": slide.mpp, "mpp_source": slide.mpp_source,
                    "objective_power": slide.objective_power,
                    "associated_images": list(slide.associated_images),
                    "warnings": slide.warnings,
                })
            else:
                print(slide.summary())
    if args.json:  # one document: an object for one slide, an array for several
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
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

    repeated = args.split_ratio is not None or args.split_dir is not None
    if repeated:  # every option check before anything is read or created
        from .training import LabelsError, parse_ratio

        if args.split_ratio is not None and args.split_dir is not None:
            raise LabelsError("--split-ratio and --split-dir exclude each other")
        if args.split_file:
            raise LabelsError("--split-file excludes --split-ratio and --split-dir")
        if args.split_ratio is not None:
            parse_ratio(args.split_ratio)
        if args.repeats is not None and args.repeats < 1:
            raise LabelsError(f"--repeats must be a positive integer, got {args.repeats}")
    elif args.repeats is not None or args.allow_missing_slides:
        from .training import LabelsError

        raise LabelsError("--repeats and --allow-missing-slides need --split-ratio or --split-dir")
    cfg = TrainConfig(epochs=args.epochs, width=args.width, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, n_folds=args.folds, fold=args.fold, split_file=args.split_file,
                      bag_px=args.bag_px, tissue_method=args.tissue_method,
                      max_bags_per_slide=args.max_bags_per_slide, device=args.device,
                      workers=args.workers, init_backbone=args.init_backbone,
                      class_names=args.class_names.split(",") if args.class_names else None)
    progress = _Progress(args.quiet)

    def show(ev):
        if ev.stage in ("epoch", "prepare", "test"):
            progress.line(ev.message, final=True)
        elif ev.stage == "upstream":
            eta = f", ETA {ev.eta_s:.0f} s" if ev.eta_s is not None else ""
            progress.line(f"{ev.message} loss {ev.loss:.3f}{eta}")

    command = "napari-mran " + " ".join(sys.argv[1:])
    if repeated:
        from dataclasses import replace

        from .training import train_repeats

        def show_repeat(rev):
            if rev.event is not None:
                show(replace(rev.event, message=rev.message))
            elif rev.stage != "summary":
                progress.line(rev.message, final=True)

        res = _drain(train_repeats(args.slides, args.labels, args.out, cfg, repeats=args.repeats,
                                   ratio=args.split_ratio, split_dir=args.split_dir,
                                   allow_missing=args.allow_missing_slides, resume=args.resume,
                                   command=command), show_repeat)
        print(res.summary_md.read_text(), file=sys.stderr)
        print(json.dumps({"summary_csv": str(res.summary_csv), "summary_md": str(res.summary_md),
                          "repeats": len(res.runs), "runs": [str(r) for r in res.runs],
                          "test": {k: {"mean": v["mean"], "sd": v["sd"], "n": v["n"]}
                                   for k, v in res.metrics.items()}}, indent=2, allow_nan=False))
        return 0
    summary = _drain(train(args.slides, args.labels, args.out, cfg, resume=args.resume,
                           command=command), show)
    test = (summary.test or {}).get("metrics")
    print(json.dumps({"model": str(summary.model_path), "best_epoch": summary.best_epoch,
                      "best": summary.best_metrics.get("val", summary.best_metrics.get("train")),
                      "test": None if test is None else
                      {k: test.get(k) for k in ("n", "accuracy", "auc", "f1", "sensitivity",
                                                "specificity")}},
                     indent=2))
    return 0


def _cmd_tcga_labels(args) -> int:
    from .tcga import tcga_labels, write_labels_csv

    res = tcga_labels(args.folder, recursive=not args.no_recursive,
                      tumour_label=args.tumour_label, normal_label=args.normal_label)
    print(res.report(), file=sys.stderr)
    path = write_labels_csv(res, args.out, overwrite=args.overwrite)
    print(json.dumps({"labels": str(path), **res.counts()}, indent=2))
    return 0


EXPORTS = ("geojson", "csv", "ome-tiff", "ome-zarr", "provenance", "overview")
#: the level (and weighting) of each export ``analyze`` writes; names come from the
#: export plan, so ``analyze`` and ``export`` write the same file for the same content
_ANALYZE_LEVELS = {"geojson": ("bag", "local"), "csv": ("patch", "local"),
                   "ome-tiff": ("patch", "global"), "ome-zarr": ("patch", "global")}

DEMO_NOTE = ("the bundled demo model was trained on synthetic slides: its output is a "
             "demonstration, not a diagnosis")


def model_spec(args) -> str:
    """The ``--model`` value; a clear error when it is missing (never a silent demo)."""
    from .errors import MRANError

    if not getattr(args, "model", None):
        raise MRANError("--model is required: a checkpoint file (.safetensors or a "
                        "reference .pth), or '--model demo' for the bundled synthetic demo "
                        "model (not for diagnosis)")
    return args.model


def analysis_targets(out_dir, stem: str, exports) -> dict[str, Path]:
    """Final names of everything ``analyze`` writes for one slide."""
    from .export.plan import export_plan

    out = Path(out_dir)
    targets = {"store": out / f"{stem}.mran.zarr"}
    for kind in exports:
        if kind in _ANALYZE_LEVELS:
            level, weighting = _ANALYZE_LEVELS[kind]
            job, = export_plan(None, out, [kind], weighting=weighting, levels=[level], stem=stem)
            targets[kind] = job.path
        elif kind == "provenance":
            targets[kind] = out / f"{stem}.provenance.json"
        elif kind == "overview":
            targets[kind] = out / f"{stem}.overview.png"
    return targets


def check_targets(paths, overwrite: bool) -> None:
    """Refuse before any computation when a target exists (without --overwrite) or
    exists and cannot be replaced safely (with it)."""
    import os

    from .errors import OutputExistsError
    from .export.heatmaps import ome_zarr_replace_check
    from .results import verify_store

    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]}: already exists{more}; use --overwrite to "
                                "replace it, or --out to write into another folder")
    for p in existing:
        name = p.name.lower()
        if name.endswith(".mran.zarr"):
            why = verify_store(p)
        elif name.endswith(".ome.zarr"):
            why = ome_zarr_replace_check(p)
        else:
            why = None if p.is_file() and not p.is_symlink() else "it is not a plain file"
        if why:
            raise OutputExistsError(f"{p}: --overwrite refuses to replace it: {why}")


def _cmd_analyze(args) -> int:
    import os

    from .analysis import analyze_slide
    from .cohort import store_names
    from .errors import ResultsError
    from .model import load_model
    from .slide import open_slide

    spec = model_spec(args)
    exports = [e.strip() for e in args.export.split(",") if e.strip()] if args.export else []
    bad = [e for e in exports if e not in EXPORTS]
    if bad:
        raise ResultsError(f"--export: unknown export(s) {', '.join(bad)}; choose from "
                           f"{', '.join(EXPORTS)}")
    slides = [os.path.abspath(s) for s in args.slides]
    twice = [s for s in dict.fromkeys(slides) if slides.count(s) > 1]
    if twice:
        raise ResultsError(f"{twice[0]}: given more than once")
    out = Path(args.out)
    # distinct names for slides that share a stem (a/X.svs, b/X.svs): -<8 hex of the path>
    stems = [n[: -len(".mran.zarr")] for n in store_names(slides)]
    plans = [(path, stem, analysis_targets(out, stem, exports)) for path, stem in zip(slides, stems)]
    # every precondition before the first bag is read: outputs, the folder, the model
    check_targets([p for _, _, t in plans for p in t.values()], args.overwrite)
    _make_out_dir(out)
    model = load_model(spec)
    is_demo = bool(getattr(model, "is_demo", False))
    if is_demo:
        print(f"warning: --model demo: {DEMO_NOTE}", file=sys.stderr)
    progress = _Progress(args.quiet)
    status = 0
    for path, stem, targets in plans:
        with open_slide(path, mpp=args.mpp) as slide:
            def show(ev, name=Path(path).name):
                if ev.stage == "bags":
                    eta = f", ETA {ev.eta_s:.0f} s" if ev.eta_s is not None else ""
                    progress.line(f"{name}: {ev.message}{eta}")
                elif ev.stage in ("tissue", "done"):
                    progress.line(f"{name}: {ev.message}", final=True)

            result = _drain(analyze_slide(
                slide, model, bag_um=args.bag_um, tissue_method=args.tissue_method,
                batch_size=args.batch_size, device=args.device, amp=args.amp, edge=args.edge,
                allow_non_brightfield=args.allow_non_brightfield), show)
            result.save(targets["store"], overwrite=args.overwrite)
            _write_exports(result, slide, targets, args.overwrite)
            if result.degraded:
                status = 1
                print(f"warning: {path}: {len(result.failed_boxes)} bag(s) failed to decode; "
                      "the result is flagged degraded", file=sys.stderr)
            tissue = result.provenance.get("tissue", {})
            summary = {"slide": str(path), "slide_probs": dict(zip(
                result.class_names, map(float, result.slide_probs))), "bags": result.n_bags,
                "edge": tissue.get("edge"), "tissue_coverage": tissue.get("coverage"),
                "model": {"path": getattr(model, "checkpoint_path", spec), "demo": is_demo},
                "outputs": {k: str(v) for k, v in targets.items()}}
            if is_demo:
                summary["model"]["note"] = DEMO_NOTE
            cov = tissue.get("coverage")
            if cov is not None and not args.quiet:
                print(f"{Path(path).name}: analysed {cov:.0%} of the tissue "
                      f"({result.n_bags} bags, edge policy {tissue.get('edge')})"
                      + (" [DEMO MODEL]" if is_demo else ""), file=sys.stderr)
            print(json.dumps(summary, indent=2))
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
        export_geojson(result, targets["geojson"], level="bag", weighting="local",
                       overwrite=overwrite)
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
    slide = None
    written: list[str] = []
    unchanged: list[str] = []
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
        weighting = args.weighting or "global"
        existing = [p for p in targets if os.path.lexists(p)]
        if existing and not args.overwrite:
            # a file an earlier `analyze` or `export` wrote from this store with these
            # options is byte-identical to what we would write: keep it, skip it
            same = _identical_exports(result, plan, overview, slide, weighting, existing)
            unchanged = [str(p) for p in existing if p in same]
            clash = [p for p in existing if p not in same]
            if clash:
                more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
                raise OutputExistsError(
                    f"{clash[0]}: already exists with other content{more}; use --overwrite "
                    "to replace it, or --out to write into another folder")
        skip = set(unchanged)
        _make_out_dir(out)
        for job in plan:
            if str(job.path) not in skip:
                written.append(str(write_export(result, job, overwrite=args.overwrite)))
        if overview is not None and str(overview) in skip:
            overview = None
        if overview is not None:
            from .overview import write_overview

            # (global by default, as `analyze` writes it)
            written.append(str(write_overview(slide, result, overview, weighting=weighting,
                                              overwrite=args.overwrite)))
    finally:
        if slide is not None:
            slide.close()
    print(json.dumps({"result": str(store), "written": written, "unchanged": unchanged},
                     indent=2))
    return 0


def _identical_exports(result, plan, overview, slide, weighting, existing) -> set:
    """The existing plain files among the planned outputs whose content equals what this
    export would write (rendered into a private temporary folder and compared)."""
    import filecmp
    import shutil
    import tempfile

    from .export.plan import ExportJob, write_export

    wanted = {p for p in existing if p.is_file() and not p.is_symlink()}
    if not wanted:
        return set()
    same = set()
    tmp = Path(tempfile.mkdtemp(prefix="napari-mran-export-check-"))
    try:
        for job in plan:
            if job.path in wanted:
                fresh = write_export(result, ExportJob(job.kind, tmp / job.path.name,
                                                       job.options))
                if filecmp.cmp(fresh, job.path, shallow=False):
                    same.add(job.path)
        if overview is not None and overview in wanted:
            from .overview import write_overview

            fresh = write_overview(slide, result, tmp / overview.name, weighting=weighting)
            if filecmp.cmp(fresh, overview, shallow=False):
                same.add(overview)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return same


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
    an.add_argument("--model", default=None, metavar="M",
                    help="required: a checkpoint file, or 'demo' (the bundled demo model, "
                         "trained on synthetic slides: not for diagnosis)")
    an.add_argument("--out", required=True, help="output folder (created if needed)")
    an.add_argument("--export", default="geojson,csv,provenance,overview",
                    help=f"comma-separated subset of {','.join(EXPORTS)} ('' for none)")
    an.add_argument("--bag-um", type=float, default=None, help="bag side in µm (default 2048 px)")
    an.add_argument("--tissue-method", choices=["reference", "exact", "otsu"], default="reference",
                    help="reference (fast: the white rule at <= 4x on candidate bags), exact "
                         "(the authors' rule on level 0 for every bag) or otsu")
    an.add_argument("--batch-size", default="auto")
    an.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    an.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                    help="reduced precision: auto = bf16/fp16 autocast on CUDA only")
    an.add_argument("--mpp", type=float, default=None, help="override µm/px of level 0")
    an.add_argument("--edge", choices=["pad", "drop"], default="pad",
                    help="partial bags at the right/bottom edges: pad (default: analysed, "
                         "white outside the slide) or drop (the authors' rule)")
    an.add_argument("--allow-non-brightfield", action="store_true",
                    help="analyse input that fails the brightfield H&E check (recorded in "
                         "provenance)")
    an.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    an.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
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
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run (with "
                    "repeats: finished repeats are verified and skipped)")
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier (1 = ResNet-18)")
    tr.add_argument("--lr", type=float, default=1e-4)
    tr.add_argument("--batch-size", type=int, default=4, help="bags per upstream step")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--folds", type=int, default=5)
    tr.add_argument("--fold", type=int, default=0, help="test fold (the next one validates)")
    tr.add_argument("--split-file", default=None, help="CSV slide,split (train/val/test) instead of folds")
    tr.add_argument("--split-ratio", default=None, metavar="A:B:C",
                    help="repeated Monte-Carlo splits by case, stratified by label, in the ratio "
                         "train:val:test (the authors: 3:1:1 BRCA/STAD, 2:1:2 LUSC); each repeat "
                         "is a run in OUT/repeat-<i>/, then OUT/repeats-summary.{csv,md}")
    tr.add_argument("--split-dir", default=None, metavar="DIR",
                    help="the authors' split CSVs: DIR/<i>/case_{train,val,test}.csv (their "
                         "csv/<cohort>/split/<ratio>/), one repeat per numbered folder")
    tr.add_argument("--repeats", type=int, default=None, metavar="N",
                    help="number of repeats (default 5 with --split-ratio, every folder with "
                         "--split-dir); repeat i's split seed derives from --seed and i")
    tr.add_argument("--allow-missing-slides", action="store_true",
                    help="with --split-dir: train without the split files' slides that match "
                         "no slide of --labels (they are reported); default: an error")
    tr.add_argument("--bag-px", type=int, default=2048)
    tr.add_argument("--tissue", "--tissue-method", dest="tissue_method",
                    choices=["reference", "exact", "otsu"], default="reference",
                    help="tissue bags: reference (fast: the white rule at <= 4x on candidate "
                         "bags), exact (the authors' rule on level 0 for every bag) or otsu")
    tr.add_argument("--max-bags-per-slide", type=int, default=None)
    tr.add_argument("--class-names", default=None, help="comma-separated, in label order")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--workers", type=int, default=4, help="bag decoding threads")
    tr.add_argument("--init-backbone", default=None, metavar="PATH",
                    help="initialise the CNN from a torchvision-layout ResNet-18 state dict "
                         "(safetensors or .pth, loaded safely; width 1 only); its sha256 is "
                         "recorded. MRAN feeds RGB/255 without mean/std normalisation")
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    tr.set_defaults(func=_cmd_train)

    tc = sub.add_parser("tcga-labels", help="labels.csv from a folder of TCGA slide files "
                        "(case = barcode[:12]; sample type 01-09 tumour, 10-19 normal)")
    tc.add_argument("folder", help="folder of TCGA slides (sub-folders searched, as GDC lays "
                    "them out)")
    tc.add_argument("--out", required=True, help="labels CSV to write (slide,label,case)")
    tc.add_argument("--no-recursive", action="store_true", help="only the folder itself")
    tc.add_argument("--tumour-label", type=int, default=1, help="label of tumour samples")
    tc.add_argument("--normal-label", type=int, default=0, help="label of normal samples")
    tc.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    tc.set_defaults(func=_cmd_tcga_labels)
    from importlib.util import find_spec

    if find_spec("napari_mran._cli_cohort") is not None:
        from ._cli_cohort import register
        register(sub)
    return p


def _stdout_closed() -> int:
    """The reader of our stdout went away (``napari-mran info ... | head``): stop quietly.

    Python would print a BrokenPipeError traceback when it flushes stdout at exit;
    point stdout at /dev/null first (the documented recipe) and exit like a process
    killed by SIGPIPE would report it (128 + 13)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 141


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except MRANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
