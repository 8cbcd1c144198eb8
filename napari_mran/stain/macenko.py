"""Macenko stain normalisation (Macenko et al., ISBI 2009), vectorised over a batch.

Fit (on the OD of an image's tissue pixels, ``_ops.tissue_pixels``):

1. the plane of the two largest eigenvectors of the OD covariance (the plane the H and
   E stain vectors span);
2. the angle of every pixel's projection in that plane, and its 1st and 99th
   percentiles (``ANGLE_PERCENTILE``): the two extreme directions are the stain vectors
   (robust extremes, not the min and max, which noise decides);
3. the vector with the larger red OD is haematoxylin (it absorbs red more than eosin
   does), the other eosin; when their red ODs are alike, haematoxylin is the sparser
   stain (nuclei; eosin covers most of the tissue); both scaled to unit length;
4. concentrations by least squares (``C = pinv(S) OD``) and their 99th percentile per
   stain (``MAX_C_PERCENTILE``): the "max concentrations".

Normalise: ``C_ref = C * maxC_ref / maxC_src`` and ``OD_ref = S_ref C_ref``.  The whole
step is one 3 x 3 matrix per image (``S_ref diag(maxC_ref / maxC_src) pinv(S_src)``),
applied to every pixel in one batched matrix product.

A fit is refused (:class:`DegenerateStains`, and normalisation leaves that image
unchanged) when it cannot find two stains: too few tissue pixels, two stain vectors
closer than ``MIN_STAIN_ANGLE_DEG``, a vector with a clearly negative OD component, or
a stain whose max concentration is below ``MIN_MAX_CONCENTRATION``.  Noise (JPEG) can
spread a one-stain image's angles past ``MIN_STAIN_ANGLE_DEG``: such an image is then
fitted with two close vectors (docs/stain.md, "Limits").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._ops import MIN_TISSUE_PIXELS, Batch, od_to_intensity

__all__ = ["ANGLE_PERCENTILE", "COVERAGE_RATIO", "MAX_C_PERCENTILE", "MIN_COMPONENT",
           "MIN_MAX_CONCENTRATION", "MIN_STAIN_ANGLE_DEG", "RED_MARGIN", "DegenerateStains",
           "apply", "coverage", "fit", "transform"]

ANGLE_PERCENTILE = 1.0
MAX_C_PERCENTILE = 99.0
#: two stain vectors closer than this are one stain seen twice
MIN_STAIN_ANGLE_DEG = 5.0
#: a stain vector component below this is not a physical absorbance
MIN_COMPONENT = -0.1
#: a stain whose 99th-percentile concentration is below this is absent from the image
MIN_MAX_CONCENTRATION = 0.05
#: the red rule (haematoxylin absorbs more red) decides which stain is which when the
#: two vectors' red components differ by at least this ...
RED_MARGIN = 0.15
#: ... else coverage does, when the sparser stain covers less than this share of what
#: the other covers
COVERAGE_RATIO = 0.5


class DegenerateStains(ValueError):
    """The image cannot be fitted (too little tissue, one stain only, a flat colour);
    the reason is the message."""


def _plane(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two leading eigenvectors of a 3 x 3 covariance, with fixed signs (the first
    points into positive OD, the second has a non-negative red component)."""
    _, vecs = np.linalg.eigh(cov)
    e1, e2 = vecs[:, 2], vecs[:, 1]
    if e1.sum() < 0:
        e1 = -e1
    if e2[0] < 0:
        e2 = -e2
    return e1, e2


def coverage(stains: np.ndarray, od: np.ndarray) -> np.ndarray:
    """Per stain (rows of *stains*): the fraction of the pixels *od* (3, k) whose
    concentration exceeds half of that stain's 99th-percentile concentration."""
    conc = np.linalg.pinv(stains.T) @ od
    top = np.percentile(conc, MAX_C_PERCENTILE, axis=1)
    return (conc > 0.5 * top[:, None]).mean(axis=1)


def _assign(pair: np.ndarray, od: np.ndarray) -> np.ndarray:
    """Rows (H, E) from the two unit stain directions *pair*.  Haematoxylin absorbs red
    more than eosin does: where their red components differ by at least ``RED_MARGIN``
    (every real H&E fit seen: CMU-1 0.81 against 0.17) that decides.  Where they do not
    (a scanner or stain that makes the two vectors alike in red), haematoxylin is the
    **sparser** stain (nuclei; eosin covers most of the tissue) by :func:`coverage`, if
    the coverages differ clearly (the smaller below ``COVERAGE_RATIO`` of the larger);
    else the red rule still (docs/stain.md, "Which stain is which")."""
    by_red = 0 if pair[0, 0] > pair[1, 0] else 1
    if abs(float(pair[0, 0] - pair[1, 0])) < RED_MARGIN:
        cov = coverage(pair, od)
        if float(cov.max()) > 0 and float(cov.min()) < COVERAGE_RATIO * float(cov.max()):
            by_red = int(np.argmin(cov))
    return pair[[by_red, 1 - by_red]]


def fit(od: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stain matrix (2, 3: rows H, E, unit OD vectors in R, G, B) and max
    concentrations (2,) from tissue OD pixels (3, k) (host, float64);
    :class:`DegenerateStains` when there are not two stains to find."""
    k = int(od.shape[1])
    if k < MIN_TISSUE_PIXELS:
        raise DegenerateStains(f"{k} tissue pixels (fewer than {MIN_TISSUE_PIXELS})")
    centred = od - od.mean(1)[:, None]
    cov = (centred @ centred.T) / (k - 1)
    if not np.all(np.isfinite(cov)):
        raise DegenerateStains("the optical densities are not finite")
    e1, e2 = _plane(cov)
    proj = np.stack([e1, e2]) @ od                                     # (2, k)
    phi = np.arctan2(proj[1], proj[0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100.0 - ANGLE_PERCENTILE])
    v_lo = e1 * np.cos(lo) + e2 * np.sin(lo)
    v_hi = e1 * np.cos(hi) + e2 * np.sin(hi)
    stains = _assign(np.stack([v_lo / np.linalg.norm(v_lo), v_hi / np.linalg.norm(v_hi)]), od)
    angle = float(np.degrees(np.arccos(np.clip(stains[0] @ stains[1], -1.0, 1.0))))
    if angle < MIN_STAIN_ANGLE_DEG:
        raise DegenerateStains(f"one stain only (the two stain vectors are {angle:.1f} "
                               f"degrees apart, fewer than {MIN_STAIN_ANGLE_DEG:g})")
    if stains.min() < MIN_COMPONENT:
        raise DegenerateStains(f"a stain vector has a negative absorbance ({stains.min():.2f})")
    conc = np.linalg.pinv(stains.T) @ od                               # (2, k)
    max_c = np.percentile(conc, MAX_C_PERCENTILE, axis=1)
    if not np.all(np.isfinite(max_c)) or max_c.min() < MIN_MAX_CONCENTRATION:
        raise DegenerateStains(f"one stain only (max concentrations {max_c[0]:.3f} H, "
                               f"{max_c[1]:.3f} E; minimum {MIN_MAX_CONCENTRATION:g})")
    return stains, max_c


def transform(stains: np.ndarray, max_c: np.ndarray, ref_stains: np.ndarray,
              ref_max_c: np.ndarray) -> np.ndarray:
    """The 3 x 3 matrix A with ``OD_normalised = A OD`` (pixels as columns)."""
    scale = np.asarray(ref_max_c, np.float64) / np.asarray(max_c, np.float64)
    return (np.asarray(ref_stains, np.float64).T * scale) @ np.linalg.pinv(stains.T)


def apply(batch: Batch, matrices: np.ndarray) -> Any:
    """Normalised intensities (n, 3, P), glass kept (``Batch.blend``), from one 3 x 3
    matrix per image (n, 3, 3)."""
    od = batch.be.const(matrices) @ batch.od
    return batch.blend(od_to_intensity(batch.be, od))
