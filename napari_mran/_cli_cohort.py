"""``napari-mran predict`` and ``napari-mran evaluate``: thin front ends over
:func:`napari_mran.cohort.predict_cohort` and :func:`napari_mran.evaluation.evaluate`.

Exit status: 0 success, 1 some slides failed (the others finished and were written),
2 bad input (a clear ``error: <file>: <reason>`` line, no traceback), 130 interrupted.
Progress goes to stderr (a tqdm bar on a terminal, plain lines otherwise); the final
summary goes to stdout (``--json`` for machine-readable output).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import MRANError

__all__ = ["register"]

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


# --------------------------------------------------------------------------- argument types


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _batch_size(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _limit(text: str) -> int | str:
    return "all" if text.strip().lower() == "all" else _positive_int(text)


def _scheduler(text: str) -> str:
    if "://" not in text:
        raise argparse.ArgumentTypeError(f"expected an address like tcp://host:8786, got {text!r}")
    return text


# --------------------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar on a terminal, else one plain line per event (always on stderr)."""

    def __init__(self, total: int, desc: str, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        if quiet:
            return
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="slide", file=sys.stderr,
                                dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def event(self, done: int, total: int, message: str, important: bool = False) -> None:
        if self.quiet and not important:
            return
        if self.bar is not None:
            if self.bar.total != total:
                self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(message[-60:], refresh=False)
            self.bar.refresh()
            if important:
                self.bar.write(message, file=sys.stderr)
        else:
            print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _drain(gen, progress: _Progress):
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if ev.stage == "plan":
            progress.note(ev.message)
        elif ev.stage == "slide":
            progress.event(ev.done, ev.total, ev.message, important=ev.status == "failed")
        else:
            progress.note(ev.message)


def _run(gen, progress: _Progress, interrupted_note: str) -> tuple[int, Any]:
    try:
        return EXIT_OK, _drain(gen, progress)
    except MRANError as exc:
        progress.close()
        return _error(str(exc)), None
    except KeyboardInterrupt:
        gen.close()  # cancels pending work, closes the cluster, releases the lock
        progress.close()
        print(f"interrupted: {interrupted_note}", file=sys.stderr)
        return EXIT_INTERRUPTED, None
    finally:
        progress.close()


# --------------------------------------------------------------------------- predict


def _analysis_kwargs(args) -> dict[str, Any]:
    return {"device": args.device, "batch_size": args.batch_size, "bag_um": args.bag_um,
            "tissue_method": args.tissue, "mpp": args.mpp,
            "max_failed_fraction": args.max_failed_fraction, "edge": args.edge,
            "allow_non_brightfield": args.allow_non_brightfield}


def _model(args) -> str:
    """``--model``, required (a clear error naming ``--model demo``); warns for the demo."""
    from .cli import DEMO_NOTE, model_spec

    spec = model_spec(args)
    if spec == "demo":
        print(f"warning: --model demo: {DEMO_NOTE}", file=sys.stderr)
    return spec


def _cmd_predict(args) -> int:
    from .cohort import predict_cohort

    try:
        gen = predict_cohort(
            args.slides, _model(args), args.out, workers=args.workers, scheduler=args.scheduler,
            resources={"GPU": 1} if args.gpu_resource else None,
            save_embeddings=not args.no_embeddings, overwrite=args.overwrite,
            **_analysis_kwargs(args))
    except MRANError as exc:
        return _error(str(exc))
    progress = _Progress(0, "predict", args.quiet)
    code, summary = _run(gen, progress, "finished stores are complete and the next run "
                                        "with the same options skips them")
    if summary is None:
        return code
    if args.json:
        from .results import strict_json

        clean, _ = strict_json({k: v for k, v in summary.items() if k != "records"})
        print(json.dumps(clean, indent=2, allow_nan=False))
    else:
        print(f"{summary['done']} analysed, {summary['skipped']} skipped (verified stores), "
              f"{len(summary['failed'])} failed; {summary['n_slides']} slides")
        print(f"predictions: {summary['predictions_csv']}")
        if summary.get("model_is_demo"):
            print("model: DEMO (trained on synthetic slides; not for diagnosis)")
    for f in summary["failed"]:
        print(f"failed: {f['slide']}: {f['error']}: {f['message']}", file=sys.stderr)
    for s in summary["set_aside"]:
        print(f"note: invalid store {s['store']} moved aside to {s['moved_to']} "
              f"({s['reason']})", file=sys.stderr)
    return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK


# --------------------------------------------------------------------------- evaluate


def _cmd_evaluate(args) -> int:
    from .evaluation import evaluate

    try:
        gen = evaluate(_model(args), args.slides, args.labels, args.out, k_list=args.k,
                       m_list=args.m, results_dir=args.results, overwrite=args.overwrite,
                       **_analysis_kwargs(args))
    except MRANError as exc:
        return _error(str(exc))
    progress = _Progress(0, "evaluate", args.quiet)
    code, report = _run(gen, progress, "no evaluation outputs were written")
    if report is None:
        return code
    if args.json:
        from .results import strict_json

        clean, _ = strict_json({k: report[k] for k in ("out_dir", "files", "n_slides",
                                                       "n_evaluated", "failed", "sources",
                                                       "metrics", "faithfulness")})
        print(json.dumps(clean, indent=2, allow_nan=False))
    else:
        m = report["metrics"]

        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"

        print(f"{report['n_evaluated']} of {report['n_slides']} slides evaluated: "
              f"accuracy {fmt(m['accuracy'])}, AUC {fmt(m['auc'])}, F1 {fmt(m['f1'])}, "
              f"sensitivity {fmt(m['sensitivity'])}, specificity {fmt(m['specificity'])}")
        for key, path in report["files"].items():
            print(f"{key}: {path}")
        if report.get("model_is_demo"):
            print("model: DEMO (trained on synthetic slides; not for diagnosis)")
    for f in report["failed"]:
        print(f"failed: {f['slide']}: {f['error']}: {f['message']}", file=sys.stderr)
    return EXIT_SOME_FAILED if report["failed"] else EXIT_OK


# --------------------------------------------------------------------------- parsers


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("analysis options")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:N, mps (default: auto)")
    g.add_argument("--batch-size", type=_batch_size, default="auto", metavar="N|auto",
                   help="bags per forward pass (default: auto; halved on CUDA out-of-memory)")
    g.add_argument("--bag-um", type=_positive_float, default=None, metavar="UM",
                   help="bag side in µm (needs the slides' MPP); default: the model's bag in px")
    g.add_argument("--tissue", choices=("reference", "exact", "otsu"), default="reference",
                   help="tissue rule (default: reference, MRAN's white-fraction rule at <= 4x "
                        "on candidate bags; exact: the same rule on level 0 for every bag)")
    g.add_argument("--mpp", type=_positive_float, default=None,
                   help="override the µm/px of level 0 of every slide")
    g.add_argument("--max-failed-fraction", type=float, default=None, metavar="F",
                   help="fail a slide when more than this fraction of its bags cannot be "
                        "decoded (default 0.1)")
    g.add_argument("--edge", choices=("pad", "drop"), default="pad",
                   help="partial bags at the right/bottom edges: pad (default: analysed, "
                        "white outside the slide) or drop (the authors' rule)")
    g.add_argument("--allow-non-brightfield", action="store_true",
                   help="analyse slides that fail the brightfield H&E check (recorded in "
                        "provenance)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace earlier outputs that were made differently")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (failures are still reported)")


def register(subparsers) -> None:
    """Add the ``predict`` and ``evaluate`` subcommands to an argparse subparsers object."""
    pred = subparsers.add_parser(
        "predict", help="predict many slides (one results store each + predictions.csv)",
        description="Analyse every slide into OUT/<slide stem>.mran.zarr and write "
                    "OUT/predictions.csv. Slides whose store in OUT is verified complete and "
                    "was made by the same model and options are skipped, so an interrupted "
                    "run resumes where it stopped. Exit status: 0 ok, 1 some slides failed, "
                    "2 bad input, 130 interrupted.")
    pred.add_argument("slides", nargs="+", metavar="SLIDE",
                      help="slide files, or folders of slide files (not recursive)")
    pred.add_argument("--model", default=None, metavar="M",
                      help="required: model checkpoint (.safetensors or reference .pth), or "
                           "'demo' (the bundled demo model; not for diagnosis)")
    pred.add_argument("--out", required=True, metavar="DIR", help="output folder")
    where = pred.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_non_negative_int, default=1, metavar="N",
                       help="worker processes of a local dask cluster; 0 or 1 = run in this "
                            "process without dask (default: 1)")
    where.add_argument("--scheduler", type=_scheduler, default=None, metavar="tcp://HOST:PORT",
                       help="use a running dask scheduler (workers must see the same paths; "
                            "start them with --nthreads 1)")
    pred.add_argument("--gpu-resource", action="store_true",
                      help="each slide needs the dask resource GPU=1 (workers started with "
                           "--resources GPU=1)")
    pred.add_argument("--no-embeddings", action="store_true",
                      help="do not keep the bag embeddings in the stores")
    _add_analysis_options(pred)
    pred.set_defaults(func=_cmd_predict)

    ev = subparsers.add_parser(
        "evaluate", help="metrics, ROC and the top-k/top-m faithfulness table on labelled slides",
        description="Predict the slides listed in a labels CSV (slide,label,case), compute "
                    "accuracy/AUC/F1/precision/sensitivity/specificity, draw the ROC curve and "
                    "re-predict every slide from its top-k bags and top-m patches only. "
                    "Exit status: 0 ok, 1 some slides failed, 2 bad input, 130 interrupted.")
    ev.add_argument("--model", default=None, metavar="M",
                    help="required: model checkpoint, or 'demo' (the bundled demo model)")
    ev.add_argument("--slides", required=True, metavar="DIR",
                    help="folder the 'slide' column of the labels is relative to")
    ev.add_argument("--labels", required=True, metavar="CSV",
                    help="CSV with the columns slide,label[,case] (label = class index)")
    ev.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ev.add_argument("--results", default=None, metavar="DIR",
                    help="a 'napari-mran predict' output folder whose verified stores are "
                         "reused (same model, options and slide file)")
    ev.add_argument("--k", nargs="+", type=_limit, default=[1, 2, 4, 8, "all"], metavar="K",
                    help="bag limits (top-k bags by attention; 'all' = every bag); "
                         "default: 1 2 4 8 all")
    ev.add_argument("--m", nargs="+", type=_limit, default=[4, 16, 64], metavar="M",
                    help="patch limits per bag (1..64; an 'all' column, the model's own "
                         "attention, is always added); default: 4 16 64")
    _add_analysis_options(ev)
    ev.set_defaults(func=_cmd_evaluate)


def _standalone(argv: list[str] | None = None) -> int:  # pragma: no cover - manual use
    parser = argparse.ArgumentParser(prog="napari-mran")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_standalone())
