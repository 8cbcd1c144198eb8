"""``napari-mran export RESULT.mran.zarr --format LIST``: exports of a saved results store,
planned first, refused before anything is written, then written one by one atomically."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..vocab import EXPORT_KINDS, LEVELS, WEIGHTINGS
from ._common import UsageError, make_out_dir, print_json


def register(sub) -> None:
    p = sub.add_parser("export", help="write exports of a results store (.mran.zarr)")
    p.add_argument("result", help="a .mran.zarr results store")
    p.add_argument("--format", required=True, help=f"comma-separated: {', '.join(EXPORT_KINDS)}")
    p.add_argument("--out", default=None, help="output folder (default: the store's folder)")
    p.add_argument("--level", default=None,
                   help=f"comma-separated subset of {','.join(LEVELS)} (default: per format, "
                        "docs/cli.md)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                   help="attention of the heatmaps and GeoJSON scores: local (alpha, beta; the "
                        "default) or global (gamma*alpha, gamma*alpha*beta); the overview is "
                        "global unless this says local")
    p.add_argument("--gzip", action="store_true", help="GeoJSON as .geojson.gz")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(run=run)


def _kinds(text: str) -> list[str]:
    from ..export.plan import normalise_kind
    from ..vocab import export_kind

    kinds = []
    for k in (k.strip() for k in text.split(",") if k.strip()):
        try:
            kind = export_kind(k)
        except ValueError as exc:
            raise UsageError(f"--format: {exc}") from None
        kinds.append("overview" if kind == "overview" else normalise_kind(kind))
    if not kinds:
        raise UsageError(f"--format: name at least one of {', '.join(EXPORT_KINDS)}")
    return kinds


def _overview_slide(result: Any, store: Path) -> Any:
    """The slide an overview needs, opened, or a clear error before anything is written."""
    from ..errors import ResultsError
    from ..slide import open_slide

    slide_path = (result.provenance.get("slide") or {}).get("path")
    if not slide_path or not os.path.exists(slide_path):
        raise ResultsError(f"{store}: the overview needs the slide, and "
                           f"{slide_path or 'its path'} is not there")
    slide = open_slide(slide_path)
    if tuple(slide.dimensions) != tuple(result.slide_size):
        slide.close()
        raise ResultsError(f"{slide_path}: {slide.dimensions[0]} x {slide.dimensions[1]} px, "
                           f"but {store} was computed on {result.slide_size[0]} x "
                           f"{result.slide_size[1]} px")
    return slide


def run(args: argparse.Namespace) -> int:
    from ..export.plan import export_plan
    from ..results import SlideResult
    from ..vocab import file_stem

    kinds = _kinds(args.format)
    store = Path(args.result)
    result = SlideResult.load(store)
    out = Path(args.out) if args.out else store.resolve().parent
    levels = [v for v in args.level.split(",") if v.strip()] if args.level else None
    plan = export_plan(result, out, [k for k in kinds if k != "overview"],
                       weighting=args.weighting or "local", levels=levels,
                       gzip_geojson=args.gzip, store=store)
    warnings = _review_warnings(result, store) if "reviews" in kinds else []
    overview = (out / f"{file_stem(result.slide_name or 'slide')}.overview.png"
                if "overview" in kinds else None)
    slide = _overview_slide(result, store) if overview is not None else None
    try:
        written, unchanged = _write(result, plan, overview, slide, out, args)
    finally:
        if slide is not None:
            slide.close()
    report: dict[str, Any] = {"result": str(store), "written": written, "unchanged": unchanged}
    if warnings:
        report["warnings"] = warnings
    print_json(report)
    return 0


def _review_warnings(result: Any, store: Path) -> list[str]:
    """Refuse (before anything is written) a store without marks or with marks that do
    not load; the marks' model-version warning, also said on stderr."""
    import sys

    from ..export.reviews import load_marks

    warning = load_marks(result, store).model_warning()
    if warning is None:
        return []
    print(f"warning: {store}: {warning}", file=sys.stderr)
    return [warning]


def _write(result: Any, plan: list, overview: Path | None, slide: Any, out: Path,
           args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from ..errors import OutputExistsError
    from ..export.plan import write_export
    from ..overview import write_overview

    weighting = args.weighting or "global"  # the overview: global, as analyze draws it
    targets = [job.path for job in plan] + ([overview] if overview else [])
    existing = [p for p in targets if os.path.lexists(p)]
    unchanged: list[str] = []
    if existing and not args.overwrite:
        # a file an earlier `analyze` or `export` wrote from this store with these options
        # is byte-identical to what we would write: keep it, skip it
        same = identical_exports(result, plan, overview, slide, weighting, existing)
        unchanged = [str(p) for p in existing if p in same]
        clash = [p for p in existing if p not in same]
        if clash:
            more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
            raise OutputExistsError(f"{clash[0]}: already exists with other content{more}; "
                                    "use --overwrite to replace it, or --out to write into "
                                    "another folder")
    make_out_dir(out)
    written = [str(write_export(result, job, overwrite=args.overwrite)) for job in plan
               if str(job.path) not in unchanged]
    if overview is not None and str(overview) not in unchanged:
        written.append(str(write_overview(slide, result, overview, weighting=weighting,
                                          overwrite=args.overwrite)))
    return written, unchanged


def identical_exports(result: Any, plan: list, overview: Path | None, slide: Any,
                      weighting: str, existing: list[Path]) -> set[Path]:
    """The existing plain files among the planned outputs whose content equals what this
    export would write (rendered into a private temporary folder and compared)."""
    import filecmp
    import shutil
    import tempfile

    from ..export.plan import ExportJob, write_export
    from ..overview import write_overview

    wanted = {p for p in existing if p.is_file() and not p.is_symlink()}
    same: set[Path] = set()
    if not wanted:
        return same
    tmp = Path(tempfile.mkdtemp(prefix="napari-mran-export-check-"))
    try:
        for job in plan:
            if job.path in wanted:
                fresh = write_export(result, ExportJob(job.kind, tmp / job.path.name,
                                                       job.options))
                if filecmp.cmp(fresh, job.path, shallow=False):
                    same.add(job.path)
        if overview is not None and overview in wanted:
            fresh = write_overview(slide, result, tmp / overview.name, weighting=weighting)
            if filecmp.cmp(fresh, overview, shallow=False):
                same.add(overview)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return same
