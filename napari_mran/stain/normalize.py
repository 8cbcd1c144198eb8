"""``normalize``: move a batch of H&E images to a reference's stains or colours."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import macenko, reinhard
from ._ops import tissue_pixels, to_batch
from .macenko import DegenerateStains
from .reference import StainReference, as_reference

__all__ = ["normalize"]


def _source_params(ref: StainReference, source: StainReference | None, be: Any,
                   od: Any) -> tuple[np.ndarray, np.ndarray]:
    """The source parameters of one image: *source*'s, or fitted on the image."""
    if source is not None:
        return (source.stains(), source.max_c()) if ref.method == "macenko" else \
            (source.mean(), source.std())
    fit = macenko.fit if ref.method == "macenko" else reinhard.fit
    return fit(tissue_pixels(be, od))


def normalize(images: Any, reference: StainReference | str | dict[str, Any] | None = None, *,
              source: StainReference | dict[str, Any] | None = None,
              return_applied: bool = False) -> Any:
    """Normalise the stains of *images* to *reference*.

    images: numpy uint8 RGB ``(n, H, W, 3)`` or ``(H, W, 3)`` -> the same, uint8; or
        torch float RGB in [0, 1] ``(n, 3, H, W)`` or ``(3, H, W)`` on any device -> the
        same shape, dtype and device, in [0, 1] (computed there, float32).
    reference: a :class:`StainReference`, its ``to_dict()``, a method name
        (``"macenko"`` / ``"reinhard"``: the built-in H&E reference), or None (Macenko).
    source: the images' own stains, fitted once (e.g. with :func:`fit_reference` on a
        few bags of the slide) and used for every image; None: each image is fitted on
        its own tissue pixels.
    return_applied: also return a bool array (n,): False for the images left
        unchanged because they hold too little tissue or, for Macenko, not two stains.

    Glass stays as it was: pixels with mean OD <= 0.08 are returned unchanged, pixels
    from mean OD 0.16 up are fully normalised, with a linear ramp in between.
    """
    ref = as_reference(reference)
    src = None if source is None else as_reference(source)
    if src is not None and src.method != ref.method:
        raise ValueError(f"the source is a {src.method} fit, the reference {ref.method}")
    batch = to_batch(images)
    n = batch.n
    applied = np.zeros(n, bool)
    matrices = np.repeat(np.eye(3)[None], n, 0)
    offsets = np.zeros((n, 3))
    for i in range(n):
        try:
            a, b = _source_params(ref, src, batch.be, batch.od[i])
        except DegenerateStains:
            continue
        applied[i] = True
        if ref.method == "macenko":
            matrices[i] = macenko.transform(a, b, ref.stains(), ref.max_c())
        else:
            matrices[i], offsets[i] = reinhard.transform(a, b, ref.mean(), ref.std())
    if not applied.any():
        out = batch.intensity
    elif ref.method == "macenko":
        out = batch.be.where_rows(applied, macenko.apply(batch, matrices), batch.intensity)
    else:
        out = batch.be.where_rows(applied, reinhard.apply(batch, matrices, offsets),
                                  batch.intensity)
    result = batch.output(out)
    return (result, applied) if return_applied else result
