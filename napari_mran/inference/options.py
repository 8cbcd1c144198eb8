"""One set of analysis options, built by the CLI, the widget, cohort runs and evaluation.

:class:`AnalysisOptions` is frozen and validated when made: a bad value is a
ValueError naming the option, before anything is read or written.  :meth:`key` is the
part that changes the stored numbers -- what decides whether a stored result can be
reused -- in a canonical, JSON-comparable form.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..roi import Region
from ..vocab import (AMP_MODES, EDGE_POLICIES, STAIN_NORMALIZATIONS, TISSUE_METHODS,
                     check_choice, parse_device)

#: abort a slide when more than this fraction of its tissue bags fail to decode
DEFAULT_MAX_FAILED_FRACTION = 0.1

#: the options that change the stored numbers (the rest change them at float tolerance
#: at most: device, batch size, decode threads, compile)
KEY_FIELDS = ("bag_px", "bag_um", "tissue_method", "tissue_options", "top_k_patches", "amp",
              "mpp", "edge")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return v


def _reference_digest(path: str, method: str) -> str:
    """sha256 of the stain reference fitted from *path* (cached per file and method)."""
    import hashlib

    from ..stain.user import read_stain_reference

    ref = read_stain_reference(path, method).to_dict()
    return hashlib.sha256(json.dumps(ref, sort_keys=True).encode()).hexdigest()


def _amp(value: Any) -> str:
    if value is True:
        return "auto"
    if value is False or value is None:
        return "off"
    return check_choice("amp", value, AMP_MODES)


def _mpp(value: Any) -> float | tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"mpp must be a number or an (x, y) pair, not {value!r}")
        return (_positive_float("mpp", value[0]), _positive_float("mpp", value[1]))
    return _positive_float("mpp", value)


@dataclass(frozen=True)
class AnalysisOptions:
    """How to analyse a slide (see :func:`napari_mran.analysis.analyze_slide`)."""

    # -- change the stored numbers (key)
    bag_px: int | None = None
    bag_um: float | None = None
    tissue_method: str = "reference"
    tissue_options: dict[str, Any] = field(default_factory=dict)
    top_k_patches: int | None = None
    amp: str = "auto"
    mpp: float | tuple[float, float] | None = None
    edge: str = "pad"
    stain_normalize: str = "off"
    roi: Region | None = None  # analyse only the bags meeting this region (docs/roi.md)
    #: the stain reference file for stain_normalize (docs/stain.md); None: the model's
    #: training-cohort reference if it has one, else the built-in one
    stain_reference: str | None = None
    # -- decide whether a slide is analysed at all
    allow_non_brightfield: bool = False
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION
    # -- how fast (results agree to float tolerance)
    device: str = "auto"
    batch_size: int | str = "auto"
    num_workers: int | None = None
    prefetch: int | None = None
    compile: bool | str = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if self.bag_px is not None:
            set_(self, "bag_px", _positive_int("bag_px", self.bag_px, 32))
        if self.bag_um is not None:
            set_(self, "bag_um", _positive_float("bag_um", self.bag_um))
        if self.bag_px is not None and self.bag_um is not None:
            raise ValueError("give the bag size in px or in µm, not both")
        check_choice("tissue_method", self.tissue_method, TISSUE_METHODS)
        check_choice("edge", self.edge, EDGE_POLICIES)
        check_choice("stain_normalize", self.stain_normalize, STAIN_NORMALIZATIONS)
        set_(self, "tissue_options", dict(self.tissue_options or {}))
        if self.stain_reference is not None:
            set_(self, "stain_reference", os.fspath(self.stain_reference))
            if self.stain_normalize == "off":
                raise ValueError("stain_reference needs stain_normalize macenko or reinhard")
        if self.roi is not None and not isinstance(self.roi, Region):
            raise ValueError(f"roi must be a napari_mran.roi.Region or None, not "
                             f"{type(self.roi).__name__}")
        if self.top_k_patches is not None:
            k = _positive_int("top_k_patches", self.top_k_patches)
            if k > 64:
                raise ValueError(f"top_k_patches must be 1..64, not {k}")
        set_(self, "amp", _amp(self.amp))
        set_(self, "mpp", _mpp(self.mpp))
        set_(self, "allow_non_brightfield", bool(self.allow_non_brightfield))
        f = self.max_failed_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= float(f) <= 1.0:
            raise ValueError(f"max_failed_fraction must be in [0, 1], not {f!r}")
        set_(self, "max_failed_fraction", float(f))
        set_(self, "device", parse_device(self.device))
        if self.batch_size != "auto":
            set_(self, "batch_size", _positive_int("batch_size", self.batch_size))
        for name in ("num_workers", "prefetch"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', not {self.compile!r}")

    # ------------------------------------------------------------------ views
    def replace(self, **changes: Any) -> AnalysisOptions:
        """A copy with *changes* (validated again)."""
        return dataclasses.replace(self, **changes)

    def key(self) -> dict[str, Any]:
        """The result-affecting options, canonical and JSON-comparable: two results
        made with equal keys by the same model from the same slide file agree."""
        raw = {name: getattr(self, name) for name in KEY_FIELDS}
        if self.stain_normalize != "off":  # absent when off: keys of earlier stores hold
            raw["stain_normalize"] = self.stain_normalize
        if self.stain_reference is not None:  # the fitted reference, not the file name
            raw["stain_reference"] = _reference_digest(self.stain_reference,
                                                       self.stain_normalize)
        if self.roi is not None:  # absent without a region: keys of earlier stores hold
            raw["roi"] = self.roi.sha256
        if isinstance(raw["mpp"], tuple):
            raw["mpp"] = list(raw["mpp"])
        return json.loads(json.dumps(raw, sort_keys=True, default=str, allow_nan=False))

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``analyze_slide`` (``mpp`` goes to ``open_slide``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "mpp"}

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> AnalysisOptions:
        """Build from a dict, ignoring None values (defaults apply); unknown names are
        a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown analysis option(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in values.items() if v is not None})
