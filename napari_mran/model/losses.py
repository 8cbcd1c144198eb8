"""Training losses of MRAN (``docs/mran-spec.md`` section 4), as pure functions.

Cross-entropy terms use per-sample class weights ``weight[y] * -log p_y`` (no
re-normalisation by the weights), and every "mean" is a plain mean over the
samples, as in the spec.

Attention in the loss weights (the spec is silent): by default
(``detach_attention="reference"``) the patch attention ``alpha`` and the bag attention
``gamma`` are *detached* where they weight the patch / bag terms, while the cell
attention ``beta`` is *not* detached, which is what the authors' reference training
code does (it returns ``alpha`` and ``gamma`` detached and ``beta`` attached). Use
``"none"`` to let gradients flow through all attention weights or ``"all"`` to
detach all of them. The attention used *inside* the forward pass (to form the
patch/bag/slide embeddings) is never detached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from napari_mran.model.mran import BagOutput, SlideOutput

__all__ = ["upstream_loss", "downstream_loss", "ramp", "class_weights_from_counts", "DEFAULT_LAMBDA"]

#: Lambda of the reference training.
DEFAULT_LAMBDA = 5.0

DetachMode = Literal["reference", "none", "all"]


def _weighted_ce(logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Per-sample cross-entropy of (M, C) logits -> (M,), ``class_weights[y] * -log softmax``."""
    if class_weights is not None:
        class_weights = class_weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, labels, weight=class_weights, reduction="none")


def _check_detach(detach_attention: str) -> None:
    if detach_attention not in ("reference", "none", "all"):
        raise ValueError(f"detach_attention must be 'reference', 'none' or 'all', got {detach_attention!r}")


def upstream_loss(
    out: BagOutput,
    labels: torch.Tensor,
    bag_weights: torch.Tensor,
    rho: float,
    lam: float = DEFAULT_LAMBDA,
    class_weights: torch.Tensor | None = None,
    detach_attention: DetachMode = "reference",
) -> torch.Tensor:
    """Upstream (bag/patch/cell) loss of one batch of ``n`` bags.

    ``mean_n(CE(bag) w) + lam rho mean_{n,P}(CE(patch) w alpha)
    + lam^2 rho mean_{n,P,K}(CE(cell) w alpha beta)``; every patch and cell carries
    its bag's label.

    Args:
        out: :class:`BagOutput` of the batch (bag_logits (n, C), alpha (n, P),
            patch_logits (n, P, C), beta (n, P, K), cell_logits (n, P, K, C)).
        labels: (n,) integer class labels of the bags (their slides' labels).
        bag_weights: (n,) bag weights ``w`` (1 in the first epoch, then ``gamma_i * N``).
        rho: ramp value, see :func:`ramp`.
        lam: Lambda (5 in the reference).
        class_weights: optional (C,) cross-entropy class weights.
        detach_attention: which attention weights are detached in the loss weights (module doc).

    Returns:
        Scalar loss tensor.
    """
    _check_detach(detach_attention)
    n, n_patches, n_cells, n_classes = out.cell_logits.shape
    labels = labels.reshape(n).long()
    w = bag_weights.reshape(n).to(out.bag_logits.dtype)
    alpha = out.alpha if detach_attention == "none" else out.alpha.detach()
    beta = out.beta.detach() if detach_attention == "all" else out.beta

    bag_term = (_weighted_ce(out.bag_logits, labels, class_weights) * w).mean()

    patch_labels = labels[:, None].expand(n, n_patches).reshape(-1)
    patch_ce = _weighted_ce(out.patch_logits.reshape(-1, n_classes), patch_labels, class_weights).reshape(n, n_patches)
    patch_term = (patch_ce * w[:, None] * alpha).mean()

    cell_labels = labels[:, None].expand(n, n_patches * n_cells).reshape(-1)
    cell_ce = _weighted_ce(out.cell_logits.reshape(-1, n_classes), cell_labels, class_weights)
    cell_ce = cell_ce.reshape(n, n_patches, n_cells)
    cell_term = (cell_ce * w[:, None, None] * alpha[:, :, None] * beta).mean()

    return bag_term + lam * rho * patch_term + lam * lam * rho * cell_term


def downstream_loss(
    out: SlideOutput,
    label: int | torch.Tensor,
    rho: float,
    lam: float = DEFAULT_LAMBDA,
    class_weights: torch.Tensor | None = None,
    detach_attention: DetachMode = "reference",
) -> torch.Tensor:
    """Downstream (slide) loss of one slide: ``CE(slide) + lam rho mean_i(CE(u_i) gamma_i)``.

    Args:
        out: :class:`SlideOutput` (slide_logits (C,), gamma (N,), bag_logits (N, C)).
        label: the slide's integer class label (int or 0-d/1-element tensor).
        rho: ramp value, see :func:`ramp`.
        lam: Lambda (5 in the reference).
        class_weights: optional (C,) cross-entropy class weights.
        detach_attention: ``"reference"``/``"all"`` detach gamma, ``"none"`` does not.

    Returns:
        Scalar loss tensor.
    """
    _check_detach(detach_attention)
    logits = out.slide_logits
    target = torch.as_tensor(label, device=logits.device).reshape(1).long()
    n_bags = out.bag_logits.shape[0]
    gamma = out.gamma if detach_attention == "none" else out.gamma.detach()
    slide_term = _weighted_ce(logits.reshape(1, -1), target, class_weights)[0]
    bag_ce = _weighted_ce(out.bag_logits, target.expand(n_bags), class_weights)
    return slide_term + lam * rho * (bag_ce * gamma).mean()


def ramp(epoch: int, n_epochs: int) -> float:
    """Ramp-up ``rho(e) = exp(-(1 - e / (E - 1))^2)`` for 0-based epoch ``e`` of ``E`` (1 when E == 1)."""
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    if not 0 <= epoch < n_epochs:
        raise ValueError(f"epoch must be in [0, {n_epochs - 1}], got {epoch}")
    if n_epochs == 1:
        return 1.0
    return math.exp(-((1.0 - epoch / (n_epochs - 1)) ** 2))


def class_weights_from_counts(counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Inverse-frequency class weights from per-class (slide) counts.

    ``w_c = (1 / n_c) / sum_k (1 / n_k)``: the weights sum to 1 and are inversely
    proportional to the counts. For two classes this is exactly the spec's
    ``w_0 = n_1 / (n_0 + n_1)``, ``w_1 = n_0 / (n_0 + n_1)``.

    Returns:
        (C,) float32 tensor.

    Raises:
        ValueError: fewer than two classes, or a count that is not a positive integer
            (every class needs at least one training slide).
    """
    values = [float(c) for c in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]
    if len(values) < 2:
        raise ValueError(f"need counts for at least two classes, got {values}")
    if any(not math.isfinite(c) or c <= 0 or c != int(c) for c in values):
        raise ValueError(f"every class needs a positive integer count (at least one slide), got {values}")
    inverse = [1.0 / c for c in values]
    total = sum(inverse)
    return torch.tensor([i / total for i in inverse], dtype=torch.float32)
