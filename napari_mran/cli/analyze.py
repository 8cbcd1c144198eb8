"""``napari-mran analyze SLIDE... --model M --out DIR``: one results store per slide plus
the exports, named by the same export plan as ``napari-mran export``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..vocab import store_names
from ._common import (DEMO_NOTE, Progress, UsageError, add_analysis_options, add_model,
                      add_output_options, add_roi_options, analysis_options, drain,
                      make_out_dir, model_spec, print_json, roi_classes)

EXPORTS = ("geojson", "csv", "ome-tiff", "ome-zarr", "provenance", "overview")
DEFAULT_EXPORTS = "geojson,csv,provenance,overview"
#: the level and weighting of each export ``analyze`` writes
_LEVELS = {"geojson": ("bag", "local"), "csv": ("patch", "local"),
           "ome-tiff": ("patch", "global"), "ome-zarr": ("patch", "global")}


def register(sub) -> None:
    p = sub.add_parser("analyze", help="analyse slides with MRAN: results store + exports")
    p.add_argument("slides", nargs="+")
    add_model(p)
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--export", default=DEFAULT_EXPORTS,
                   help=f"comma-separated subset of {','.join(EXPORTS)} ('' for none; "
                        f"default {DEFAULT_EXPORTS})")
    add_analysis_options(p)
    add_roi_options(p, per_slide=False)
    add_output_options(p, overwrite_help="replace outputs of an earlier run")
    p.set_defaults(run=run)


def analysis_targets(out_dir: str | os.PathLike, stem: str, exports) -> dict[str, Any]:
    """What ``analyze`` writes for one slide: ``{"store": path, kind: ExportJob or path}``
    (the overview is a path: it needs the slide)."""
    from ..export.plan import export_plan

    out = Path(out_dir)
    targets: dict[str, Any] = {"store": out / f"{stem}.mran.zarr"}
    for kind in exports:
        if kind in _LEVELS:
            level, weighting = _LEVELS[kind]
            targets[kind], = export_plan(None, out, [kind], weighting=weighting,
                                         levels=[level], stem=stem)
        elif kind == "provenance":
            targets[kind], = export_plan(None, out, [kind], stem=stem)
        elif kind == "overview":
            targets[kind] = out / f"{stem}.overview.png"
    return targets


def target_paths(targets: dict[str, Any]) -> dict[str, Path]:
    return {k: getattr(v, "path", v) for k, v in targets.items()}


def check_targets(paths, overwrite: bool) -> None:
    """Refuse before any computation when a target exists (without --overwrite) or
    exists and cannot be replaced safely (with it)."""
    from ..errors import OutputExistsError
    from ..export.heatmaps import ome_zarr_replace_check
    from ..results import verify_store
    from ..results.store import reviews_reason

    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]}: already exists{more}; use --overwrite to "
                                "replace it, or --out to write into another folder")
    for p in existing:
        name = p.name.lower()
        if name.endswith(".mran.zarr"):
            why = verify_store(p) or reviews_reason(p)
        elif name.endswith(".ome.zarr"):
            why = ome_zarr_replace_check(p)
        else:
            why = None if p.is_file() and not p.is_symlink() else "it is not a plain file"
        if why:
            raise OutputExistsError(f"{p}: --overwrite refuses to replace it: {why}")


def write_outputs(result: Any, slide: Any, targets: dict[str, Any], overwrite: bool) -> None:
    """The store, then every export, each atomically."""
    from ..export.plan import write_export
    from ..overview import write_overview

    result.save(targets["store"], overwrite=overwrite)
    for kind, target in targets.items():
        if kind == "overview":
            write_overview(slide, result, target, overwrite=overwrite)
        elif kind != "store":
            write_export(result, target, overwrite=overwrite)


def _plans(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    exports = [e.strip() for e in args.export.split(",") if e.strip()] if args.export else []
    bad = [e for e in exports if e not in EXPORTS]
    if bad:
        raise UsageError(f"--export: unknown export(s) {', '.join(bad)}; choose from "
                         f"{', '.join(EXPORTS)}")
    slides = [os.path.abspath(s) for s in args.slides]
    twice = [s for s in dict.fromkeys(slides) if slides.count(s) > 1]
    if twice:
        raise UsageError(f"{twice[0]}: given more than once")
    # distinct names for slides that share a stem (a/X.svs, b/X.svs): -<8 hex of the path>
    stems = [n[: -len(".mran.zarr")] for n in store_names(slides)]
    return [(path, analysis_targets(args.out, stem, exports))
            for path, stem in zip(slides, stems)]


def run(args: argparse.Namespace) -> int:
    from ..model import load_model
    from ..slide import open_slide

    spec = model_spec(args)
    options = _with_region(analysis_options(args), args)
    plans = _plans(args)
    # every precondition before the first bag is read or the folder is made: outputs,
    # model, slides (opening one only reads its structure and metadata), folder
    check_targets([p for _, t in plans for p in target_paths(t).values()], args.overwrite)
    model = load_model(spec)
    for path, _ in plans:
        with open_slide(path, mpp=options.mpp) as slide:
            if options.roi is not None:  # a region that cannot be this slide's: now
                options = options.replace(roi=options.roi.check_slide(*slide.dimensions))
    make_out_dir(Path(args.out))
    progress = Progress(args.quiet)
    summaries = [_analyze_one(path, targets, model, options, args, progress)
                 for path, targets in plans]
    if args.json:
        print_json({"slides": summaries})
    return 1 if any(s["degraded"] for s in summaries) else 0


def _with_region(options: Any, args: argparse.Namespace) -> Any:
    """The options with ``--roi`` (read and checked now: a bad file is exit 2)."""
    from ..roi import read_geojson

    classes = roi_classes(args)
    if not args.roi:
        return options
    if len(args.slides) > 1:
        raise UsageError("--roi FILE is the region of one slide; give one slide, or use "
                         "`napari-mran predict --roi-dir DIR` for many")
    return options.replace(roi=read_geojson(args.roi, classes))


def _analyze_one(path: str, targets: dict[str, Any], model: Any, options: Any,
                 args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from ..analysis import analyze_slide
    from ..slide import open_slide

    name = Path(path).name

    def show(ev: Any) -> None:
        if ev.stage == "bags":
            eta = f", ETA {ev.eta_s:.0f} s" if ev.eta_s is not None else ""
            progress.line(f"{name}: {ev.message}{eta}")
        elif ev.stage in ("tissue", "done"):
            progress.line(f"{name}: {ev.message}", final=True)

    with open_slide(path, mpp=options.mpp) as slide:
        result = drain(analyze_slide(slide, model, options), show)
        write_outputs(result, slide, targets, args.overwrite)
    return _summary(path, result, model, targets, args)


def _summary(path: str, result: Any, model: Any, targets: dict[str, Any],
             args: argparse.Namespace) -> dict[str, Any]:
    is_demo = bool(getattr(model, "is_demo", False))
    tissue = result.provenance.get("tissue", {})
    probs = dict(zip(result.class_names, map(float, result.slide_probs)))
    if result.degraded:
        print(f"warning: {path}: {len(result.failed_boxes)} bag(s) failed to decode; the "
              "result is flagged degraded", file=sys.stderr)
    summary = {"slide": str(path), "slide_probs": probs, "bags": result.n_bags,
               "degraded": bool(result.degraded), "edge": tissue.get("edge"),
               "tissue_coverage": tissue.get("coverage"),
               "model": {"path": getattr(model, "checkpoint_path", None), "demo": is_demo},
               "outputs": {k: str(v) for k, v in target_paths(targets).items()}}
    if result.provenance.get("region"):
        summary["region"] = {k: v for k, v in result.provenance["region"].items()
                             if k != "polygons"}
    if is_demo:
        summary["model"]["note"] = DEMO_NOTE
    if not args.json:
        top = max(probs, key=probs.__getitem__)
        cover = tissue.get("coverage")
        covered = "" if cover is None else f", {cover:.0%} of the tissue"
        region = result.provenance.get("region")
        if region:
            covered += f", inside the region of {Path(region['source']).name}"
        print(f"{Path(path).name}: {top} {probs[top]:.3f}; {result.n_bags} bags{covered} "
              f"(edge policy {tissue.get('edge')})" + (" [DEMO MODEL]" if is_demo else "")
              + f"; store {targets['store']}")
    return summary
