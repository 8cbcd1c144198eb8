"""Stain normalisation of a slide's bags before the model (``--stain-normalize``).

The slide's own stains are fitted once, on the tissue of the smallest pyramid level that
the input check and the tissue rule read anyway, and every bag is mapped from them to
the reference (the built-in H&E reference of :mod:`napari_mran.stain`).  A slide whose
stains cannot be fitted there (too little tissue, one stain) falls back to a fit per
bag; the provenance says which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Reader = Callable[[Any], tuple]


def slide_stain(method: str, lowres: np.ndarray, valid: np.ndarray | None
                ) -> tuple[Callable[[np.ndarray], np.ndarray] | None, dict[str, Any]]:
    """``(normalise one uint8 bag, provenance)`` for *method*; ``(None, {...})`` when off."""
    if method == "off":
        return None, {"method": "off"}
    from ..stain import default_reference, fit_reference, normalize

    reference = default_reference(method)
    image = np.asarray(lowres)[..., :3]
    if valid is not None:
        image = np.where(np.asarray(valid)[..., None], image, 255).astype(np.uint8)
    try:
        source = fit_reference(image, method, fitted_on="the slide's smallest level")
        fitted = "the slide's smallest level"
    except ValueError as exc:  # too little tissue or a single stain: per-bag fits
        source, fitted = None, f"each bag on its own ({exc})"
    info = {"method": method, "reference": reference.to_dict(),
            "source": None if source is None else source.to_dict(), "source_fitted_on": fitted}

    def apply(img: np.ndarray) -> np.ndarray:
        return np.asarray(normalize(img, reference, source=source))

    return apply, info


def normalised_reader(read: Reader, apply: Callable[[np.ndarray], np.ndarray] | None
                      ) -> Reader:
    """*read* with its image stain-normalised (in the decode threads); *read* when off."""
    if apply is None:
        return read

    def wrapped(item: Any) -> tuple:
        img, failures, valid_fraction = read(item)
        return (img if failures else apply(img)), failures, valid_fraction

    return wrapped
