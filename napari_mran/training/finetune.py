"""Fine-tuning a model from review marks (``napari-mran finetune``; docs/cli.md).

The bag labels come from the marks of reviewed results stores
(:mod:`.finetune_marks`); the bags are read again from their slides at the stores' bag
boxes, with the read plan of analysis (:class:`.data.BagReader`).  Each epoch:

1. upstream: every marked bag (its mark's label, weight 1) and, for the slides that
   ``labels_csv`` labels, every other bag of the slide (the slide's label, weight
   ``gamma_i * N`` as in training; the stores' attention first), in a seeded order with
   seeded flips; loss :func:`~napari_mran.model.upstream_loss` at the end of training's
   ramp (``rho = 1``), class weights from the bag labels when every class has one;
2. downstream (only with slide labels): each labelled slide's bag embeddings from step
   1, :func:`~napari_mran.model.downstream_loss`; new bag weights;
3. ``checkpoint.pt`` (resumable: same files, options and marks) and ``model.safetensors``
   (provenance: the base model, each review used, the options).

``freeze_backbone`` keeps the ResNet trunk (and its batch-norm statistics) as it was:
only the shared classifier of the upstream branch (and the downstream branch) learn.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np

from ..errors import CheckpointError, MRANError, OutputExistsError
from .finetune_marks import (ReviewedSlide, attach_slide_labels, reviewed_slides,
                             stain_mismatches)
from .run_folder import _write_json, write_text_atomic

__all__ = ["FinetuneConfig", "FinetuneEvent", "FinetuneSummary", "finetune"]

CONFIG, CHECKPOINT, MODEL = "finetune_config.json", "checkpoint.pt", "model.safetensors"
METRICS, REPORT = "metrics.jsonl", "finetune_report.json"


@dataclass
class FinetuneConfig:
    """Fine-tuning options (few epochs, small learning rate)."""

    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 4
    seed: int = 0
    lam: float = 5.0
    freeze_backbone: bool = False
    flip: bool = True
    device: str = "auto"
    workers: int = 2
    allow_other_model: bool = False
    stain_normalize: str = "off"
    stain_augment: str = "off"
    stain_augment_sigma: float = 0.05
    stain_augment_bias: float = 0.05

    def __post_init__(self) -> None:
        from .config import TrainConfig

        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, not {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, not {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, not {self.lr!r}")
        TrainConfig(stain_normalize=self.stain_normalize, stain_augment=self.stain_augment,
                    stain_augment_sigma=self.stain_augment_sigma,
                    stain_augment_bias=self.stain_augment_bias)  # the same checks as train


@dataclass
class FinetuneEvent:
    epoch: int
    epochs: int
    stage: str                 # "prepare", "upstream", "downstream", "epoch"
    step: int = 0
    steps: int = 0
    loss: float | None = None
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneSummary:
    run_dir: Path
    model_path: Path
    history: list[dict[str, Any]]
    reviews: list[dict[str, Any]]
    warnings: list[str]


def _inputs(base_sha: str, slides: list[ReviewedSlide], labels_csv: Any) -> dict[str, Any]:
    """What a resumed run must find unchanged: the base model, the stores and marks."""
    import hashlib

    lab = None if labels_csv is None else hashlib.sha256(Path(labels_csv).read_bytes()).hexdigest()
    return {"base_model_sha256": base_sha, "labels_sha256": lab,
            "stores": [{k: s.record[k] for k in ("store", "store_sha256", "marks_sha256")}
                       for s in slides]}


def _check_folder(run: Path, doc: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: start); errors for a folder that may not
    take this run.  A folder killed before its first checkpoint starts over."""
    if not run.exists() or not any(run.iterdir()):
        return None
    names = {p.name for p in run.iterdir()}
    started_only = names <= {CONFIG, METRICS, MODEL} and CHECKPOINT not in names
    if not resume:
        raise OutputExistsError(f"{run}: the run folder is not empty; use --resume to "
                                "continue it, or choose a new folder")
    if CONFIG not in names:
        raise MRANError(f"{run}: nothing to resume (no {CONFIG})")
    saved = json.loads((run / CONFIG).read_text())
    if saved.get("inputs") != doc["inputs"]:
        raise MRANError(f"{run}: the base model, the stores or their review marks differ "
                        "from the run being resumed")
    if {**saved["config"], "epochs": 0} != {**doc["config"], "epochs": 0}:
        raise MRANError(f"{run}: the options differ from the run being resumed "
                        f"(saved: {saved['config']})")
    if started_only:
        return None
    state = _load_checkpoint(run / CHECKPOINT)
    if int(state["epoch"]) + 1 > doc["config"]["epochs"]:
        raise MRANError(f"{run}: {int(state['epoch']) + 1} epochs are already trained; "
                        f"--epochs {doc['config']['epochs']} cannot shorten the run")
    return state


def _load_checkpoint(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint ({type(exc).__name__}); "
                              "it is damaged or was not written by napari-mran finetune") from None
    keys = ("model", "opt_up", "opt_down", "epoch", "torch_rng", "history", "weights")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise CheckpointError(f"{path}: cannot resume: not a napari-mran finetune checkpoint")
    return state


class _Run:
    """The state of one fine-tuning run (model, optimisers, bag weights, history)."""

    def __init__(self, model: Any, cfg: FinetuneConfig, slides: list[ReviewedSlide], dev: Any):
        import torch

        self.model, self.cfg, self.slides, self.dev = model, cfg, slides, dev
        params = (model.upstream.classifier.parameters() if cfg.freeze_backbone
                  else model.upstream.parameters())
        if cfg.freeze_backbone:
            for p in model.upstream.trunk.parameters():
                p.requires_grad_(False)
        self.opt_up = torch.optim.Adam(params, lr=cfg.lr)
        self.opt_down = torch.optim.Adam(model.downstream.parameters(), lr=cfg.lr)
        self.weights = {i: s.gamma * len(s.boxes) for i, s in enumerate(slides)}
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        labels = [c for s in slides for c in s.labels.values()] + [
            s.slide_label for s in slides if s.slide_label is not None]
        counts = [labels.count(c) for c in range(model.n_classes)]
        self.class_w = (torch.tensor([sum(counts) / (len(counts) * n) for n in counts],
                                     dtype=torch.float32, device=dev)
                        if min(counts) > 0 else None)

    def restore(self, state: dict[str, Any]) -> None:
        import torch

        self.model.load_state_dict(state["model"])
        self.opt_up.load_state_dict(state["opt_up"])
        self.opt_down.load_state_dict(state["opt_down"])
        self.weights = {int(k): v.numpy() for k, v in state["weights"].items()}
        self.history = json.loads(state["history"])
        self.start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])

    def save(self, run: Path, epoch: int) -> None:
        import torch

        state = {"epoch": epoch, "model": self.model.state_dict(),
                 "opt_up": self.opt_up.state_dict(), "opt_down": self.opt_down.state_dict(),
                 "weights": {str(k): torch.from_numpy(np.asarray(v, np.float32))
                             for k, v in self.weights.items()},
                 "history": json.dumps(self.history), "torch_rng": torch.get_rng_state()}
        tmp = run / f"{CHECKPOINT}.tmp{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, run / CHECKPOINT)

    def train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_backbone:
            self.model.upstream.trunk.eval()  # batch-norm statistics kept too


def _jobs(r: _Run, epoch: int) -> list[tuple]:
    """The upstream reads of an epoch: (path, box, flip, (slide, bag, label, w)[, seed])."""
    from .stain import augment_seeds

    cfg, items = r.cfg, []
    for k, s in enumerate(r.slides):
        for j in range(len(s.boxes)):
            if j in s.labels:
                items.append((s, (k, j, s.labels[j], 1.0)))
            elif s.slide_label is not None:
                items.append((s, (k, j, s.slide_label, float(r.weights[k][j]))))
    rng = np.random.default_rng([cfg.seed, epoch, 1])
    order = rng.permutation(len(items))
    flips = rng.random(len(items)) < 0.5 if cfg.flip else np.zeros(len(items), bool)
    seeds = augment_seeds(cfg, epoch, len(items))  # type: ignore[arg-type]
    return [(items[i][0].slide_path, items[i][0].boxes[items[i][1][1]], bool(flips[n]),
             items[i][1], seeds[n]) for n, i in enumerate(order)]


def _upstream(r: _Run, reader: Any, epoch: int) -> Generator[FinetuneEvent, None, tuple]:
    import torch

    from ..model.losses import upstream_loss
    from .epochs import to_input

    r.train_mode()
    jobs = _jobs(r, epoch)
    steps = -(-len(jobs) // r.cfg.batch_size)
    emb = {k: np.zeros((len(s.boxes), r.model.embedding_dim), np.float32)
           for k, s in enumerate(r.slides)}
    losses, right, n_marked = [], 0, 0
    for step, (images, tags) in enumerate(reader.batches(jobs, r.cfg.batch_size), 1):
        labels = torch.tensor([t[2] for t in tags], device=r.dev)
        w = torch.tensor([t[3] for t in tags], dtype=torch.float32, device=r.dev)
        out = r.model.forward_bags(to_input(images, r.dev))
        loss = upstream_loss(out, labels, w, 1.0, r.cfg.lam, r.class_w)
        r.opt_up.zero_grad(set_to_none=True)
        loss.backward()
        r.opt_up.step()
        pred = out.bag_logits.detach().argmax(1).cpu().numpy()
        for t, e, p in zip(tags, out.embedding.detach().float().cpu().numpy(), pred):
            emb[t[0]][t[1]] = e
            if t[1] in r.slides[t[0]].labels:
                n_marked += 1
                right += int(p == t[2])
        losses.append(float(loss.detach()))
        yield FinetuneEvent(epoch, r.cfg.epochs, "upstream", step, steps, losses[-1],
                            f"epoch {epoch + 1}/{r.cfg.epochs} upstream {step}/{steps}")
    return emb, float(np.mean(losses)), right / max(1, n_marked)


def _downstream(r: _Run, emb: dict[int, np.ndarray], epoch: int) -> float | None:
    import torch

    from ..model.losses import downstream_loss

    labelled = [k for k, s in enumerate(r.slides) if s.slide_label is not None]
    if not labelled:
        return None
    losses = []
    for k in np.random.default_rng([r.cfg.seed, epoch, 2]).permutation(labelled):
        so = r.model.forward_slide(torch.from_numpy(emb[int(k)]).to(r.dev))
        label = int(r.slides[int(k)].slide_label)  # type: ignore[arg-type]
        loss = downstream_loss(so, label, 1.0, r.cfg.lam, r.class_w)
        r.opt_down.zero_grad(set_to_none=True)
        loss.backward()
        r.opt_down.step()
        losses.append(float(loss.detach()))
        r.weights[int(k)] = so.gamma.detach().float().cpu().numpy() * len(emb[int(k)])
    return float(np.mean(losses))


def _with_provenance(r: _Run, base: Any, doc: dict[str, Any], command: str | None) -> Any:
    import copy
    from dataclasses import replace

    import torch

    from .._version import __version__

    prov = {"trained_by": f"napari-mran {__version__} finetune",
            "command": command, "finetune_config": doc["config"],
            "base_model": {"path": getattr(base, "checkpoint_path", None),
                           "sha256": doc["inputs"]["base_model_sha256"],
                           "provenance": base.config.provenance},
            "reviews": [s.record for s in r.slides], "labels_csv": doc["labels_csv"],
            "epochs_done": len(r.history), "metrics": r.history[-1] if r.history else {},
            "versions": {"torch": torch.__version__}}
    m = copy.deepcopy(r.model).float().cpu()
    m._config = replace(r.model.config, provenance=prov)
    m.stain_reference = doc.get("stain_reference")
    return m


def _prepare(model_path: Any, stores: list, cfg: FinetuneConfig, labels_csv: Any,
             slides_dir: Any) -> tuple[Any, list[ReviewedSlide], dict[str, Any]]:
    from ..model import load_model

    base = load_model(model_path)
    slides = reviewed_slides(stores, base.config, base.checkpoint_sha256,
                             allow_other_model=cfg.allow_other_model)
    if labels_csv is not None:
        attach_slide_labels(slides, labels_csv, slides_dir, list(base.config.class_names or ()))
    for slide in slides:  # bags that would not look like the ones reviewed: say so
        slide.warnings.extend(stain_mismatches([slide], cfg.stain_normalize))
    doc = {"config": asdict(cfg), "inputs": _inputs(base.checkpoint_sha256, slides, labels_csv),
           "base_model": str(model_path),
           "labels_csv": None if labels_csv is None else str(labels_csv)}
    return base, slides, doc


def _stain(r: _Run, reader: Any, base: Any, doc: dict[str, Any]) -> None:
    """Normalise bags like analysis with the base model's reference (or one fitted on the
    reviewed slides when the base model has none for this method); HED jitter."""
    from .stain import augmenter, cohort_reference

    method, ref = r.cfg.stain_normalize, getattr(base, "stain_reference", None)
    if method != "off":
        if not (isinstance(ref, dict) and ref.get("method") == method):
            ref = cohort_reference(method, sorted({s.slide_path for s in r.slides}))
        doc["stain_reference"] = ref
        reader.method, reader.stain_reference = method, ref
    else:
        doc["stain_reference"] = ref
    reader.augment = augmenter(r.cfg)  # type: ignore[arg-type]


def finetune(model_path: str | os.PathLike, stores: list[str | os.PathLike],
             out_dir: str | os.PathLike, config: FinetuneConfig | None = None, *,
             labels_csv: str | os.PathLike | None = None,
             slides_dir: str | os.PathLike | None = None, resume: bool = False,
             command: str | None = None) -> Generator[FinetuneEvent, None, FinetuneSummary]:
    """Fine-tune *model_path* on the review marks of *stores* (and the slide labels of
    *labels_csv*); yields :class:`FinetuneEvent`, returns a :class:`FinetuneSummary`.
    ``out_dir`` must be new or empty, unless *resume* and it holds a run with the same
    base model, stores, marks and options (``epochs`` may grow)."""
    import torch

    from ..analysis import pick_device
    from ..model import save_model
    from .data import BagReader

    cfg, run = config or FinetuneConfig(), Path(out_dir)
    base, slides, doc = _prepare(model_path, list(stores), cfg, labels_csv, slides_dir)
    saved = _check_folder(run, doc, resume)
    dev = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    r = _Run(base.to(dev), cfg, slides, dev)
    reader = BagReader(bag_px=base.config.bag_px, input_px=base.config.input_px,
                       workers=cfg.workers)
    _stain(r, reader, base, doc)
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / CONFIG, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if saved is not None:
        r.restore(saved)
        yield FinetuneEvent(r.start_epoch, cfg.epochs, "prepare",
                            message=f"resumed after epoch {r.start_epoch} of {cfg.epochs}")
    try:
        for epoch in range(r.start_epoch, cfg.epochs):
            emb, up_loss, acc = yield from _upstream(r, reader, epoch)
            down_loss = _downstream(r, emb, epoch)
            r.history.append({"epoch": epoch + 1, "upstream_loss": up_loss,
                              "downstream_loss": down_loss, "marked_bag_accuracy": acc})
            write_text_atomic(run / METRICS, "".join(json.dumps(h) + "\n" for h in r.history))
            save_model(_with_provenance(r, base, doc, command), run / MODEL, overwrite=True)
            r.save(run, epoch)
            yield FinetuneEvent(epoch, cfg.epochs, "epoch", loss=up_loss, metrics=r.history[-1],
                                message=f"epoch {epoch + 1}/{cfg.epochs}: upstream loss "
                                        f"{up_loss:.3f}, marked bags right {acc:.0%}")
    finally:
        reader.close()
    warnings = [w for s in slides for w in s.warnings]
    _write_json(run / REPORT, {"model": str(run / MODEL), "epochs": cfg.epochs,
                               "history": r.history, "reviews": [s.record for s in slides],
                               "warnings": warnings})
    return FinetuneSummary(run, run / MODEL, r.history, [s.record for s in slides], warnings)
