"""A stain reference the user picks (``--stain-reference FILE``), fitted once.

*FILE* is one of

* a JSON :class:`~napari_mran.stain.StainReference` (its ``to_dict()``), or the
  ``{"method": ..., "reference": {...}}`` document a trained model carries
  (``model.stain_reference``, a result's provenance);
* an image region: PNG / JPEG, or a single-page RGB TIFF;
* a slide: every format :func:`napari_mran.slide.open_slide` reads; its smallest pyramid
  level is fitted (its tissue: glass and pixels without data do not count), the same
  level that analysis fits each slide's own stains on.

A file is read and fitted once per process for each method (the cache is keyed by its
resolved path, size and modification time).  Every problem is a ``ValueError``
``"<file>: <reason>"``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..vocab import check_choice
from ._ops import glass_where_no_data
from .reference import STAIN_METHODS, StainReference, fit_reference

__all__ = ["IMAGE_SUFFIXES", "MAX_REGION_SIDE", "check_stain_reference_file",
           "fitted_at_full_resolution", "read_stain_reference", "reference_of_document"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: the end of ``fitted_on`` (``"user: <name> (<what>)"``) for pixels fitted at their
#: file's own resolution: :func:`_read_pixels`'s image region, or a level-0 smallest level
_FULL_RESOLUTION = re.compile(r" \((image region \d+ x \d+|smallest level 0, \d+ x \d+)\)$")
#: a region or a slide's smallest level larger than this (per side) is refused
MAX_REGION_SIDE = 16384


def reference_of_document(doc: Any, method: str, where: str) -> StainReference:
    """The reference of a JSON document: a ``StainReference.to_dict()``, or a model's
    ``{"method", "reference"}``; ValueError ``"<where>: <reason>"`` (wrong method too)."""
    if isinstance(doc, dict) and isinstance(doc.get("reference"), dict):
        doc = doc["reference"]
    try:
        ref = StainReference.from_dict(doc)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a stain reference: {exc}") from None
    if ref.method != method:
        raise ValueError(f"{where}: a {ref.method} stain reference, but the normalisation "
                         f"is {method} (use --stain-normalize {ref.method}, or fit another)")
    return ref


def _stat(path: str | os.PathLike[str]) -> tuple[Path, os.stat_result]:
    """(resolved path, its stat) of a stain reference file; ValueError
    ``"<file>: <reason>"`` when it is missing, unreadable or not a file."""
    p = Path(path).expanduser()
    try:
        st = p.resolve().stat()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the stain reference: "
                         f"{exc.strerror or exc}") from None
    if not p.is_file():
        raise ValueError(f"{path}: the stain reference is not a file")
    return p.resolve(), st


def check_stain_reference_file(path: str | os.PathLike[str]) -> Path:
    """The cheap part of :func:`read_stain_reference`: *path* exists and is a file
    (ValueError ``"<file>: <reason>"`` if not).  It reads no pixels, so a user interface
    can call it at once and leave the fit to a worker thread."""
    return _stat(path)[0]


def fitted_at_full_resolution(ref: StainReference) -> bool:
    """Whether *ref* was fitted by this module on pixels at their file's own full
    resolution: a PNG/JPEG region, or a slide or TIFF with one level (its smallest level
    is level 0), rather than on a pyramid's reduced smallest level."""
    fitted = ref.fitted_on
    return fitted.startswith("user: ") and _FULL_RESOLUTION.search(fitted) is not None


def read_stain_reference(path: str | os.PathLike[str], method: str) -> StainReference:
    """The *method* reference of the file *path* (module docstring), fitted once."""
    check_choice("method", method, STAIN_METHODS)
    resolved, st = _stat(path)
    return _cached(str(resolved), st.st_size, st.st_mtime_ns, method, str(path))


@functools.lru_cache(maxsize=16)
def _cached(resolved: str, size: int, mtime_ns: int, method: str, shown: str
            ) -> StainReference:
    p = Path(resolved)
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{shown}: not a readable JSON stain reference: {exc}") from None
        return reference_of_document(doc, method, shown)
    image, what = _read_pixels(p, shown)
    try:
        return fit_reference(image, method, fitted_on=f"user: {p.name} ({what})")
    except ValueError as exc:
        raise ValueError(f"{shown}: cannot fit a stain reference on it: {exc}") from None


def _read_pixels(p: Path, shown: str) -> tuple[np.ndarray, str]:
    """(uint8 RGB pixels, glass where there is no data; a description) of an image or
    the smallest level of a slide."""
    if p.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(p) as im:
                if max(im.size) > MAX_REGION_SIDE:
                    raise ValueError(f"{shown}: the region is {im.size[0]} x {im.size[1]} px; "
                                     f"pick one of at most {MAX_REGION_SIDE} px per side")
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{shown}: not a readable image: {exc}") from None
        return rgb, f"image region {rgb.shape[1]} x {rgb.shape[0]}"
    return _slide_pixels(p, shown)


def _slide_pixels(p: Path, shown: str) -> tuple[np.ndarray, str]:
    from ..errors import MRANError
    from ..slide import open_slide

    try:
        with open_slide(p) as slide:
            lv = slide.smallest_level
            lw, lh = slide.level_dimensions[lv]
            if max(lw, lh) > MAX_REGION_SIDE:
                raise ValueError(f"{shown}: its smallest level is {lw} x {lh} px; pick a "
                                 f"region (PNG/TIFF) or a slide with a pyramid")
            rr = slide.read_region_ex((0, 0), lv, (lw, lh), on_error="record")
    except MRANError as exc:
        raise ValueError(f"{shown}: not a readable slide or image: "
                         f"{getattr(exc, 'reason', exc)}") from None
    rgb = glass_where_no_data(rr.pixels, rr.valid)
    return np.ascontiguousarray(rgb), f"smallest level {lv}, {lw} x {lh}"
