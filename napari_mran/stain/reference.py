"""What images are normalised *to*: :class:`StainReference`, its JSON form, the
built-in H&E references and :func:`fit_reference`.

A reference holds the parameters of one method plus where they came from:

* ``macenko``: ``stain_matrix`` (rows H, E: unit OD vectors in R, G, B) and
  ``max_concentrations`` (the 99th percentile of each stain's concentration);
* ``reinhard``: ``means`` and ``stds`` of l, alpha, beta over tissue pixels;
* provenance: ``fitted_on`` (free text), ``n_images``, ``n_pixels`` (tissue pixels used).

The same class describes a *source*: the stains of one slide, fitted once and passed
to :func:`~napari_mran.stain.normalize` so that every bag of the slide is moved by the
same transform (see docs/stain.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..vocab import check_choice
from . import macenko, reinhard
from ._ops import MAX_FIT_PIXELS, is_tensor, to_batch, tissue_pixels

__all__ = ["DEFAULT_REFERENCES", "MAX_REFERENCE_PIXELS", "STAIN_METHODS", "StainReference",
           "as_reference", "default_reference", "fit_reference"]

STAIN_METHODS = ("macenko", "reinhard")
#: at most this many tissue pixels are pooled to fit a reference (spread evenly over
#: the images, at least ``MAX_FIT_PIXELS // 16`` each)
MAX_REFERENCE_PIXELS = 1 << 20
_FORMAT = 1
_FIELDS = {"macenko": ("stain_matrix", "max_concentrations"), "reinhard": ("means", "stds")}


def _floats(name: str, value: Any, shape: tuple[int, ...], positive: bool = False) -> Any:
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers of shape {shape}, not {value!r}") from None
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers of shape {shape}, not {value!r}")
    if positive and not np.all(arr > 0):
        raise ValueError(f"{name} must be positive, not {value!r}")
    return tuple(tuple(float(v) for v in row) for row in arr) if arr.ndim == 2 else \
        tuple(float(v) for v in arr)


@dataclass(frozen=True)
class StainReference:
    """The target (or a source) of stain normalisation; validated when made."""

    method: str
    stain_matrix: tuple[tuple[float, ...], ...] | None = None
    max_concentrations: tuple[float, ...] | None = None
    means: tuple[float, ...] | None = None
    stds: tuple[float, ...] | None = None
    fitted_on: str = ""
    n_images: int = 0
    n_pixels: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_choice("method", self.method, STAIN_METHODS)
        need = _FIELDS[self.method]
        for name in ("stain_matrix", "max_concentrations", "means", "stds"):
            value = getattr(self, name)
            if name not in need:
                if value is not None:
                    raise ValueError(f"{name} is not a parameter of {self.method}")
                continue
            if value is None:
                raise ValueError(f"a {self.method} reference needs {name}")
            shape = (2, 3) if name == "stain_matrix" else (2,) if name == "max_concentrations" \
                else (3,)
            set_(self, name, _floats(name, value, shape,
                                     positive=name in ("max_concentrations", "stds")))
        set_(self, "fitted_on", str(self.fitted_on))
        for name in ("n_images", "n_pixels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a whole number >= 0, not {v!r}")

    # ---------------------------------------------------------------- arrays
    def stains(self) -> np.ndarray:
        """(2, 3) float64: rows H, E (Macenko)."""
        return np.asarray(self.stain_matrix, np.float64)

    def max_c(self) -> np.ndarray:
        return np.asarray(self.max_concentrations, np.float64)

    def mean(self) -> np.ndarray:
        return np.asarray(self.means, np.float64)

    def std(self) -> np.ndarray:
        return np.asarray(self.stds, np.float64)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (plain lists, floats, ints and strings; no NaN)."""
        out: dict[str, Any] = {"format": _FORMAT, "method": self.method}
        for name in _FIELDS[self.method]:
            value = getattr(self, name)
            out[name] = [list(r) for r in value] if name == "stain_matrix" else list(value)
        out.update(fitted_on=self.fitted_on, n_images=self.n_images, n_pixels=self.n_pixels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StainReference:
        """The inverse of :meth:`to_dict`; a ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a stain reference is a mapping, not {type(data).__name__}")
        values = dict(data)
        fmt = values.pop("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"stain reference format {fmt!r} is not supported (only {_FORMAT})")
        names = {"method", "stain_matrix", "max_concentrations", "means", "stds", "fitted_on",
                 "n_images", "n_pixels"}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown stain reference field(s): {', '.join(unknown)}")
        if "method" not in values:
            raise ValueError("a stain reference needs its method")
        return cls(**values)


def _as_images(images: Any) -> list[Any]:
    """A list of images or batches (numpy uint8 or torch float) from what was given."""
    if isinstance(images, np.ndarray) or is_tensor(images):
        return [images]
    if isinstance(images, Iterable):
        out = list(images)
        if out:
            return out
    raise ValueError("fit_reference needs at least one image")


def fit_reference(images: Any, method: str = "macenko", *, fitted_on: str = "") -> StainReference:
    """Fit a reference on the tissue pixels of *images*, pooled.

    *images*: one image or batch, or a list of them, each numpy uint8 ``(H, W, 3)`` /
    ``(n, H, W, 3)`` or torch float ``(3, H, W)`` / ``(n, 3, H, W)`` in [0, 1] (e.g. bags
    of a training cohort, or a region a user picked).  Raises ValueError when they hold
    too little tissue or not two stains (Macenko).
    """
    check_choice("method", method, STAIN_METHODS)
    batches = [to_batch(im) for im in _as_images(images)]
    count = sum(b.n for b in batches)
    per_image = max(MAX_FIT_PIXELS // 16, MAX_REFERENCE_PIXELS // max(1, count))
    od = np.concatenate([tissue_pixels(b.be, b.od[i], per_image)
                         for b in batches for i in range(b.n)], axis=1)
    try:
        if method == "macenko":
            stains, max_c = macenko.fit(od)
            params: dict[str, Any] = {"stain_matrix": stains, "max_concentrations": max_c}
        else:
            mean, std = reinhard.fit(od)
            params = {"means": mean, "stds": std}
    except macenko.DegenerateStains as exc:
        raise ValueError(f"cannot fit a {method} stain reference: {exc}") from None
    return StainReference(method, fitted_on=fitted_on, n_images=count,
                          n_pixels=int(od.shape[1]), **params)


# Fitted by fit_reference on napari_mran/data/CMU-1-Small-Region.svs (real H&E, 2220 x
# 2967, level 0; 965,663 tissue pixels at a fixed stride); rounded to 4 places.
# tests/test_stain.py refits and compares.
_CMU = ("CMU-1-Small-Region.svs (bundled real H&E, Aperio, level 0): built-in default "
        "of napari_mran.stain")
_CMU_PIXELS = 965663
DEFAULT_REFERENCES: dict[str, StainReference] = {
    "macenko": StainReference(
        "macenko",
        stain_matrix=((0.8082, 0.5105, 0.2935), (0.1738, 0.9048, 0.3887)),
        max_concentrations=(3.1479, 3.0365),
        fitted_on=_CMU, n_images=1, n_pixels=_CMU_PIXELS),
    "reinhard": StainReference(
        "reinhard", means=(-0.6977, -0.0768, 0.0262), stds=(0.3770, 0.0842, 0.0211),
        fitted_on=_CMU, n_images=1, n_pixels=_CMU_PIXELS),
}

def default_reference(method: str = "macenko") -> StainReference:
    """The built-in H&E reference of *method* (docs/stain.md has its numbers)."""
    return DEFAULT_REFERENCES[check_choice("method", method, STAIN_METHODS)]


def as_reference(reference: StainReference | str | dict[str, Any] | None,
                 default_method: str = "macenko") -> StainReference:
    """A :class:`StainReference` from one, a method name (its built-in default), a
    :meth:`StainReference.to_dict` mapping, or None (the built-in Macenko)."""
    if isinstance(reference, StainReference):
        return reference
    if reference is None:
        return default_reference(default_method)
    if isinstance(reference, str):
        return default_reference(reference)
    if isinstance(reference, dict):
        return StainReference.from_dict(reference)
    raise ValueError(f"not a stain reference: {reference!r}")

