"""``napari-mran evaluate``: metrics, ROC and the top-k/top-m faithfulness table on
labelled slides."""

from __future__ import annotations

import argparse

from ._common import (EXIT_INTERRUPTED, Progress, add_analysis_options, add_command, add_model,
                      add_output_options, analysis_options, model_spec, print_json)
from .predict import DEMO_LINE, report_failures, run_cohort_generator


def _limit(text: str) -> int | str:
    from ._common import int_at_least

    return "all" if text.strip().lower() == "all" else int_at_least(1)(text)


def register(sub) -> None:
    p = add_command(
        sub, "evaluate", "metrics, ROC and the top-k/top-m faithfulness table on labelled slides",
        "Predict the slides listed in a labels CSV (slide,label,case), compute "
                    "accuracy/AUC/F1/precision/sensitivity/specificity, draw the ROC curve and "
                    "re-predict every slide from its top-k bags and top-m patches only. "
                    "Exit status: 0 ok, 1 some slides failed, 2 bad input, 130 interrupted.")
    add_model(p)
    p.add_argument("--slides", required=True, metavar="DIR",
                   help="folder the 'slide' column of the labels is relative to")
    p.add_argument("--labels", required=True, metavar="CSV",
                   help="CSV with the columns slide,label[,case] (label = class index)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="a 'napari-mran predict' output folder whose verified stores are "
                        "reused (same model, options and slide file)")
    p.add_argument("--k", nargs="+", type=_limit, default=[1, 2, 4, 8, "all"], metavar="K",
                   help="bag limits (top-k bags by attention; 'all' = every bag); "
                        "default: 1 2 4 8 all")
    p.add_argument("--m", nargs="+", type=_limit, default=[4, 16, 64], metavar="M",
                   help="patch limits per bag (1..64; an 'all' column, the model's own "
                        "attention, is always added); default: 4 16 64")
    add_analysis_options(p)
    add_output_options(p, overwrite_help="replace earlier evaluation outputs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    spec = model_spec(args)
    options = analysis_options(args)
    gen = evaluate(spec, args.slides, args.labels, args.out, options, k_list=args.k,
                   m_list=args.m, results_dir=args.results, overwrite=args.overwrite)
    report = run_cohort_generator(gen, Progress(args.quiet, total=0, desc="evaluate"),
                                  "no evaluation outputs were written")
    if report is None:
        return EXIT_INTERRUPTED
    if args.json:
        print_json({k: report[k] for k in ("out_dir", "files", "n_slides", "n_evaluated",
                                           "failed", "sources", "metrics", "faithfulness")})
    else:
        m = report["metrics"]

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        print(f"{report['n_evaluated']} of {report['n_slides']} slides evaluated: "
              f"accuracy {fmt(m['accuracy'])}, AUC {fmt(m['auc'])}, F1 {fmt(m['f1'])}, "
              f"sensitivity {fmt(m['sensitivity'])}, specificity {fmt(m['specificity'])}")
        for key, path in report["files"].items():
            print(f"{key}: {path}")
        if report.get("model_is_demo"):
            print(DEMO_LINE)
    return report_failures(report["failed"])
