"""``napari-mran train``: train MRAN on labelled slides (one run, or repeated splits).

Every option is checked before the run folder is created; a bad value is exit 2 with
one line and nothing left behind."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..vocab import STAIN_NORMALIZATIONS, TISSUE_METHODS
from ._common import (
    Progress,
    UsageError,
    add_command,
    add_options,
    device,
    drain,
    fraction,
    int_at_least,
    positive_float,
    print_json,
)


TRAIN_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--slides",), dict(required=True, help="folder holding the slides")),
    (("--labels",), dict(required=True, help="labels.csv with columns slide,label,case")),
    (("--out",), dict(required=True, help="run folder (new, or existing with --resume)")),
    (
        ("--resume",),
        dict(
            action="store_true",
            help="continue an interrupted run (--epochs may be raised); with repeats: "
            "finished repeats are verified and skipped",
        ),
    ),
    (("--epochs",), dict(type=int_at_least(1), default=10)),
    (
        ("--width",),
        dict(type=positive_float, default=1.0, help="ResNet width multiplier (1 = ResNet-18)"),
    ),
    (("--lr",), dict(type=positive_float, default=1e-4)),
    (("--batch-size",), dict(type=int_at_least(1), default=4, help="bags per upstream step")),
    (("--seed",), dict(type=int_at_least(0), default=0)),
    (
        ("--folds",),
        dict(
            type=int_at_least(3),
            default=5,
            help="case-level folds (one tests, the next validates; >= 3)",
        ),
    ),
    (("--fold",), dict(type=int_at_least(0), default=0, help="test fold (the next one validates)")),
    (
        ("--split-file",),
        dict(default=None, help="CSV slide,split (train/val/test) instead of folds"),
    ),
    (
        ("--split-ratio",),
        dict(
            default=None,
            metavar="A:B:C",
            help="repeated Monte-Carlo splits by case, stratified by label, in the ratio "
            "train:val:test (the authors: 3:1:1 BRCA/STAD, 2:1:2 LUSC); each repeat "
            "is a run in OUT/repeat-<i>/, then OUT/repeats-summary.{csv,md}",
        ),
    ),
    (
        ("--split-dir",),
        dict(
            default=None,
            metavar="DIR",
            help="the authors' split CSVs: DIR/<i>/case_{train,val,test}.csv (their "
            "csv/<cohort>/split/<ratio>/), one repeat per numbered folder",
        ),
    ),
    (
        ("--repeats",),
        dict(
            type=int_at_least(1),
            default=None,
            metavar="N",
            help="number of repeats (default 5 with --split-ratio, every folder with "
            "--split-dir); repeat i's split seed derives from --seed and i",
        ),
    ),
    (
        ("--allow-missing-slides",),
        dict(
            action="store_true",
            help="with --split-dir: train without the split files' slides that match "
            "no slide of --labels (they are reported); default: an error",
        ),
    ),
    (("--bag-px",), dict(type=int_at_least(32), default=2048)),
    (
        (
            "--tissue",
            "--tissue-method",
        ),
        dict(
            dest="tissue",
            choices=TISSUE_METHODS,
            default="reference",
            help="tissue rule (see analyze)",
        ),
    ),
    (("--max-bags-per-slide",), dict(type=int_at_least(1), default=None)),
    (("--class-names",), dict(default=None, help="comma-separated, in label order")),
    (
        ("--device",),
        dict(type=device, default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:N, mps"),
    ),
    (("--workers",), dict(type=int_at_least(1), default=4, help="bag decoding threads")),
    (
        ("--init-backbone",),
        dict(
            default=None,
            metavar="PATH",
            help="initialise the CNN from a torchvision-layout ResNet-18 state dict "
            "(safetensors or .pth, loaded safely; width 1 only); its sha256 is "
            "recorded. MRAN feeds RGB/255 without mean/std normalisation",
        ),
    ),
    (
        ("--stain-normalize",),
        dict(
            choices=STAIN_NORMALIZATIONS,
            default="off",
            help="normalise every bag's stains to a reference fitted on the training "
            "slides (stored in the model; analysis with the same --stain-normalize uses "
            "it): off (default), macenko, reinhard (docs/stain.md)",
        ),
    ),
    (
        ("--stain-augment",),
        dict(
            choices=("off", "hed"),  # training.config.STAIN_AUGMENTATIONS
            default="off",
            help="random HED stain jitter of the training bags (seeded; docs/stain.md)",
        ),
    ),
    (
        ("--stain-augment-sigma",),
        dict(
            type=fraction,
            default=0.05,
            metavar="S",
            help="HED jitter: each stain's concentration x U[1-S, 1+S] (default 0.05, "
            "Tellez et al. 2019 'HED-light')",
        ),
    ),
    (
        ("--stain-augment-bias",),
        dict(
            type=fraction,
            default=0.05,
            metavar="B",
            help="HED jitter: + U[-B, B] optical density per stain (default 0.05)",
        ),
    ),
    (("--json",), dict(action="store_true", help="(the summary is always JSON)")),
    (
        (
            "-q",
            "--quiet",
        ),
        dict(action="store_true", help="no progress lines"),
    ),
]


def register(sub) -> None:
    p = add_command(sub, "train", "train MRAN on labelled slides (two-branch scheme)")
    add_options(p, TRAIN_OPTIONS)
    p.set_defaults(run=run)


def _check(args: argparse.Namespace) -> bool:
    """Option combinations; True for a repeated-splits run."""
    from ..training import parse_ratio

    repeated = args.split_ratio is not None or args.split_dir is not None
    if args.split_ratio is not None and args.split_dir is not None:
        raise UsageError("--split-ratio and --split-dir exclude each other")
    if repeated and args.split_file:
        raise UsageError("--split-file excludes --split-ratio and --split-dir")
    if not repeated and (args.repeats is not None or args.allow_missing_slides):
        raise UsageError("--repeats and --allow-missing-slides need --split-ratio or --split-dir")
    if args.split_ratio is not None:
        parse_ratio(args.split_ratio)
    if args.stain_augment == "off" and (args.stain_augment_sigma != 0.05
                                        or args.stain_augment_bias != 0.05):
        raise UsageError("--stain-augment-sigma and --stain-augment-bias need "
                         "--stain-augment hed")
    if not repeated and not args.split_file and args.fold >= args.folds:
        raise UsageError(f"--fold must be < --folds ({args.folds}), got {args.fold}")
    return repeated


def _config(args: argparse.Namespace) -> Any:
    from ..training import TrainConfig

    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    try:
        return TrainConfig(
            epochs=args.epochs,
            width=args.width,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            n_folds=args.folds,
            fold=args.fold,
            split_file=args.split_file,
            bag_px=args.bag_px,
            tissue_method=args.tissue,
            max_bags_per_slide=args.max_bags_per_slide,
            device=args.device,
            workers=args.workers,
            init_backbone=args.init_backbone,
            class_names=names,
            stain_normalize=args.stain_normalize,
            stain_augment=args.stain_augment,
            stain_augment_sigma=args.stain_augment_sigma,
            stain_augment_bias=args.stain_augment_bias,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..training import train, train_repeats

    repeated = _check(args)
    cfg = _config(args)
    progress = Progress(args.quiet)

    def show(ev: Any) -> None:
        if ev.stage in ("epoch", "prepare", "test"):
            progress.line(ev.message, final=True)
        elif ev.stage == "upstream":
            eta = f", ETA {ev.eta_s:.0f} s" if ev.eta_s is not None else ""
            progress.line(f"{ev.message} loss {ev.loss:.3f}{eta}")

    command = "napari-mran " + " ".join(sys.argv[1:])
    if repeated:
        from dataclasses import replace

        def show_repeat(rev: Any) -> None:
            if rev.event is not None:
                show(replace(rev.event, message=rev.message))
            elif rev.stage != "summary":
                progress.line(rev.message, final=True)

        res = drain(
            train_repeats(
                args.slides,
                args.labels,
                args.out,
                cfg,
                repeats=args.repeats,
                ratio=args.split_ratio,
                split_dir=args.split_dir,
                allow_missing=args.allow_missing_slides,
                resume=args.resume,
                command=command,
            ),
            show_repeat,
        )
        print(res.summary_md.read_text(), file=sys.stderr)
        print_json(
            {
                "summary_csv": str(res.summary_csv),
                "summary_md": str(res.summary_md),
                "repeats": len(res.runs),
                "runs": [str(r) for r in res.runs],
                "test": {
                    k: {"mean": v["mean"], "sd": v["sd"], "n": v["n"]}
                    for k, v in res.metrics.items()
                },
            }
        )
        return 0
    summary = drain(
        train(args.slides, args.labels, args.out, cfg, resume=args.resume, command=command), show
    )
    test = (summary.test or {}).get("metrics")
    print_json(
        {
            "model": str(summary.model_path),
            "best_epoch": summary.best_epoch,
            "best": summary.best_metrics.get("val", summary.best_metrics.get("train")),
            "test": None
            if test is None
            else {
                k: test.get(k) for k in ("n", "accuracy", "auc", "f1", "sensitivity", "specificity")
            },
        }
    )
    return 0
