"""MRAN: multi-scale representation attention network (model definition).

Implements ``docs/mran-spec.md`` sections 1-3: a ResNet-18 upstream branch that
turns one bag (a 1024 x 1024 image, 8 x 8 patches of 128 px) into cell, patch and
bag logits with norm-based attention at the cell and patch levels, and a downstream
MIL branch that pools the bag embeddings of one slide with norm-based bag attention.

Shapes use ``n`` bags, ``P = grid**2`` patches per bag (64), ``K = cell_grid**2``
cells per patch (16), ``E`` the embedding size (512 at width 1), ``H`` the hidden
size of the downstream branch (32), ``C`` classes and ``N`` bags of one slide.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from napari_mran.model.config import STRUCTURAL_FIELDS, MRANConfig, is_int
from napari_mran.model.resnet import ResNetTrunk

__all__ = [
    "MRANConfig",
    "BagOutput",
    "SlideOutput",
    "UpstreamBranch",
    "DownstreamBranch",
    "MRAN",
    "normalise_weights",
    "attention_from_norms",
]


class BagOutput(NamedTuple):
    """Upstream outputs for ``n`` bags (patch ``p = row * grid + col``, cell ``c = row * cell_grid + col``).

    Attributes:
        bag_logits: (n, C) logits ``W g + b`` of each bag.
        embedding: (n, E) bag embedding ``g = sum_p alpha_p e_p``.
        alpha: (n, P) patch attention (non-negative, sums to 1 per bag).
        patch_logits: (n, P, C) logits ``W e_p + b`` of each patch.
        beta: (n, P, K) cell attention (non-negative, sums to 1 per patch).
        cell_logits: (n, P, K, C) logits ``W x_c + b`` of each cell.
    """

    bag_logits: torch.Tensor
    embedding: torch.Tensor
    alpha: torch.Tensor
    patch_logits: torch.Tensor
    beta: torch.Tensor
    cell_logits: torch.Tensor


class SlideOutput(NamedTuple):
    """Downstream outputs for the ``N`` bags of one slide.

    Attributes:
        slide_logits: (C,) logits ``W1 s + b1`` of the slide.
        gamma: (N,) bag attention (non-negative, sums to 1).
        bag_logits: (N, C) downstream bag logits ``u_i = W1 h_i + b1``.
        hidden: (N, H) hidden bag representations ``h_i = W0 g_i + b0``.
    """

    slide_logits: torch.Tensor
    gamma: torch.Tensor
    bag_logits: torch.Tensor
    hidden: torch.Tensor


def normalise_weights(weights: torch.Tensor) -> torch.Tensor:
    """Divide non-negative ``weights`` (..., K) by their sum over the last axis.

    Where a row sums to zero (e.g. all norms are exactly zero) the row becomes uniform
    ``1 / K`` instead of NaN; every other row is exactly ``weights / sum`` (the
    guard changes nothing else, and its gradient stays finite).
    """
    total = weights.sum(dim=-1, keepdim=True)
    positive = total > 0
    safe_total = torch.where(positive, total, torch.ones_like(total))
    uniform = torch.full_like(weights, 1.0 / weights.shape[-1])
    return torch.where(positive, weights / safe_total, uniform)


def attention_from_norms(
    norms: torch.Tensor, threshold: float = 0.1, top_k: int | None = None
) -> torch.Tensor:
    """Norm-based attention of spec section 2/3 over the last axis of ``norms`` (..., K).

    ``a = norms / sum(norms)``; then either the threshold ``a = relu(a - threshold / K)``
    (skipped when ``threshold == 0``) or, with ``top_k``, all but the ``top_k``
    largest weights are zeroed (no threshold); finally ``a = a / sum(a)``.

    Returns:
        (..., K) non-negative weights summing to 1 along the last axis.
    """
    count = norms.shape[-1]
    weights = normalise_weights(norms)
    if top_k is not None:
        if not 1 <= top_k <= count:
            raise ValueError(f"top_k must be in [1, {count}], got {top_k}")
        keep = torch.zeros_like(weights, dtype=torch.bool)
        keep.scatter_(-1, weights.topk(top_k, dim=-1).indices, True)
        weights = torch.where(keep, weights, torch.zeros_like(weights))
    elif threshold > 0:
        weights = torch.relu(weights - threshold / count)
    return normalise_weights(weights)


def _float32_heads(t: torch.Tensor):
    """A context that switches autocast off for *t*'s device when it is on (else a no-op)."""
    kind = t.device.type
    if torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


class UpstreamBranch(nn.Module):
    """Bag -> patches -> cells: ResNet trunk, cell and patch attention, shared classifier.

    Attributes:
        trunk: :class:`ResNetTrunk` applied to every patch.
        classifier: the shared ``Linear(E, C)`` (W, b) used for cells, patches and bags.
    """

    def __init__(self, config: MRANConfig) -> None:
        super().__init__()
        self.grid = config.grid
        self.patch_px = config.patch_px
        self.cell_grid = config.cell_grid
        self.trunk = ResNetTrunk(config.width)
        self.classifier = nn.Linear(self.trunk.out_channels, config.n_classes)

    def split_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, G*S, G*S) -> (n * G * G, 3, S, S), patch index ``row * G + col``.

        Pure reshape/permute; a channels-last input gives channels-last patches.
        """
        n, ch = x.shape[0], x.shape[1]
        g, s = self.grid, self.patch_px
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # (n, H, W, 3) view -> (n, gr, s, gc, s, 3) -> (n, gr, gc, s, s, 3) -> NCHW view
            nhwc = x.permute(0, 2, 3, 1).reshape(n, g, s, g, s, ch)
            patches = nhwc.permute(0, 1, 3, 2, 4, 5).reshape(n * g * g, s, s, ch)
            return patches.permute(0, 3, 1, 2)
        patches = x.reshape(n, ch, g, s, g, s).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(n * g * g, ch, s, s)

    def forward(self, x: torch.Tensor, threshold: float, top_k_patches: int | None = None) -> BagOutput:
        """(n, 3, input_px, input_px) -> :class:`BagOutput`."""
        n = x.shape[0]
        n_patches = self.grid * self.grid
        n_cells = self.cell_grid * self.cell_grid
        features = self.trunk(self.split_patches(x))  # (n*P, E, cg, cg)
        if features.shape[-2:] != (self.cell_grid, self.cell_grid):
            raise RuntimeError(f"trunk produced a {tuple(features.shape[-2:])} map, expected {self.cell_grid}^2")
        dim = features.shape[1]
        # cell index c = row * cell_grid + col: flatten(2) is row-major over the map
        cells = features.flatten(2).transpose(1, 2).reshape(n, n_patches, n_cells, dim)  # (n, P, K, E)

        # Under autocast (bf16/fp16 on a GPU) only the trunk runs in reduced precision:
        # the norms, attention and classifier heads (a tiny share of the work) run in
        # float32, so alpha and beta stay exact distributions and rankings are kept.
        with _float32_heads(cells):
            if cells.dtype in (torch.float16, torch.bfloat16):
                cells = cells.float()
            beta = attention_from_norms(torch.linalg.vector_norm(cells, dim=-1), threshold)  # (n, P, K)
            patch_emb = (beta.unsqueeze(-1) * cells).sum(dim=-2)  # (n, P, E)
            cell_logits = self.classifier(cells)  # (n, P, K, C)
            patch_logits = self.classifier(patch_emb)  # (n, P, C)

            alpha = attention_from_norms(torch.linalg.vector_norm(patch_logits, dim=-1), threshold,
                                         top_k_patches)
            embedding = (alpha.unsqueeze(-1) * patch_emb).sum(dim=-2)  # (n, E)
            bag_logits = self.classifier(embedding)  # (n, C)
        return BagOutput(bag_logits, embedding, alpha, patch_logits, beta, cell_logits)


class DownstreamBranch(nn.Module):
    """MIL over the bag embeddings of one slide.

    Attributes:
        to_hidden: ``Linear(E, H)`` (W0, b0), no activation.
        classifier: ``Linear(H, C)`` (W1, b1), used for bags and the slide.
    """

    def __init__(self, config: MRANConfig) -> None:
        super().__init__()
        self.to_hidden = nn.Linear(config.embedding_dim, config.hidden)
        self.classifier = nn.Linear(config.hidden, config.n_classes)

    def forward(self, embeddings: torch.Tensor, threshold: float) -> SlideOutput:
        """(N, E) -> :class:`SlideOutput`."""
        hidden = self.to_hidden(embeddings)  # (N, H)
        bag_logits = self.classifier(hidden)  # (N, C)
        gamma = attention_from_norms(torch.linalg.vector_norm(bag_logits, dim=-1), threshold)  # (N,)
        slide = (gamma.unsqueeze(-1) * hidden).sum(dim=0)  # (H,)
        return SlideOutput(self.classifier(slide), gamma, bag_logits, hidden)


class MRAN(nn.Module):
    """The full model: :attr:`upstream` (bag level) and :attr:`downstream` (slide level).

    Args:
        config: the model configuration; default :class:`MRANConfig()` is the published
            binary model (ResNet-18, 1024 px bags, 8 x 8 patches, 4 x 4 cells).

    The configuration can be replaced (``model.config = dataclasses.replace(...)``) to
    change the threshold, class names, provenance or tiling, but not the fields that
    fix tensor shapes.
    """

    # Set by load_model (and by callers that load weights themselves): where the weights
    # came from, for provenance.  Annotations only: a fresh model has none of them.
    checkpoint_path: str
    checkpoint_sha256: str
    is_demo: bool
    stain_reference: dict | None  # the training cohort's stain reference (docs/stain.md)

    def __init__(self, config: MRANConfig | None = None) -> None:
        super().__init__()
        config = MRANConfig() if config is None else config
        if not isinstance(config, MRANConfig):
            raise TypeError(f"config must be an MRANConfig, got {type(config).__name__}")
        self._config = config
        self.upstream = UpstreamBranch(config)
        self.downstream = DownstreamBranch(config)

    @property
    def config(self) -> MRANConfig:
        """The (immutable) configuration of this model."""
        return self._config

    @config.setter
    def config(self, value: MRANConfig) -> None:
        if not isinstance(value, MRANConfig):
            raise TypeError(f"config must be an MRANConfig, got {type(value).__name__}")
        changed = [f for f in STRUCTURAL_FIELDS if getattr(value, f) != getattr(self._config, f)]
        if changed:
            raise ValueError(f"cannot change {', '.join(changed)} of a built model; build a new MRAN instead")
        self._config = value

    @property
    def n_classes(self) -> int:
        """Number of classes ``C``."""
        return self._config.n_classes

    @property
    def embedding_dim(self) -> int:
        """Bag embedding size ``E``."""
        return self.upstream.trunk.out_channels

    def forward_bags(self, x: torch.Tensor, top_k_patches: int | None = None) -> BagOutput:
        """Upstream pass over ``n`` bags.

        Args:
            x: (n, 3, input_px, input_px) float RGB in [0, 1] (no mean/std normalisation);
                contiguous or channels-last.
            top_k_patches: if given, keep only the ``k`` patches with the highest
                attention per bag (skipping the patch threshold) and renormalise.

        Returns:
            :class:`BagOutput` with (n, C), (n, E), (n, P), (n, P, C), (n, P, K), (n, P, K, C).
        """
        cfg = self._config
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"forward_bags expects an (n, 3, {cfg.input_px}, {cfg.input_px}) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if tuple(x.shape[1:]) != (3, cfg.input_px, cfg.input_px) or x.shape[0] < 1:
            raise ValueError(f"forward_bags expects (n >= 1, 3, {cfg.input_px}, {cfg.input_px}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"forward_bags expects float pixels in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
        if top_k_patches is not None and (not is_int(top_k_patches) or not 1 <= top_k_patches <= cfg.n_patches):
            raise ValueError(f"top_k_patches must be an integer in [1, {cfg.n_patches}], got {top_k_patches!r}")
        return self.upstream(x, cfg.threshold, top_k_patches)

    def forward_slide(self, embeddings: torch.Tensor) -> SlideOutput:
        """Downstream pass over the (N, E) bag embeddings of one slide -> :class:`SlideOutput`."""
        dim = self.embedding_dim
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[1] != dim:
            got = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(f"forward_slide expects an (N, {dim}) tensor of bag embeddings, got {got}")
        if embeddings.shape[0] < 1:
            raise ValueError("forward_slide needs at least one bag embedding")
        return self.downstream(embeddings, self._config.threshold)

    def forward(self, x: torch.Tensor, top_k_patches: int | None = None) -> BagOutput:
        """Same as :meth:`forward_bags`."""
        return self.forward_bags(x, top_k_patches)
