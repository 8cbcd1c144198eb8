"""``napari-mran finetune``: fine-tune a model from the review marks of results stores.

Every option is checked before the run folder is created; a bad value, a store without
marks, a missing slide or marks made on another model (without --allow-other-model) are
exit 2 with one line and nothing left behind."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..vocab import STAIN_NORMALIZATIONS
from ._common import (Progress, UsageError, add_command, add_options, device, drain, fraction,
                      int_at_least, positive_float, print_json)

FINETUNE_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--model",), dict(required=True, metavar="M",
                        help="the model the stores were analysed with (a .safetensors, or "
                             "'demo')")),
    (("--reviewed",), dict(required=True, nargs="+", metavar="STORE",
                           help="results stores (.mran.zarr) holding review marks")),
    (("--out",), dict(required=True, metavar="RUN",
                      help="run folder (new, or existing with --resume)")),
    (("--labels",), dict(default=None, metavar="CSV",
                         help="optional slide labels (slide,label[,case]) of the reviewed "
                              "slides: adds the slide-level loss")),
    (("--slides",), dict(default=None, metavar="DIR",
                         help="folder the --labels slide column is relative to (default: "
                              "the CSV's folder)")),
    (("--resume",), dict(action="store_true",
                         help="continue an interrupted run (--epochs may be raised)")),
    (("--epochs",), dict(type=int_at_least(1), default=5)),
    (("--lr",), dict(type=positive_float, default=1e-4)),
    (("--batch-size",), dict(type=int_at_least(1), default=4, help="bags per upstream step")),
    (("--seed",), dict(type=int_at_least(0), default=0)),
    (("--freeze-backbone",), dict(action="store_true",
                                  help="keep the ResNet trunk as it is (only the classifier "
                                       "heads learn); default: the whole model learns")),
    (("--allow-other-model",), dict(action="store_true",
                                    help="use marks made on another model's results "
                                         "(a warning instead of an error)")),
    (("--device",), dict(type=device, default="auto",
                         help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:N, mps")),
    (("--workers",), dict(type=int_at_least(1), default=2, help="bag decoding threads")),
    (("--stain-normalize",), dict(choices=STAIN_NORMALIZATIONS, default="off",
                                  help="normalise every bag to the model's stain reference "
                                       "(or one fitted on the reviewed slides)")),
    (("--stain-augment",), dict(choices=("off", "hed"), default="off",
                                help="random HED stain jitter of the bags (seeded)")),
    (("--stain-augment-sigma",), dict(type=fraction, default=0.05, metavar="S")),
    (("--stain-augment-bias",), dict(type=fraction, default=0.05, metavar="B")),
    (("--json",), dict(action="store_true", help="(the summary is always JSON)")),
    (("-q", "--quiet"), dict(action="store_true", help="no progress lines")),
]


def register(sub) -> None:
    p = add_command(sub, "finetune", "fine-tune a model from review marks",
                    "Fine-tune MODEL on the bags marked in reviewed results stores (their "
                    "labels supervise the upstream branch; --labels adds slide labels). "
                    "Writes RUN/model.safetensors whose provenance lists the reviews used. "
                    "Exit status: 0 ok, 2 bad input, 130 interrupted.")
    add_options(p, FINETUNE_OPTIONS)
    p.set_defaults(run=run)


def _config(args: argparse.Namespace) -> Any:
    from ..training.finetune import FinetuneConfig

    if args.stain_augment == "off" and (args.stain_augment_sigma != 0.05
                                        or args.stain_augment_bias != 0.05):
        raise UsageError("--stain-augment-sigma and --stain-augment-bias need "
                         "--stain-augment hed")
    if args.slides is not None and args.labels is None:
        raise UsageError("--slides needs --labels")
    try:
        return FinetuneConfig(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
            freeze_backbone=args.freeze_backbone, device=args.device, workers=args.workers,
            allow_other_model=args.allow_other_model, stain_normalize=args.stain_normalize,
            stain_augment=args.stain_augment, stain_augment_sigma=args.stain_augment_sigma,
            stain_augment_bias=args.stain_augment_bias)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..training.finetune import finetune

    cfg = _config(args)
    progress = Progress(args.quiet)

    def show(ev: Any) -> None:
        if ev.stage in ("epoch", "prepare"):
            progress.line(ev.message, final=True)
        elif ev.stage == "upstream":
            progress.line(f"{ev.message} loss {ev.loss:.3f}")

    command = "napari-mran " + " ".join(sys.argv[1:])
    summary = drain(finetune(args.model, args.reviewed, args.out, cfg, labels_csv=args.labels,
                             slides_dir=args.slides, resume=args.resume, command=command), show)
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print_json({"model": str(summary.model_path), "epochs": len(summary.history),
                "last": summary.history[-1] if summary.history else None,
                "reviews": [{"store": r["store"], "reviewers": r["reviewers"],
                             "bag_labels": r["counts"]["bag_labels"]} for r in summary.reviews],
                "warnings": summary.warnings})
    return 0
