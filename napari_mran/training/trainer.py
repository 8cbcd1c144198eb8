"""MRAN's two-branch alternating training (docs/mran-spec.md section 4) as a generator.

Each epoch: (1) upstream epoch over all training bags (shuffled, random horizontal flip,
bag weights w, ramped patch/cell losses), keeping each bag's embedding; (2) downstream
epoch over the training slides; (3) new bag weights w_i = gamma_i * N; (4) validation on
the validation slides; best model by validation accuracy; a resumable checkpoint.

All randomness is derived from (seed, epoch), so a run resumed from its last checkpoint
reaches the same weights as an uninterrupted run with the same seed (on the same
device and thread count).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generator, Literal

import numpy as np

from ..errors import CheckpointError, MRANError, OutputExistsError
from .data import BagReader, SlideBags, slide_bags
from .splits import (LabelsError, make_splits, read_labels, read_split_file,
                     write_splits)

CHECKPOINT = "checkpoint.pt"
MODEL = "model.safetensors"
TEST_METRICS = "test_metrics.json"
#: what a run folder holds before its first checkpoint: a run killed then can start over
_BEFORE_FIRST_CHECKPOINT = {"train_config.json", "splits.csv", "bags", MODEL, "metrics.jsonl",
                            "metrics.png", "metrics.tmp.png"}


@dataclass
class TrainConfig:
    """Training options (the defaults are the reference constants where it has them)."""

    epochs: int = 10
    width: float = 1.0
    class_names: list[str] | None = None
    lr: float = 1e-4                 # Adam, upstream (one-cycle max LR) and downstream
    lam: float = 5.0                 # Lambda
    batch_size: int = 4              # bags per upstream step
    step_lr_after: int = 5           # downstream LR x0.5 once, from this epoch on (MultiStepLR milestone)
    seed: int = 0
    n_folds: int = 5
    fold: int = 0
    split_file: str | None = None
    bag_px: int = 2048
    tissue_method: str = "reference"
    threshold: float = 0.1
    flip: bool = True
    max_bags_per_slide: int | None = None  # a seeded subset per epoch (None: all bags)
    device: str = "auto"
    workers: int = 4
    detach_attention: Literal["reference", "none", "all"] = "reference"
    init_backbone: str | None = None  # torchvision-layout ResNet-18 state dict for the trunk


@dataclass
class EpochEvent:
    """A training progress event."""

    epoch: int                       # 0-based
    epochs: int
    stage: str                       # "prepare", "upstream", "downstream", "validate", "epoch"
    step: int = 0
    steps: int = 0
    loss: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str = ""


@dataclass
class TrainSummary:
    run_dir: Path
    model_path: Path
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    test: dict[str, Any] | None = None   # test_metrics.json: the best model on the test split


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


#: what a run's checkpoint.pt holds (checked before resuming)
_CHECKPOINT_KEYS = ("model", "opt_up", "opt_down", "sched_up", "sched_down", "bag_weights",
                    "history", "best", "epoch", "torch_rng")


def _same_options(saved: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a run's saved ``train_config.json`` has the options ``cfg`` has; options added
    to TrainConfig after the run was started count as their defaults.  ``epochs`` may
    differ: a resumed run may be extended."""
    defaults = asdict(TrainConfig())
    return {**defaults, **saved, "epochs": cfg.epochs} == asdict(cfg)


def _load_checkpoint(path: Path, dev: Any) -> dict[str, Any]:
    """The run's checkpoint (torch.load with weights_only=True), or a clear error naming
    the file when it is damaged, hostile or not ours -- never a traceback."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location=dev, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot resume from this checkpoint "
                              f"({type(exc).__name__}{': ' + detail if detail else ''}); "
                              "it is damaged or was not written by napari-mran train") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: cannot resume: the checkpoint lacks "
                              f"{', '.join(missing)}")
    return state


def _rng(seed: int, epoch: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, purpose])


def _binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, AUC (class 1 vs rest; None when one class only) and CE loss."""
    pred = probs.argmax(1)
    out: dict[str, Any] = {"n": int(len(labels)),
                           "accuracy": float((pred == labels).mean()) if len(labels) else None}
    from ..metrics import roc_auc

    out["auc"] = roc_auc((labels == 1).astype(int), probs[:, 1]) if len(labels) else None
    eps = 1e-7
    out["loss"] = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1)).mean()) \
        if len(labels) else None
    return out


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
    import torch

    from ..analysis import pick_device
    from ..model import MRAN, MRANConfig, init_backbone_from, save_model
    from ..model.losses import class_weights_from_counts, downstream_loss, ramp, upstream_loss

    cfg = config or TrainConfig()
    slides_dir, run = Path(slides_dir), Path(out_dir)
    t_start = time.perf_counter()
    rows = read_labels(labels_csv, slides_dir)
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
    splits = (read_split_file(cfg.split_file, rows) if cfg.split_file
              else make_splits(rows, n_folds=cfg.n_folds, fold=cfg.fold, seed=cfg.seed))
    if not splits["train"]:
        raise LabelsError(f"{labels_csv}: the training split is empty (too few cases?)")

    ckpt_path = run / CHECKPOINT
    cfg_json = json.dumps(asdict(cfg), sort_keys=True)
    if run.exists() and any(run.iterdir()):
        # a run that failed before its first checkpoint never blocks the next one: it
        # starts over in the same folder (its tissue-bag cache is kept)
        fresh = _killed_before_first_checkpoint(run)
        if not resume and not fresh:
            raise OutputExistsError(f"{run}: the run folder is not empty; use --resume to continue "
                                    "it, or choose a new folder")
        if resume and not ckpt_path.is_file() and not fresh:
            raise MRANError(f"{run}: nothing to resume (no {CHECKPOINT})")
        if resume and ckpt_path.is_file():
            saved = json.loads((run / "train_config.json").read_text())
            if not _same_options(saved, cfg):
                raise MRANError(f"{run}: the options differ from the run being resumed "
                                f"(saved: {saved})")
    resuming = resume and ckpt_path.is_file()
    state = _load_checkpoint(ckpt_path, "cpu") if resuming else None
    if state is not None and int(state["epoch"]) + 1 > cfg.epochs:
        raise MRANError(f"{run}: {int(state['epoch']) + 1} epochs are already trained; "
                        f"--epochs {cfg.epochs} cannot shorten the run")

    dev = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model_cfg = MRANConfig(n_classes=n_classes, class_names=tuple(class_names), width=cfg.width,
                           threshold=cfg.threshold, bag_px=cfg.bag_px,
                           tiling={"bag_px": cfg.bag_px, "tissue_method": cfg.tissue_method,
                                   "input_px": 1024, "read": "downsample-2 level or level 0 reduced 2x"})
    model = MRAN(model_cfg)
    init_info: dict[str, str] | None = None
    if cfg.init_backbone and not resuming:
        # before the run folder is made: a file that does not fit fails the run cleanly
        init_path = Path(cfg.init_backbone).expanduser()
        init_info = {"path": str(init_path.resolve()), "sha256": init_backbone_from(model, init_path)}
    model = model.to(dev)
    run.mkdir(parents=True, exist_ok=True)
    (run / "train_config.json").write_text(cfg_json)
    write_splits(splits, run / "splits.csv")
    if not resuming:  # a run killed before its first checkpoint starts over: no stale lines
        (run / "metrics.jsonl").unlink(missing_ok=True)
    if dev.type != "mps":
        # torch's stub of Module.to lacks memory_format
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    # ---- bags per slide (cached in the run folder)
    yield EpochEvent(0, cfg.epochs, "prepare", message="finding tissue bags")
    bags: dict[str, list[SlideBags]] = {}
    for split in ("train", "val", "test"):
        bags[split] = []
        for item in splits[split]:
            sb = slide_bags(item, slides_dir, Path(bag_cache) if bag_cache else run / "bags",
                            bag_px=cfg.bag_px,
                            tissue_method=cfg.tissue_method)
            if len(sb.boxes):
                bags[split].append(sb)
    train_slides = bags["train"]
    if not train_slides:
        raise LabelsError(f"{labels_csv}: no training slide has tissue bags")
    counts = [sum(1 for s in train_slides if s.item.label == c) for c in range(n_classes)]
    if min(counts) == 0:
        empty = [class_names[c] for c in range(n_classes) if counts[c] == 0]
        raise LabelsError(f"{labels_csv}: no training slide with tissue bags for class(es) "
                          f"{', '.join(empty)} (per-class slide counts {counts}); add slides, "
                          "change the split, or check the tissue method")
    class_w = class_weights_from_counts(counts).to(dev)
    reader = BagReader(bag_px=cfg.bag_px,
                       input_px=model_cfg.input_px, workers=cfg.workers)

    opt_up = torch.optim.Adam(model.upstream.parameters(), lr=cfg.lr)
    opt_down = torch.optim.Adam(model.downstream.parameters(), lr=cfg.lr)
    n_train_bags = sum(_n_used(s, cfg) for s in train_slides)
    steps_per_epoch = math.ceil(n_train_bags / cfg.batch_size)
    sched_up = torch.optim.lr_scheduler.OneCycleLR(opt_up, max_lr=cfg.lr,
                                                   total_steps=max(1, steps_per_epoch * cfg.epochs))
    sched_down = downstream_scheduler(opt_down, cfg.step_lr_after,
                                      saved_state=state["sched_down"] if state is not None else None)
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    weights = {s.path: np.ones(len(s.boxes), np.float32) for s in train_slides}
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "key": None, "metrics": {}}
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt_up.load_state_dict(state["opt_up"])
        opt_down.load_state_dict(state["opt_down"])
        sched_up.load_state_dict(state["sched_up"])
        sched_down.load_state_dict(state["sched_down"])
        weights = {k: v.numpy() for k, v in state["bag_weights"].items()}
        history = json.loads(state["history"])
        best = json.loads(state["best"])
        start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])
        init_info = json.loads(state.get("init_backbone", "null"))
        # a kill between the metrics line and the checkpoint must not leave a duplicate line
        (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        yield EpochEvent(start_epoch, cfg.epochs, "prepare",
                         message=f"resumed after epoch {start_epoch} of {cfg.epochs}")
        if not isinstance(sched_down, torch.optim.lr_scheduler.MultiStepLR):
            yield EpochEvent(start_epoch, cfg.epochs, "prepare",
                             message="this run was started with the older downstream schedule "
                                     "(x0.5 every few epochs); it keeps it so that the resume is exact")

    def to_input(images: np.ndarray):
        x = torch.from_numpy(images).to(dev).permute(0, 3, 1, 2)
        return x.float().div_(255.0).contiguous(memory_format=torch.channels_last)

    def embed(slides: list[SlideBags]) -> dict[str, np.ndarray]:
        """Eval-mode bag embeddings of whole slides (validation)."""
        model.eval()
        jobs = [(s.path, box, False, (s.path, j)) for s in slides for j, box in enumerate(s.boxes)]
        out = {s.path: np.zeros((len(s.boxes), model_cfg.embedding_dim), np.float32) for s in slides}
        with torch.inference_mode():
            for images, tags in reader.batches(jobs, cfg.batch_size):
                with torch.autocast("cuda", enabled=use_amp):
                    emb = model.forward_bags(to_input(images)).embedding.float().cpu().numpy()
                for (path, j), e in zip(tags, emb):
                    out[path][j] = e
        return out

    def slide_probs(slides, embs) -> tuple[np.ndarray, np.ndarray]:
        model.eval()
        labels, probs = [], []
        with torch.inference_mode():
            for s in slides:
                so = model.forward_slide(torch.from_numpy(embs[s.path]).to(dev))
                probs.append(torch.softmax(so.slide_logits.float(), -1).cpu().numpy())
                labels.append(s.item.label)
        return np.asarray(labels, int), np.asarray(probs).reshape(len(labels), n_classes)

    try:
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            rho = ramp(epoch, cfg.epochs)
            # ---- 1. upstream epoch
            model.train()
            jobs = []
            rng = _rng(cfg.seed, epoch, 1)
            for s in train_slides:
                idx = np.arange(len(s.boxes))
                if cfg.max_bags_per_slide and len(idx) > cfg.max_bags_per_slide:
                    idx = np.sort(rng.choice(idx, cfg.max_bags_per_slide, replace=False))
                for j in idx:
                    jobs.append((s, int(j)))
            order = rng.permutation(len(jobs))
            flips = rng.random(len(jobs)) < 0.5 if cfg.flip else np.zeros(len(jobs), bool)
            read_jobs = [(jobs[k][0].path, jobs[k][0].boxes[jobs[k][1]], bool(flips[n]),
                          (jobs[k][0], jobs[k][1])) for n, k in enumerate(order)]
            emb = {s.path: np.zeros((len(s.boxes), model_cfg.embedding_dim), np.float32)
                   for s in train_slides}
            seen = {s.path: np.zeros(len(s.boxes), bool) for s in train_slides}
            losses = []
            step = 0
            lr_up = opt_up.param_groups[0]["lr"]
            for images, tags in reader.batches(read_jobs, cfg.batch_size):
                labels = torch.tensor([s.item.label for s, _ in tags], device=dev)
                w = torch.tensor([weights[s.path][j] for s, j in tags], device=dev)
                with torch.autocast("cuda", enabled=use_amp):
                    out = model.forward_bags(to_input(images))
                    loss = upstream_loss(out, labels, w, rho, cfg.lam, class_w,
                                         detach_attention=cfg.detach_attention)
                opt_up.zero_grad(set_to_none=True)
                lr_up = opt_up.param_groups[0]["lr"]  # the LR of this step
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt_up)
                    scaler.update()
                else:
                    loss.backward()
                    opt_up.step()
                if sched_up.last_epoch + 1 < sched_up.total_steps:
                    sched_up.step()
                e = out.embedding.detach().float().cpu().numpy()
                for (s, j), ej in zip(tags, e):
                    emb[s.path][j] = ej
                    seen[s.path][j] = True
                losses.append(float(loss.detach()))
                step += 1
                elapsed = time.perf_counter() - t_epoch
                yield EpochEvent(epoch, cfg.epochs, "upstream", step, steps_per_epoch,
                                 losses[-1], elapsed_s=elapsed,
                                 eta_s=elapsed / step * (steps_per_epoch - step),
                                 message=f"epoch {epoch + 1}/{cfg.epochs} upstream {step}/{steps_per_epoch}")
            up_loss = float(np.mean(losses)) if losses else None
            lr_down = opt_down.param_groups[0]["lr"]  # the LR of this downstream epoch

            # ---- 2. downstream epoch (bags not sampled this epoch are left out of their slide)
            model.train()
            down_losses = []
            new_weights = {k: v.copy() for k, v in weights.items()}
            for k in _rng(cfg.seed, epoch, 2).permutation(len(train_slides)):
                s = train_slides[k]
                used = np.flatnonzero(seen[s.path])
                so = model.forward_slide(torch.from_numpy(emb[s.path][used]).to(dev))
                loss = downstream_loss(so, s.item.label, rho, cfg.lam, class_w,
                                       detach_attention=cfg.detach_attention)
                opt_down.zero_grad(set_to_none=True)
                loss.backward()
                opt_down.step()
                down_losses.append(float(loss.detach()))
                # ---- 3. bag weights for the next upstream epoch: w_i = gamma_i * N (mean 1)
                gamma = so.gamma.detach().float().cpu().numpy()
                new_weights[s.path][used] = gamma * len(used)
            weights = new_weights
            sched_down.step()
            yield EpochEvent(epoch, cfg.epochs, "downstream", len(train_slides), len(train_slides),
                             float(np.mean(down_losses)))

            # ---- 4. validation
            tr_labels, tr_probs = slide_probs(train_slides, emb)
            record: dict[str, Any] = {
                "epoch": epoch + 1, "rho": rho, "upstream_loss": up_loss,
                "downstream_loss": float(np.mean(down_losses)),
                # the LRs used: the epoch's last upstream step, the downstream epoch
                "lr_upstream": lr_up, "lr_downstream": lr_down,
                "train": _binary_metrics(tr_labels, tr_probs),
            }
            if bags["val"]:
                yield EpochEvent(epoch, cfg.epochs, "validate", message="validating")
                val_emb = embed(bags["val"])
                va_labels, va_probs = slide_probs(bags["val"], val_emb)
                record["val"] = _binary_metrics(va_labels, va_probs)
            sel = record.get("val", record["train"])
            key = [sel["accuracy"] or 0.0, sel["auc"] if sel["auc"] is not None else 0.0,
                   -(sel["loss"] or 0.0)]
            improved = best["key"] is None or key > best["key"]
            if improved:
                best = {"epoch": epoch + 1, "key": key, "metrics": record}
                best_model = _with_provenance(model, model_cfg, cfg, record, rows, splits,
                                              labels_csv, command, t_start, epoch + 1, init_info)
                save_model(best_model, run / MODEL, overwrite=True)
            record["best_so_far"] = improved
            record["time_s"] = round(time.perf_counter() - t_epoch, 2)
            history.append(record)
            with open(run / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            _plot(history, run / "metrics.png")
            state = {
                "epoch": epoch, "model": model.state_dict(), "opt_up": opt_up.state_dict(),
                "opt_down": opt_down.state_dict(), "sched_up": sched_up.state_dict(),
                "sched_down": sched_down.state_dict(),
                "bag_weights": {k: torch.from_numpy(v) for k, v in weights.items()},
                "history": json.dumps(history), "best": json.dumps(best),
                "torch_rng": torch.get_rng_state(), "config": cfg_json,
                "init_backbone": json.dumps(init_info),
            }
            tmp = run / (CHECKPOINT + f".tmp{os.getpid()}")
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)
            yield EpochEvent(epoch, cfg.epochs, "epoch", metrics=record,
                             elapsed_s=time.perf_counter() - t_start,
                             message=_epoch_line(record))

        # ---- 5. the best model on the test split (written last: it marks a finished run)
        test_doc = None
        if (run / MODEL).is_file():
            n_test = len(splits["test"])
            yield EpochEvent(cfg.epochs - 1, cfg.epochs, "test",
                             message=f"testing the best model (epoch {best['epoch']}) on "
                                     f"{n_test} test slide{'s' if n_test != 1 else ''}")
            from ..model import load_model, sha256_of

            model_sha = sha256_of(run / MODEL)
            model.load_state_dict(load_model(run / MODEL).state_dict())
            te_labels, te_probs = (slide_probs(bags["test"], embed(bags["test"])) if bags["test"]
                                   else (np.zeros(0, int), np.zeros((0, n_classes))))
            test_doc = _test_document(bags["test"], splits["test"], te_labels, te_probs,
                                      class_names, best["epoch"], cfg.epochs, model_sha)
            _write_json(run / TEST_METRICS, test_doc)
            yield EpochEvent(cfg.epochs - 1, cfg.epochs, "test", metrics=test_doc,
                             elapsed_s=time.perf_counter() - t_start,
                             message=_test_line(test_doc))
    finally:
        reader.close()
    return TrainSummary(run, run / MODEL, best["epoch"], best["metrics"], history, test_doc)


def _killed_before_first_checkpoint(run: Path) -> bool:
    """Whether ``run`` holds only what a run writes before its first checkpoint (and its
    train_config.json): then resuming starts that run over (the tissue-bag cache is kept)."""
    names = {p.name for p in run.iterdir()}
    return ("train_config.json" in names
            and all(n in _BEFORE_FIRST_CHECKPOINT or n.startswith(CHECKPOINT + ".tmp")
                    or (n.startswith(f".{MODEL}.") and n.endswith(".partial")) for n in names))


def write_text_atomic(path: Path, text: str) -> None:
    """Write under a temporary sibling name, then rename into place (atomic)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, doc: Any) -> None:
    """Strict JSON (no NaN), written atomically."""
    write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _test_document(slides: list[SlideBags], items, labels: np.ndarray, probs: np.ndarray,
                   class_names: list[str], best_epoch: int, epochs: int, model_sha: str,
                   ) -> dict[str, Any]:
    from ..metrics import classification_metrics

    with_bags = {s.item.slide for s in slides}
    metrics = classification_metrics(labels, probs, class_names) if len(labels) else None
    return {
        "split": "test", "best_epoch": best_epoch, "epochs": epochs, "model_sha256": model_sha,
        "class_names": list(class_names), "n_slides": len(items),
        "no_tissue_bags": sorted(i.slide for i in items if i.slide not in with_bags),
        "metrics": metrics,
        "slides": [{"slide": s.item.slide, "case": s.item.case, "label": int(s.item.label),
                    "n_bags": int(len(s.boxes)), "probs": [float(v) for v in p]}
                   for s, p in zip(slides, probs)],
    }


def _test_line(doc: dict[str, Any]) -> str:
    m = doc.get("metrics")
    if not m:
        return "test: no test slide with tissue bags"

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"
    return (f"test ({m['n']} slides, best epoch {doc['best_epoch']}): acc {fmt(m['accuracy'])} "
            f"auc {fmt(m['auc'])} f1 {fmt(m['f1'])} sens {fmt(m['sensitivity'])} "
            f"spec {fmt(m['specificity'])}")


def finished_run(run: str | os.PathLike, cfg: TrainConfig, *, strict: bool = False,
                 ) -> dict[str, Any] | None:
    """The test document of a run folder that finished training with options ``cfg`` and
    whose files agree: train_config.json has ``cfg``'s options, metrics.jsonl one line per
    epoch, the checkpoint is there, and test_metrics.json was made from the model file now
    there (SHA-256). None when the run has no test_metrics.json (not finished); when it has
    one but something disagrees, None, or with ``strict`` an MRANError naming what."""
    from ..model import sha256_of

    run = Path(run)
    if not (run / TEST_METRICS).is_file():
        return None
    try:
        saved = json.loads((run / "train_config.json").read_text())
        doc = json.loads((run / TEST_METRICS).read_text())
        lines = (run / "metrics.jsonl").read_text().splitlines()
        epochs = [json.loads(x)["epoch"] for x in lines]
        if not _same_options(saved, cfg):
            problem = "its options differ from the ones given now"
        elif not (run / CHECKPOINT).is_file():
            problem = f"{CHECKPOINT} is missing"
        elif doc.get("epochs") != cfg.epochs or epochs != list(range(1, cfg.epochs + 1)):
            problem = (f"it does not hold {cfg.epochs} epochs (metrics.jsonl has {len(epochs)}, "
                       f"{TEST_METRICS} says {doc.get('epochs')})")
        elif doc.get("model_sha256") != sha256_of(run / MODEL):
            problem = f"{MODEL} is not the model that {TEST_METRICS} was made from"
        else:
            return doc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"its files cannot be read ({exc})"
    if strict:
        raise MRANError(f"{run}: finished run that does not verify: {problem}; move it away "
                        "to train it again")
    return None


def _n_used(s: SlideBags, cfg: TrainConfig) -> int:
    n = len(s.boxes)
    return min(n, cfg.max_bags_per_slide) if cfg.max_bags_per_slide else n


def _epoch_line(r: dict[str, Any]) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"
    line = (f"epoch {r['epoch']}: up loss {fmt(r['upstream_loss'])}, down loss "
            f"{fmt(r['downstream_loss'])}, train acc {fmt(r['train']['accuracy'])} "
            f"auc {fmt(r['train']['auc'])}")
    if "val" in r:
        line += f", val acc {fmt(r['val']['accuracy'])} auc {fmt(r['val']['auc'])}"
    return line + (" *" if r.get("best_so_far") else "")


def _with_provenance(model, model_cfg, cfg: TrainConfig, record, rows, splits, labels_csv,
                     command, t_start, epoch, init_info=None):
    """A copy of the model whose config records how it was trained."""
    import copy
    import hashlib

    import torch

    from .._version import __version__

    prov = {
        "trained_by": f"napari-mran {__version__} train",
        "command": command or " ".join(sys.argv),
        "train_config": asdict(cfg),
        "labels_csv": str(labels_csv),
        "labels_sha256": hashlib.sha256(Path(labels_csv).read_bytes()).hexdigest(),
        "n_slides": {k: len(v) for k, v in splits.items()},
        "best_epoch": epoch,
        "metrics": record,
        "train_time_s": round(time.perf_counter() - t_start, 1),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if init_info is not None:
        prov["init_backbone"] = dict(init_info)  # path and sha256 of the initial trunk weights
    m = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)
    m._config = replace(model_cfg, provenance=prov)
    return m


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ep = [h["epoch"] for h in history]
    fig = Figure(figsize=(12, 3.6), dpi=100)
    axes = fig.subplots(1, 3)
    axes[0].plot(ep, [h["upstream_loss"] for h in history], "o-", label="upstream")
    axes[0].plot(ep, [h["downstream_loss"] for h in history], "o-", label="downstream")
    if any("val" in h for h in history):
        axes[0].plot(ep, [h.get("val", {}).get("loss") for h in history], "o-", label="val CE")
    axes[0].set_title("loss")
    for ax, key in ((axes[1], "accuracy"), (axes[2], "auc")):
        ax.plot(ep, [h["train"][key] for h in history], "o-", label="train")
        if any("val" in h for h in history):
            ax.plot(ep, [h.get("val", {}).get(key) for h in history], "o-", label="val")
        ax.set_title(key)
        ax.set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
