"""One epoch of each branch (docs/mran-spec.md section 4): the upstream epoch over the
training bags (seeded subset, order and flips; bag weights; ramped losses), keeping every
bag's embedding, and the downstream epoch over the training slides, which sets the bag
weights of the next epoch (w_i = gamma_i * N)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generator

import numpy as np

from .config import EpochEvent, TrainConfig
from .data import SlideBags
from .stain import augment_seeds
from .state import RunContext, RunState


def _rng(seed: int, epoch: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, purpose])


def _n_used(s: SlideBags, cfg: TrainConfig) -> int:
    n = len(s.boxes)
    return min(n, cfg.max_bags_per_slide) if cfg.max_bags_per_slide else n


def to_input(images: np.ndarray, dev: Any):
    """(n, H, W, 3) uint8 bag images -> the model's (n, 3, H, W) float input in [0, 1]."""
    import torch

    x = torch.from_numpy(images).to(dev).permute(0, 3, 1, 2)
    return x.float().div_(255.0).contiguous(memory_format=torch.channels_last)


@dataclass
class UpstreamEpoch:
    """What the upstream epoch leaves for the downstream one."""

    emb: dict[str, np.ndarray]         # per training slide: (N, D) bag embeddings
    seen: dict[str, np.ndarray]        # per training slide: which bags this epoch used
    loss: float | None                 # mean upstream loss
    lr: float                          # the LR of the epoch's last upstream step


def _upstream_jobs(ctx: RunContext, epoch: int) -> list[tuple]:
    """The bag reads of an upstream epoch, (path, box, flip, (slide, bag index), HED
    jitter seed or None): every bag (or a seeded subset per slide), in a seeded order,
    each flipped with p = 0.5."""
    cfg = ctx.cfg
    jobs = []
    rng = _rng(cfg.seed, epoch, 1)
    for s in ctx.train_slides:
        idx = np.arange(len(s.boxes))
        if cfg.max_bags_per_slide and len(idx) > cfg.max_bags_per_slide:
            idx = np.sort(rng.choice(idx, cfg.max_bags_per_slide, replace=False))
        for j in idx:
            jobs.append((s, int(j)))
    order = rng.permutation(len(jobs))
    flips = rng.random(len(jobs)) < 0.5 if cfg.flip else np.zeros(len(jobs), bool)
    seeds = augment_seeds(cfg, epoch, len(jobs))  # HED jitter's (own RNG: order unchanged)
    return [(jobs[k][0].path, jobs[k][0].boxes[jobs[k][1]], bool(flips[n]),
             (jobs[k][0], jobs[k][1]), seeds[n]) for n, k in enumerate(order)]


def _upstream_step(ctx: RunContext, rs: RunState, images: np.ndarray, tags: list,
                   rho: float) -> tuple[Any, Any, float]:
    """One optimiser step of the upstream branch on a batch of bags; (loss, the bags'
    embeddings (n, D) as numpy, the LR of the step)."""
    import torch

    from ..model.losses import upstream_loss

    cfg, dev, opt_up, sched_up = ctx.cfg, ctx.dev, rs.opt_up, rs.sched_up
    labels = torch.tensor([s.item.label for s, _ in tags], device=dev)
    w = torch.tensor([rs.weights[s.path][j] for s, j in tags], device=dev)
    with torch.autocast("cuda", enabled=ctx.use_amp):
        out = rs.model.forward_bags(to_input(images, dev))
        loss = upstream_loss(out, labels, w, rho, cfg.lam, ctx.class_w,
                             detach_attention=cfg.detach_attention)
    opt_up.zero_grad(set_to_none=True)
    lr_up = opt_up.param_groups[0]["lr"]  # the LR of this step
    if rs.scaler is not None:
        rs.scaler.scale(loss).backward()
        rs.scaler.step(opt_up)
        rs.scaler.update()
    else:
        loss.backward()
        opt_up.step()
    if sched_up.last_epoch + 1 < sched_up.total_steps:
        sched_up.step()
    return loss, out.embedding.detach().float().cpu().numpy(), lr_up


def upstream_epoch(ctx: RunContext, rs: RunState, epoch: int, rho: float, t_epoch: float,
                   ) -> Generator[EpochEvent, None, UpstreamEpoch]:
    """The upstream epoch; yields an "upstream" event per step."""
    cfg, steps = ctx.cfg, ctx.steps_per_epoch
    rs.model.train()
    read_jobs = _upstream_jobs(ctx, epoch)
    emb = {s.path: np.zeros((len(s.boxes), ctx.model_cfg.embedding_dim), np.float32)
           for s in ctx.train_slides}
    seen = {s.path: np.zeros(len(s.boxes), bool) for s in ctx.train_slides}
    losses = []
    step = 0
    lr_up = rs.opt_up.param_groups[0]["lr"]
    for images, tags in ctx.bag_reader().batches(read_jobs, cfg.batch_size):
        loss, e, lr_up = _upstream_step(ctx, rs, images, tags, rho)
        for (s, j), ej in zip(tags, e):
            emb[s.path][j] = ej
            seen[s.path][j] = True
        losses.append(float(loss.detach()))
        step += 1
        elapsed = time.perf_counter() - t_epoch
        yield EpochEvent(epoch, cfg.epochs, "upstream", step, steps,
                         losses[-1], elapsed_s=elapsed,
                         eta_s=elapsed / step * (steps - step),
                         message=f"epoch {epoch + 1}/{cfg.epochs} upstream {step}/{steps}")
    return UpstreamEpoch(emb, seen, float(np.mean(losses)) if losses else None, lr_up)


def downstream_epoch(ctx: RunContext, rs: RunState, epoch: int, rho: float,
                     up: UpstreamEpoch) -> Generator[EpochEvent, None, float]:
    """The downstream epoch over the training slides (in a seeded order; bags not sampled
    this epoch are left out of their slide), then the bag weights of the next upstream
    epoch; yields its "downstream" event, returns its mean loss."""
    import torch

    from ..model.losses import downstream_loss

    cfg, model, train_slides = ctx.cfg, rs.model, ctx.train_slides
    model.train()
    down_losses = []
    new_weights = {k: v.copy() for k, v in rs.weights.items()}
    for k in _rng(cfg.seed, epoch, 2).permutation(len(train_slides)):
        s = train_slides[k]
        used = np.flatnonzero(up.seen[s.path])
        so = model.forward_slide(torch.from_numpy(up.emb[s.path][used]).to(ctx.dev))
        loss = downstream_loss(so, s.item.label, rho, cfg.lam, ctx.class_w,
                               detach_attention=cfg.detach_attention)
        rs.opt_down.zero_grad(set_to_none=True)
        loss.backward()
        rs.opt_down.step()
        down_losses.append(float(loss.detach()))
        # bag weights for the next upstream epoch: w_i = gamma_i * N (mean 1)
        gamma = so.gamma.detach().float().cpu().numpy()
        new_weights[s.path][used] = gamma * len(used)
    rs.weights = new_weights
    rs.sched_down.step()
    mean_loss = float(np.mean(down_losses))
    yield EpochEvent(epoch, cfg.epochs, "downstream", len(train_slides), len(train_slides),
                     mean_loss)
    return mean_loss
