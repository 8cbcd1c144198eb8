"""Attention rasters: empty ones for a running analysis, painted bag by bag
(:func:`paint_batch`), and their colour scaling (no napari import)."""

from __future__ import annotations

import numpy as np

from ..results import CELLS_PER_PATCH_SIDE, PATCHES_PER_SIDE
from ..vocab import COLOUR_SCALINGS, PIXELS_PER_BAG, Level, check_choice
from .frame import grid_shape

#: per-slide min-max (the first of vocab.COLOUR_SCALINGS)
DEFAULT_SCALING = COLOUR_SCALINGS[0]
#: the percentiles of the "percentile" colour scaling (of the slide's finite values)
PERCENTILES = (1.0, 99.0)


def empty_raster(level: str, slide_size: tuple[int, int], bag_px: int) -> np.ndarray:
    """All-NaN raster of *level* over the whole bag grid (NaN = not analysed yet)."""
    rows, cols = grid_shape(slide_size, bag_px)
    k = PIXELS_PER_BAG[level]
    return np.full((rows * k, cols * k), np.nan, dtype=np.float32)


def paint_batch(rasters: dict[str, np.ndarray], bag_px: int, boxes: np.ndarray,
                patch_attention: np.ndarray, cell_attention: np.ndarray,
                cell_shown: np.ndarray | None = None,
                slide_size: tuple[int, int] | None = None) -> None:
    """Paint the local patch (alpha) and cell (beta) attention of finished bags in place.

    ``boxes`` (n, 4) level-0; ``patch_attention`` (n, 64); ``cell_attention`` (n, 64, 16);
    ``cell_shown`` (n, 64, 16) the shown (tissue) cells of those bags, when known: the
    others stay NaN (a patch with no shown cell too); pixels wholly past the slide's edge
    (*slide_size* = width, height) stay NaN.  The layout and the NaN are those of
    :meth:`SlideResult.heatmap` (tested to be identical).
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    if not len(boxes):
        return
    if cell_shown is not None:
        shown = np.asarray(cell_shown, bool).reshape(-1, 64, 16)
        patch_attention = np.where(shown.any(axis=2), patch_attention, np.nan)
        cell_attention = np.where(shown, cell_attention, np.nan)
    rc = np.stack([boxes[:, 1], boxes[:, 0]], axis=1) // int(bag_px)  # (n, 2) bag row, col
    p, c = PATCHES_PER_SIDE, CELLS_PER_PATCH_SIDE
    if Level.PATCH in rasters:
        tiles = np.asarray(patch_attention, np.float32).reshape(-1, p, p)  # (n, 8, 8)
        out = rasters[Level.PATCH]
        for (r, col), t in zip(rc, tiles):
            out[r * p:(r + 1) * p, col * p:(col + 1) * p] = t
    if Level.CELL in rasters:
        k = p * c
        # (n, patch r, patch c, cell r, cell c) -> (n, patch r, cell r, patch c, cell c)
        tiles = (np.asarray(cell_attention, np.float32).reshape(-1, p, p, c, c)
                 .transpose(0, 1, 3, 2, 4).reshape(-1, k, k))  # (n, 32, 32)
        out = rasters[Level.CELL]
        for (r, col), t in zip(rc, tiles):
            out[r * k:(r + 1) * k, col * k:(col + 1) * k] = t
    if slide_size is not None:
        for level, out in rasters.items():
            step = bag_px / PIXELS_PER_BAG[level]
            out[np.arange(out.shape[0]) * step >= slide_size[1], :] = np.nan
            out[:, np.arange(out.shape[1]) * step >= slide_size[0]] = np.nan


def contrast_limits(data: np.ndarray, scaling: str = DEFAULT_SCALING) -> tuple[float, float]:
    """Contrast limits of an attention raster for *scaling* (NaN ignored)."""
    check_choice("scaling", scaling, COLOUR_SCALINGS)
    if scaling == "fixed":
        return (0.0, 1.0)
    finite = np.asarray(data)[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    if scaling == "percentile":
        lo, hi = (float(v) for v in np.percentile(finite, PERCENTILES))
    else:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    return (lo, hi)


def keep_top_fraction(data: np.ndarray, percent: float) -> np.ndarray:
    """Copy of *data* where only the highest *percent* % of the finite values remain.

    100 (or more) keeps everything; the rest becomes NaN (transparent).
    """
    if percent >= 100:
        return data
    out = np.array(data, dtype=np.float32, copy=True)
    finite = np.isfinite(out)
    if not finite.any():
        return out
    cut = float(np.percentile(out[finite], 100.0 - max(0.0, float(percent))))
    out[finite & (out < cut)] = np.nan
    return out
