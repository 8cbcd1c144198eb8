"""The configuration of an MRAN: sizes, threshold, class names and provenance.

:class:`MRANConfig` is frozen, validated on construction and JSON-serialisable; it is
stored in every checkpoint (``mran_config`` metadata) and fixes the tensor shapes of
the model built from it (:data:`STRUCTURAL_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from napari_mran.model.resnet import TRUNK_STRIDE, stage_widths

__all__ = ["MRANConfig", "STRUCTURAL_FIELDS", "is_int"]

# Generous sanity caps: far above anything meaningful, far below what would exhaust memory.
_MAX_CLASSES = 1000
_MAX_WIDTH = 8.0
_MAX_HIDDEN = 65536
_MAX_PX = 1 << 20

# Fields that fix the tensor shapes of a model; they cannot change on a built model.
STRUCTURAL_FIELDS = ("n_classes", "width", "hidden", "input_px", "patch_px", "grid", "cell_grid")


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
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
        self._check_integers()
        set_(self, "width", self._checked_width())
        set_(self, "threshold", self._checked_threshold())
        self._check_geometry()
        set_(self, "class_names", self._checked_class_names())
        for name in ("provenance", "tiling"):
            set_(self, name, _json_copy(name, getattr(self, name)))

    # -- validation (in __post_init__'s order) -------------------------------------------
    def _check_integers(self) -> None:
        for name in ("n_classes", "hidden", "bag_px", "input_px", "patch_px", "grid", "cell_grid"):
            value = getattr(self, name)
            if not is_int(value):
                raise ValueError(f"MRANConfig.{name} must be an integer, got {value!r}")
        if not 2 <= self.n_classes <= _MAX_CLASSES:
            raise ValueError(f"MRANConfig.n_classes must be in [2, {_MAX_CLASSES}], got {self.n_classes}")
        if not 1 <= self.hidden <= _MAX_HIDDEN:
            raise ValueError(f"MRANConfig.hidden must be in [1, {_MAX_HIDDEN}], got {self.hidden}")
        for name in ("bag_px", "input_px", "patch_px", "grid", "cell_grid"):
            value = getattr(self, name)
            if not 1 <= value <= _MAX_PX:
                raise ValueError(f"MRANConfig.{name} must be in [1, {_MAX_PX}], got {value}")

    def _checked_width(self) -> float:
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)):
            raise ValueError(f"MRANConfig.width must be a number, got {self.width!r}")
        width = float(self.width)
        if not (math.isfinite(width) and 0.0 < width <= _MAX_WIDTH):
            raise ValueError(f"MRANConfig.width must be in (0, {_MAX_WIDTH}], got {self.width!r}")
        stage_widths(width)  # raises ValueError if a stage would have no channels
        return width

    def _checked_threshold(self) -> float:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"MRANConfig.threshold must be a number, got {self.threshold!r}")
        threshold = float(self.threshold)
        if not (math.isfinite(threshold) and 0.0 <= threshold < 1.0):
            raise ValueError(f"MRANConfig.threshold must be in [0, 1) (0 disables it), got {self.threshold!r}")
        return threshold

    def _check_geometry(self) -> None:
        if self.input_px != self.grid * self.patch_px:
            raise ValueError(
                f"MRANConfig: input_px ({self.input_px}) must equal grid * patch_px ({self.grid} * {self.patch_px})"
            )
        if self.patch_px != self.cell_grid * TRUNK_STRIDE:
            raise ValueError(
                f"MRANConfig: patch_px ({self.patch_px}) must equal cell_grid * {TRUNK_STRIDE} "
                f"({self.cell_grid} * {TRUNK_STRIDE}), the trunk's output map side"
            )

    def _checked_class_names(self) -> tuple[str, ...]:
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
        return names

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


def _json_copy(name: str, value: Any) -> dict[str, Any]:
    """A private copy of a free-form field, checked to be a JSON-serialisable dict."""
    if not isinstance(value, Mapping):
        raise ValueError(f"MRANConfig.{name} must be a dict, got {type(value).__name__}")
    try:
        # Round trip: checks JSON-serialisability and takes a private copy.
        copy: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"MRANConfig.{name} is not JSON-serialisable: {exc}") from None
    return copy
