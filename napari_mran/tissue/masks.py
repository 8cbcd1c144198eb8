"""Tissue masks of a low-resolution RGB(A) image: the reference white rule and Otsu on
saturation (pure numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .grid import METHODS, TissueError, _as_int


def _check_lowres(lowres: Any) -> np.ndarray:
    arr = np.asarray(lowres)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise TissueError(
            f"low-resolution image must be (h, w, 3) RGB or (h, w, 4) RGBA, not {arr.shape}"
        )
    if arr.dtype != np.uint8:
        raise TissueError(
            f"low-resolution image must be uint8, not {arr.dtype} (convert it explicitly)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise TissueError(f"low-resolution image is empty ({arr.shape})")
    return arr


def _valid_mask(arr: np.ndarray, valid: Any) -> np.ndarray:
    h, w = arr.shape[:2]
    if valid is None:
        mask = np.ones((h, w), dtype=bool)
    else:
        mask = np.asarray(valid)
        if mask.shape != (h, w):
            raise TissueError(f"valid mask has shape {mask.shape}, expected {(h, w)}")
        mask = mask.astype(bool, copy=True)
    if arr.shape[2] == 4:
        mask &= arr[..., 3] > 0  # transparent = missing tile (OpenSlide)
    return mask


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] (0 where the pixel is black)."""
    mx = rgb.max(axis=2).astype(np.float32)
    mn = rgb.min(axis=2).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(mx > 0, (mx - mn) / mx, 0.0)
    return sat.astype(np.float32)


def otsu_threshold(
    values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)
) -> float:
    """Otsu's threshold of 1-D *values*: the class split maximising between-class variance.

    Returns the upper edge of the last bin of the lower class (so the upper class is
    ``values > threshold``).  With fewer than two distinct bins populated the single
    populated bin's upper edge is returned (everything falls in the lower class).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    hist, edges = np.histogram(values, bins=bins, range=value_range)
    total = hist.sum()
    if total == 0:
        return float(value_range[1])
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)  # weight of class 0 when splitting after bin i
    w1 = total - w0
    m0 = np.cumsum(hist * centres)
    mu_total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (mu_total - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1.0
    best = int(np.argmax(between))
    if between[best] <= 0:  # one populated bin: no split
        best = int(np.nonzero(hist)[0].max())
    return float(edges[best + 1])


def _pixel_masks(
    lowres: Any,
    method: str,
    white_level: int,
    valid: Any,
    min_saturation: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(tissue mask, valid mask, info) at low resolution.  Tissue is False where invalid."""
    arr = _check_lowres(lowres)
    valid_mask = _valid_mask(arr, valid)
    rgb = arr[..., :3]
    info: dict[str, Any] = {}
    if method == "reference":
        white_level = _as_int(white_level, "white_level")
        white = np.all(rgb > white_level, axis=2)
        tissue = ~white
    elif method == "otsu":
        sat = _saturation(rgb)
        threshold = otsu_threshold(sat[valid_mask]) if valid_mask.any() else 1.0
        threshold = max(threshold, float(min_saturation))
        info["otsu_threshold"] = threshold
        tissue = sat > threshold
    else:
        raise TissueError(f"unknown tissue method {method!r}; expected one of {METHODS}")
    tissue &= valid_mask
    return tissue, valid_mask, info


def tissue_mask(
    lowres: np.ndarray,
    method: str = "reference",
    *,
    white_level: int = 127,
    valid: np.ndarray | None = None,
    min_saturation: float = 0.05,
) -> np.ndarray:
    """Boolean (h, w) mask of tissue pixels of a low-resolution RGB(A) image.

    ``"reference"``: a pixel is background ("white") when all three channels are
    ``> white_level``; everything else is tissue (the MRAN reference rule).
    ``"otsu"``: tissue is HSV saturation above Otsu's threshold (computed on the
    valid pixels), never below ``min_saturation``.  Pixels without data (``valid``
    False, or alpha 0 in an RGBA image) are never tissue.
    """
    tissue, _, _ = _pixel_masks(lowres, method, white_level, valid, min_saturation)
    return tissue


