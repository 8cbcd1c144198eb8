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
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from napari_mran.model.resnet import TRUNK_STRIDE, ResNetTrunk, stage_widths

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

# Generous sanity caps: far above anything meaningful, far below what would exhaust memory.
_MAX_CLASSES = 1000
_MAX_WIDTH = 8.0
_MAX_HIDDEN = 65536
_MAX_PX = 1 << 20

# Fields that fix the tensor shapes of a model; they cannot change on a built model.
_STRUCTURAL_FIELDS = ("n_classes", "width", "hidden", "input_px", "patch_px", "grid", "cell_grid")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class MRANConfig:
    """Everything needed to rebuild an MRAN and interpret its outputs (JSON-serialisable).

    Attributes:
        n_classes: number of classes ``C`` (>= 2).
        class_names: one unique, non-empty name per class; defaults to ``class_0``, ``class_1``, ...
        width: ResNet width multiplier (stage widths ``round(64 w)``, ..., ``round(512 w)``);
            the embedding size ``E`` is the last width. 1.0 is the published model.
        hidden: hidden units of the downstream branch (32 in the paper).
        threshold: attention threshold ``t`` applied at every level: weights below
            ``t / K`` (cells), ``t / P`` (patches), ``t / N`` (bags) are removed before
            renormalising. 0.1 in the paper; 0 disables it. Must be in ``[0, 1)``.
        bag_px: side of a bag at level 0 of the slide, in pixels (2048 in the paper).
        input_px: side of the bag image fed to the network (1024); ``grid * patch_px``.
        patch_px: side of one patch in network pixels (128); ``cell_grid * 32``.
        grid: patches per bag side (8).
        cell_grid: cells per patch side (4), the side of the trunk's output map.
        provenance: free-form, JSON-serialisable training/import provenance.
        tiling: free-form, JSON-serialisable tiling parameters (tissue filter, level, ...).
    """

    n_classes: int = 2
    class_names: tuple[str, ...] | None = None
    width: float = 1.0
    hidden: int = 32
    threshold: float = 0.1
    bag_px: int = 2048
    input_px: int = 1024
    patch_px: int = 128
    grid: int = 8
    cell_grid: int = 4
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    tiling: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise fields in place
        for name in ("n_classes", "hidden", "bag_px", "input_px", "patch_px", "grid", "cell_grid"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"MRANConfig.{name} must be an integer, got {value!r}")
        if not 2 <= self.n_classes <= _MAX_CLASSES:
            raise ValueError(f"MRANConfig.n_classes must be in [2, {_MAX_CLASSES}], got {self.n_classes}")
        if not 1 <= self.hidden <= _MAX_HIDDEN:
            raise ValueError(f"MRANConfig.hidden must be in [1, {_MAX_HIDDEN}], got {self.hidden}")
        for name in ("bag_px", "input_px", "patch_px", "grid", "cell_grid"):
            value = getattr(self, name)
            if not 1 <= value <= _MAX_PX:
                raise ValueError(f"MRANConfig.{name} must be in [1, {_MAX_PX}], got {value}")

        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)):
            raise ValueError(f"MRANConfig.width must be a number, got {self.width!r}")
        width = float(self.width)
        if not (math.isfinite(width) and 0.0 < width <= _MAX_WIDTH):
            raise ValueError(f"MRANConfig.width must be in (0, {_MAX_WIDTH}], got {self.width!r}")
        stage_widths(width)  # raises ValueError if a stage would have no channels
        set_(self, "width", width)

        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"MRANConfig.threshold must be a number, got {self.threshold!r}")
        threshold = float(self.threshold)
        if not (math.isfinite(threshold) and 0.0 <= threshold < 1.0):
            raise ValueError(f"MRANConfig.threshold must be in [0, 1) (0 disables it), got {self.threshold!r}")
        set_(self, "threshold", threshold)

        if self.input_px != self.grid * self.patch_px:
            raise ValueError(
                f"MRANConfig: input_px ({self.input_px}) must equal grid * patch_px ({self.grid} * {self.patch_px})"
            )
        if self.patch_px != self.cell_grid * TRUNK_STRIDE:
            raise ValueError(
                f"MRANConfig: patch_px ({self.patch_px}) must equal cell_grid * {TRUNK_STRIDE} "
                f"({self.cell_grid} * {TRUNK_STRIDE}), the trunk's output map side"
            )

        names = self.class_names
        if names is None:
            names = tuple(f"class_{i}" for i in range(self.n_classes))
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
            raise ValueError(f"MRANConfig.class_names must be a list of strings, got {names!r}")
        names = tuple(names)
        if len(names) != self.n_classes:
            raise ValueError(f"MRANConfig.class_names has {len(names)} names for {self.n_classes} classes")
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"MRANConfig.class_names must be non-empty strings, got {list(names)!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"MRANConfig.class_names must be unique, got {list(names)!r}")
        set_(self, "class_names", names)

        for name in ("provenance", "tiling"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ValueError(f"MRANConfig.{name} must be a dict, got {type(value).__name__}")
            try:
                # Round trip: checks JSON-serialisability and takes a private copy.
                copy = json.loads(json.dumps(dict(value), allow_nan=False))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"MRANConfig.{name} is not JSON-serialisable: {exc}") from None
            set_(self, name, copy)

    # -- derived geometry -------------------------------------------------------------
    @property
    def n_patches(self) -> int:
        """Patches per bag ``P`` (64)."""
        return self.grid * self.grid

    @property
    def n_cells(self) -> int:
        """Cells per patch ``K`` (16)."""
        return self.cell_grid * self.cell_grid

    @property
    def embedding_dim(self) -> int:
        """Embedding size ``E`` (512 at width 1)."""
        return stage_widths(self.width)[-1]

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (class_names as a list)."""
        out = dataclasses.asdict(self)
        out["class_names"] = list(self.class_names or ())
        return out

    def to_json(self) -> str:
        """Compact, key-sorted JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MRANConfig:
        """Build and validate a config from :meth:`to_dict` output.

        Missing fields take their defaults; unknown fields are an error.

        Raises:
            ValueError: unknown field names or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an MRAN config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown MRAN config field(s): {', '.join(unknown)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> MRANConfig:
        """Inverse of :meth:`to_json`. Raises ValueError on bad JSON or bad values."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"MRAN config is not valid JSON: {exc}") from None
        return cls.from_dict(data)


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
        changed = [f for f in _STRUCTURAL_FIELDS if getattr(value, f) != getattr(self._config, f)]
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
        if top_k_patches is not None and (not _is_int(top_k_patches) or not 1 <= top_k_patches <= cfg.n_patches):
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
