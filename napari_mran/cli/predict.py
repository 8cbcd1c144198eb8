"""``napari-mran predict SLIDE... --model M --out DIR``: a cohort on one machine or a
dask.distributed cluster; one verified store per slide and predictions.csv."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import (EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, Progress, UsageError,
                      add_analysis_options, add_command, add_model, add_output_options,
                      add_roi_options, analysis_options, drain, int_at_least, model_spec,
                      print_json, roi_classes)

DEMO_LINE = "model: DEMO (trained on synthetic slides; not for diagnosis)"


def _scheduler(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(f"expected an address like tcp://host:8786, got "
                                         f"{text!r}")
    return text


def register(sub) -> None:
    p = add_command(
        sub, "predict", "predict many slides (one results store each + predictions.csv)",
        "Analyse every slide into OUT/<slide stem>.mran.zarr and write "
                    "OUT/predictions.csv. Slides whose store in OUT is verified complete and "
                    "was made by the same model and options are skipped, so an interrupted "
                    "run resumes where it stopped. Exit status: 0 ok, 1 some slides failed, "
                    "2 bad input, 130 interrupted.")
    p.add_argument("slides", nargs="+", metavar="SLIDE",
                   help="slide files, or folders of slide files (not recursive)")
    add_model(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int_at_least(0), default=1, metavar="N",
                       help="worker processes of a local dask cluster; 0 or 1 = run in this "
                            "process without dask (default: 1)")
    where.add_argument("--scheduler", type=_scheduler, default=None, metavar="tcp://HOST:PORT",
                       help="use a running dask scheduler (workers must see the same paths; "
                            "start them with --nthreads 1)")
    p.add_argument("--gpu-resource", action="store_true",
                   help="each slide needs the dask resource GPU=1 (workers started with "
                        "--resources GPU=1)")
    p.add_argument("--no-embeddings", action="store_true",
                   help="do not keep the bag embeddings in the stores")
    add_analysis_options(p)
    add_roi_options(p, per_slide=True)
    add_output_options(p, overwrite_help="replace earlier outputs that were made differently")
    p.set_defaults(run=run)


def run_cohort_generator(gen: Any, progress: Progress, interrupted_note: str) -> Any:
    """Drain a cohort/evaluation generator: slide events as a count, the rest as lines.
    None after Ctrl-C (the generator is closed: pending work cancelled, lock released)."""
    def show(ev: Any) -> None:
        if ev.stage == "slide":
            progress.count(ev.done, ev.total, ev.message, important=ev.status == "failed")
        else:
            progress.line(ev.message, final=True)

    try:
        return drain(gen, show)
    except KeyboardInterrupt:
        progress.close()
        print(f"interrupted: {interrupted_note}", file=sys.stderr)
        return None
    finally:
        progress.close()


def report_failures(failed: list[dict[str, Any]]) -> int:
    for f in failed:
        print(f"failed: {f['slide']}: {f['error']}: {f['message']}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _regions(args: argparse.Namespace) -> dict[str, Any] | None:
    """{slide: Region} of ``--roi-dir`` (every file read and checked against its slide
    before the output folder is touched), or None."""
    from ..batch.regions import regions_from_dir
    from ..batch.slides import expand_slides
    from ..slide import open_slide

    classes = roi_classes(args)
    if not args.roi_dir:
        return None
    slides = expand_slides(args.slides)
    regions = regions_from_dir(args.roi_dir, slides, classes, missing=args.roi_missing)
    for slide, region in regions.items():
        with open_slide(slide, mpp=args.mpp) as opened:
            regions[slide] = region.check_slide(*opened.dimensions)
    return regions


def run(args: argparse.Namespace) -> int:
    from ..cohort import predict_cohort

    spec = model_spec(args)
    options = analysis_options(args)
    if args.workers is None:
        raise UsageError("--workers: expected a number")
    regions = _regions(args)
    gen = predict_cohort(args.slides, spec, args.out, options, workers=args.workers,
                         regions=regions,
                         scheduler=args.scheduler,
                         resources={"GPU": 1} if args.gpu_resource else None,
                         save_embeddings=not args.no_embeddings, overwrite=args.overwrite)
    summary = run_cohort_generator(gen, Progress(args.quiet, total=0, desc="predict"),
                                   "finished stores are complete and the next run with the "
                                   "same options skips them")
    if summary is None:
        return EXIT_INTERRUPTED
    if args.json:
        print_json({k: v for k, v in summary.items() if k != "records"})
    else:
        print(f"{summary['done']} analysed, {summary['skipped']} skipped (verified stores), "
              f"{len(summary['failed'])} failed; {summary['n_slides']} slides")
        print(f"predictions: {summary['predictions_csv']}")
        if summary.get("model_is_demo"):
            print(DEMO_LINE)
    for s in summary["set_aside"]:
        print(f"note: invalid store {s['store']} moved aside to {s['moved_to']} "
              f"({s['reason']})", file=sys.stderr)
    return report_failures(summary["failed"])
