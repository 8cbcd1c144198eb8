"""Reinhard colour normalisation (Reinhard et al., IEEE CG&A 2001), vectorised.

Colours are matched in Reinhard's l-alpha-beta opponent space: RGB (here the
transmittance ``(I + 1) / 256``, so that black is not log 0) to LMS cone space by the
paper's matrix ``RGB_TO_LMS``, the base-10 log, then the decorrelating ``LOG_LMS_TO_LAB``
(l = achromatic, alpha = yellow-blue, beta = red-green).  The mean and the standard
deviation of each channel over the image's tissue pixels (OD >= 0.15 in every channel:
glass would dominate the statistics otherwise) are moved to the reference's:
``lab' = (lab - mean_src) * std_ref / std_src + mean_ref``.

Since lab is linear in log-LMS, the whole step is, per image, one 3 x 3 matrix and one
offset in log-LMS space (:func:`transform`), applied to every pixel in a batched product.

A fit is refused (:class:`~napari_mran.stain.macenko.DegenerateStains`: the image is left
unchanged) with fewer than ``MIN_TISSUE_PIXELS`` tissue pixels or a channel whose
standard deviation is below ``MIN_STD`` (a flat colour: the ratio of deviations would
blow noise up).  An image with one stain only is *not* refused: Reinhard moves its
colours toward the reference's mix of H and E (the method's known limit, docs/stain.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._ops import MIN_TISSUE_PIXELS, Backend, Batch
from .macenko import DegenerateStains

__all__ = ["LOG_LMS_TO_LAB", "MIN_STD", "RGB_TO_LMS", "apply", "fit", "transform"]

#: RGB -> LMS (Reinhard et al. 2001, eq. 1 and 2 combined)
RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402],
                       [0.1967, 0.7244, 0.0782],
                       [0.0241, 0.1288, 0.8444]])
#: log10(LMS) -> l, alpha, beta (Reinhard et al. 2001, eq. 4)
LOG_LMS_TO_LAB = (np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)])
                  @ np.array([[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]))
#: natural log(LMS) -> l, alpha, beta (the log10 folded in)
_LN_LMS_TO_LAB = LOG_LMS_TO_LAB / np.log(10.0)
_LMS_TO_RGB = np.linalg.inv(RGB_TO_LMS)
_LAB_TO_LN_LMS = np.linalg.inv(_LN_LMS_TO_LAB)

MIN_STD = 1e-3


def _ln_lms(be: Backend, od: Any) -> Any:
    """ln(LMS) of (..., 3, P) OD pixels (transmittance exp(-OD) = (I + 1) / 256)."""
    return be.xp.log(be.const(RGB_TO_LMS) @ be.xp.exp(-od))


def fit(od: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and standard deviations (3,) of l, alpha, beta over tissue OD pixels (3, k)
    (host, float64)."""
    k = int(od.shape[1])
    if k < MIN_TISSUE_PIXELS:
        raise DegenerateStains(f"{k} tissue pixels (fewer than {MIN_TISSUE_PIXELS})")
    lab = _LN_LMS_TO_LAB @ np.log(RGB_TO_LMS @ np.exp(-od))
    mean, std = lab.mean(1), lab.std(1)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise DegenerateStains("the colour statistics are not finite")
    if std.min() < MIN_STD:
        raise DegenerateStains(f"flat colour (a channel's standard deviation is {std.min():.2g})")
    return mean, std


def transform(mean: np.ndarray, std: np.ndarray, ref_mean: np.ndarray,
              ref_std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, c) with ``ln LMS' = M ln LMS + c`` (pixels as columns): the statistics match."""
    gain = np.asarray(ref_std, np.float64) / np.asarray(std, np.float64)
    offset = np.asarray(ref_mean, np.float64) - np.asarray(mean, np.float64) * gain
    matrix = _LAB_TO_LN_LMS @ (gain[:, None] * _LN_LMS_TO_LAB)
    return matrix, _LAB_TO_LN_LMS @ offset


def apply(batch: Batch, matrices: np.ndarray, offsets: np.ndarray) -> Any:
    """Normalised intensities (n, 3, P), glass kept, from per-image (n, 3, 3) matrices
    and (n, 3) offsets of :func:`transform`."""
    be = batch.be
    x = be.const(matrices) @ _ln_lms(be, batch.od)
    x += be.const(offsets[:, :, None])
    rgb = be.const(_LMS_TO_RGB) @ be.xp.exp(x)
    rgb *= 256.0
    rgb -= 1.0
    return batch.blend(rgb)
