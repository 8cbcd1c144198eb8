"""MRAN's two-branch alternating training (docs/mran-spec.md section 4) as a generator.

Each epoch: (1) upstream epoch over all training bags (shuffled, random horizontal flip,
bag weights w, ramped patch/cell losses), keeping each bag's embedding; (2) downstream
epoch over the training slides; (3) new bag weights w_i = gamma_i * N; (4) validation on
the validation slides; best model by validation accuracy; a resumable checkpoint.

All randomness is derived from (seed, epoch), so a run resumed from its last checkpoint
reaches the same weights as an uninterrupted run with the same seed (on the same
device and thread count).

The steps live in their own modules: :mod:`.config` (options, events, summary),
:mod:`.run_folder` (folder checks, checkpoint, finished runs), :mod:`.state` (what the
steps share), :mod:`.epochs` (the upstream and downstream epochs), :mod:`.evaluate`
(validation, best epoch, test split), :mod:`.provenance` and :mod:`.report`. This module
sets a run up (model, optimisers, schedulers; restored on resume) and runs the steps.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Generator

import numpy as np

from .config import CHECKPOINT, MODEL, TEST_METRICS, EpochEvent, TrainConfig, TrainSummary
from .data import BagReader, SlideBags, slide_bags
from .epochs import _n_used, _rng, downstream_epoch, upstream_epoch
from .evaluate import _binary_metrics, _test_document, epoch_record, test_best_model, update_best
from .provenance import _with_provenance
from .report import _epoch_line, _plot, _test_line, log_epoch, rewrite_metrics
from .run_folder import (_BEFORE_FIRST_CHECKPOINT, _CHECKPOINT_KEYS,
                         _killed_before_first_checkpoint, _load_checkpoint, _same_options,
                         _write_json, check_run_folder, finished_run, write_checkpoint,
                         write_text_atomic)
from .splits import (LabelledSlide, LabelsError, make_splits, read_labels, read_split_file,
                     write_splits)
from .stain import training_stain
from .state import RunContext, RunState

__all__ = [
    "CHECKPOINT", "MODEL", "TEST_METRICS", "EpochEvent", "TrainConfig", "TrainSummary",
    "downstream_scheduler", "finished_run", "train", "write_text_atomic",
    # the helpers that lived here before the steps had their own modules
    "SlideBags", "_BEFORE_FIRST_CHECKPOINT", "_CHECKPOINT_KEYS", "_binary_metrics",
    "_epoch_line", "_killed_before_first_checkpoint", "_load_checkpoint", "_n_used", "_plot",
    "_rng", "_same_options", "_test_document", "_test_line", "_with_provenance", "_write_json",
]


def downstream_scheduler(optimizer, milestone: int = 5, *, saved_state: dict | None = None):
    """The downstream learning-rate schedule of the authors' code: the LR is halved once,
    from epoch ``milestone`` on (``MultiStepLR(milestones=[milestone], gamma=0.5)``,
    stepped once per epoch): epochs 0..milestone-1 use the base LR, every later epoch half.

    ``saved_state`` is the scheduler state of a checkpoint being resumed. A run started by
    an older napari-mran saved a ``StepLR`` (x0.5 every ``milestone`` epochs); such a run
    keeps its ``StepLR``, so that resuming it stays exact. The caller loads the state.
    """
    import torch

    if saved_state is not None and "step_size" in saved_state and "milestones" not in saved_state:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(saved_state["step_size"]),
                                               gamma=float(saved_state.get("gamma", 0.5)))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=0.5)


def train(slides_dir: str | os.PathLike, labels_csv: str | os.PathLike,
          out_dir: str | os.PathLike, config: TrainConfig | None = None, *,
          resume: bool = False, command: str | None = None,
          bag_cache: str | os.PathLike | None = None,
          ) -> Generator[EpochEvent, None, TrainSummary]:
    """Train MRAN; yields :class:`EpochEvent`, returns a :class:`TrainSummary`.

    ``out_dir`` (the run folder) must be new or empty, unless ``resume`` is True and it
    holds a checkpoint of the same configuration (or only what a run writes before its
    first checkpoint: then it starts over). ``bag_cache``: the folder of the tissue-bag
    cache (default ``<run>/bags``; entries are keyed by slide file and tissue options, so
    runs may share one). After the last epoch the best model is tested on the test split:
    ``test_metrics.json`` (written last) and :attr:`TrainSummary.test`.
    """
    from ..analysis import pick_device

    cfg = config or TrainConfig()
    slides_dir, run = Path(slides_dir), Path(out_dir)
    t_start = time.perf_counter()
    rows = read_labels(labels_csv, slides_dir)
    class_names = _class_names(labels_csv, rows, cfg)
    splits = (read_split_file(cfg.split_file, rows) if cfg.split_file
              else make_splits(rows, n_folds=cfg.n_folds, fold=cfg.fold, seed=cfg.seed))
    if not splits["train"]:
        raise LabelsError(f"{labels_csv}: the training split is empty (too few cases?)")
    cfg_json = json.dumps(asdict(cfg), sort_keys=True)
    saved = check_run_folder(run, cfg, resume)  # the checkpoint to resume from, or None
    ctx = RunContext(cfg, run, labels_csv, command, t_start, rows, splits, class_names,
                     cfg_json, dev=pick_device(cfg.device))
    model, init_info = _build_model(ctx, resuming=saved is not None)
    _prepare_run_folder(ctx, resuming=saved is not None)

    yield EpochEvent(0, cfg.epochs, "prepare", message="finding tissue bags")
    _find_bags(ctx, slides_dir, Path(bag_cache) if bag_cache else run / "bags")
    yield from training_stain(ctx, saved)  # the cohort's stain reference; bag stain steps
    rs = _run_state(ctx, model, saved, init_info)
    if saved is not None:
        yield from _restore(ctx, rs, saved)
    try:
        for epoch in range(rs.start_epoch, cfg.epochs):
            yield from _epoch(ctx, rs, epoch)
        # the best model on the test split (written last: it marks a finished run)
        test_doc = yield from test_best_model(ctx, rs)
    finally:
        ctx.bag_reader().close()
    return TrainSummary(run, run / MODEL, rs.best["epoch"], rs.best["metrics"], rs.history,
                        test_doc)


def _class_names(labels_csv: str | os.PathLike, rows: list[LabelledSlide],
                 cfg: TrainConfig) -> list[str]:
    """The class names of the run (``cfg.class_names``, or defaults for the labels)."""
    n_classes = max(r.label for r in rows) + 1
    if n_classes < 2:
        raise LabelsError(f"{labels_csv}: needs at least two classes (labels 0 and 1)")
    class_names = cfg.class_names or (["normal", "tumour"] if n_classes == 2
                                      else [f"class_{i}" for i in range(n_classes)])
    if cfg.class_names and n_classes > len(cfg.class_names):
        bad = next(r for r in rows if r.label >= len(cfg.class_names))
        raise LabelsError(f"{labels_csv}: label {bad.label} of {bad.slide} is outside the "
                          f"{len(cfg.class_names)} classes ({', '.join(cfg.class_names)}: "
                          f"labels 0-{len(cfg.class_names) - 1})")
    if len(class_names) != n_classes:
        raise LabelsError(f"{labels_csv}: {len(class_names)} class names for {n_classes} "
                          "classes")
    return class_names


def _build_model(ctx: RunContext, *, resuming: bool) -> tuple[Any, dict[str, str] | None]:
    """The model (seeded; its trunk from ``cfg.init_backbone`` unless resuming) on the
    run's device, and the record of the initial trunk weights (None without)."""
    import torch

    from ..model import MRAN, MRANConfig, init_backbone_from

    cfg = ctx.cfg
    torch.manual_seed(cfg.seed)
    ctx.model_cfg = MRANConfig(
        n_classes=ctx.n_classes, class_names=tuple(ctx.class_names), width=cfg.width,
        threshold=cfg.threshold, bag_px=cfg.bag_px,
        tiling={"bag_px": cfg.bag_px, "tissue_method": cfg.tissue_method,
                "input_px": 1024, "read": "downsample-2 level or level 0 reduced 2x"})
    model = MRAN(ctx.model_cfg)
    init_info: dict[str, str] | None = None
    if cfg.init_backbone and not resuming:
        # before the run folder is made: a file that does not fit fails the run cleanly
        init_path = Path(cfg.init_backbone).expanduser()
        init_info = {"path": str(init_path.resolve()),
                     "sha256": init_backbone_from(model, init_path)}
    model = model.to(ctx.dev)
    if ctx.dev.type != "mps":
        # torch's stub of Module.to lacks memory_format
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model, init_info


def _prepare_run_folder(ctx: RunContext, *, resuming: bool) -> None:
    """The run folder with train_config.json and splits.csv."""
    run = ctx.run
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(ctx.cfg_json)
    write_splits(ctx.splits, run / "splits.csv")
    if not resuming:  # a run killed before its first checkpoint starts over: no stale lines
        (run / "metrics.jsonl").unlink(missing_ok=True)


def _find_bags(ctx: RunContext, slides_dir: Path, cache: Path) -> None:
    """The tissue bags of every split (cached in ``cache``; slides without bags are left
    out), the class weights of the losses, the bag reader and the upstream steps per epoch."""
    from ..model.losses import class_weights_from_counts

    cfg, n_classes = ctx.cfg, ctx.n_classes
    for split in ("train", "val", "test"):
        ctx.bags[split] = []
        for item in ctx.splits[split]:
            sb = slide_bags(item, slides_dir, cache, bag_px=cfg.bag_px,
                            tissue_method=cfg.tissue_method)
            if len(sb.boxes):
                ctx.bags[split].append(sb)
    train_slides = ctx.train_slides
    if not train_slides:
        raise LabelsError(f"{ctx.labels_csv}: no training slide has tissue bags")
    counts = [sum(1 for s in train_slides if s.item.label == c) for c in range(n_classes)]
    if min(counts) == 0:
        empty = [ctx.class_names[c] for c in range(n_classes) if counts[c] == 0]
        raise LabelsError(f"{ctx.labels_csv}: no training slide with tissue bags for class(es) "
                          f"{', '.join(empty)} (per-class slide counts {counts}); add slides, "
                          "change the split, or check the tissue method")
    ctx.class_w = class_weights_from_counts(counts).to(ctx.dev)
    ctx.reader = BagReader(bag_px=cfg.bag_px, input_px=ctx.model_cfg.input_px,
                           workers=cfg.workers)
    n_train_bags = sum(_n_used(s, cfg) for s in train_slides)
    ctx.steps_per_epoch = math.ceil(n_train_bags / cfg.batch_size)


def _run_state(ctx: RunContext, model: Any, saved: dict[str, Any] | None,
               init_info: dict[str, str] | None) -> RunState:
    """The run's fresh state: Adam per branch, the upstream one-cycle schedule over all
    steps, the downstream schedule (of the saved run's kind when resuming), bag weights 1."""
    import torch

    cfg = ctx.cfg
    opt_up = torch.optim.Adam(model.upstream.parameters(), lr=cfg.lr)
    opt_down = torch.optim.Adam(model.downstream.parameters(), lr=cfg.lr)
    sched_up = torch.optim.lr_scheduler.OneCycleLR(
        opt_up, max_lr=cfg.lr, total_steps=max(1, ctx.steps_per_epoch * cfg.epochs))
    saved_sched = saved["sched_down"] if saved is not None else None
    sched_down = downstream_scheduler(opt_down, cfg.step_lr_after, saved_state=saved_sched)
    scaler = torch.amp.GradScaler("cuda") if ctx.use_amp else None
    weights = {s.path: np.ones(len(s.boxes), np.float32) for s in ctx.train_slides}
    return RunState(model, opt_up, opt_down, sched_up, sched_down, scaler, weights,
                    init_info=init_info)


def _restore(ctx: RunContext, rs: RunState, saved: dict[str, Any],
             ) -> Generator[EpochEvent, None, None]:
    """Load a checkpoint into the run's state (exactly: weights, optimisers, schedulers,
    bag weights, history, best, torch RNG) and rewrite metrics.jsonl from its history."""
    import torch

    epochs = ctx.cfg.epochs
    rs.model.load_state_dict(saved["model"])
    rs.opt_up.load_state_dict(saved["opt_up"])
    rs.opt_down.load_state_dict(saved["opt_down"])
    rs.sched_up.load_state_dict(saved["sched_up"])
    rs.sched_down.load_state_dict(saved["sched_down"])
    rs.weights = {k: v.numpy() for k, v in saved["bag_weights"].items()}
    rs.history = json.loads(saved["history"])
    rs.best = json.loads(saved["best"])
    rs.start_epoch = int(saved["epoch"]) + 1
    torch.set_rng_state(saved["torch_rng"])
    rs.init_info = json.loads(saved.get("init_backbone", "null"))
    rewrite_metrics(ctx.run, rs.history)
    yield EpochEvent(rs.start_epoch, epochs, "prepare",
                     message=f"resumed after epoch {rs.start_epoch} of {epochs}")
    if not isinstance(rs.sched_down, torch.optim.lr_scheduler.MultiStepLR):
        yield EpochEvent(rs.start_epoch, epochs, "prepare",
                         message="this run was started with the older downstream schedule "
                                 "(x0.5 every few epochs); it keeps it so that the resume is exact")


def _epoch(ctx: RunContext, rs: RunState, epoch: int) -> Generator[EpochEvent, None, None]:
    """One training epoch: upstream, downstream (new bag weights), validation, the best
    epoch's model, metrics.jsonl and metrics.png, the checkpoint; the "epoch" event last."""
    from ..model.losses import ramp

    cfg = ctx.cfg
    t_epoch = time.perf_counter()
    rho = ramp(epoch, cfg.epochs)
    up = yield from upstream_epoch(ctx, rs, epoch, rho, t_epoch)
    lr_down = rs.opt_down.param_groups[0]["lr"]  # the LR of this downstream epoch
    down_loss = yield from downstream_epoch(ctx, rs, epoch, rho, up)
    record = yield from epoch_record(ctx, rs, epoch, rho, up, down_loss, lr_down)
    record["best_so_far"] = update_best(ctx, rs, epoch, record)
    record["time_s"] = round(time.perf_counter() - t_epoch, 2)
    log_epoch(ctx.run, rs.history, record)
    write_checkpoint(ctx.run, rs, epoch, ctx.cfg_json, ctx.stain_reference)
    yield EpochEvent(epoch, cfg.epochs, "epoch", metrics=record,
                     elapsed_s=time.perf_counter() - ctx.t_start,
                     message=_epoch_line(record))
