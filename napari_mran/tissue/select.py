"""Which bags of the grid hold tissue (:func:`select_tissue_bags`) and how much of the
slide's tissue a set of bags covers (:func:`tissue_coverage`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .grid import (METHODS, TissueError, _bag_px, _level0_size, bag_grid, edge_policy,
                   grid_shape)
from .masks import _check_lowres, _pixel_masks, _valid_mask


@dataclass(frozen=True, eq=False)
class TissueSelection:
    """Which bags of the grid hold tissue, with the numbers behind the decision.

    All per-bag arrays follow the row-major order of ``grid_boxes``.
    """

    boxes: np.ndarray  # (K, 4) int64 kept bags [x0, y0, x1, y1]
    grid_boxes: np.ndarray  # (N, 4) int64 every whole bag of the slide
    white_fraction: np.ndarray  # (N,) float64 background fraction of valid px (NaN: no valid px)
    valid_fraction: np.ndarray  # (N,) float64 fraction of the bag's low-res px that hold data
    kept: np.ndarray  # (N,) bool
    no_data: np.ndarray  # (N,) bool dropped because valid_fraction < min_valid_fraction
    grid_shape: tuple[int, int]  # (rows, cols)
    method: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_indices(self) -> np.ndarray:
        """Grid indices (row * cols + col) of the kept bags."""
        return np.flatnonzero(self.kept)

    @property
    def no_data_boxes(self) -> np.ndarray:
        """Boxes of bags dropped because too few of their pixels hold data."""
        return self.grid_boxes[self.no_data]

    @property
    def tissue_fraction(self) -> np.ndarray:
        """1 - white_fraction."""
        return 1.0 - self.white_fraction


def _pixel_ranges(
    lo: np.ndarray, hi: np.ndarray, step: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index ranges [a, b) of low-res pixels whose centres lie in [lo, hi) (level-0 px).

    A box that contains no pixel centre (box smaller than a low-res pixel) takes the
    one pixel containing its centre, unless that lies outside the image.
    """
    a = np.ceil(lo / step - 0.5).astype(np.int64)
    b = np.ceil(hi / step - 0.5).astype(np.int64)
    a = np.clip(a, 0, n)
    b = np.clip(b, 0, n)
    empty = b <= a
    if empty.any():
        centre = np.floor((lo + hi) / 2.0 / step).astype(np.int64)
        inside = empty & (centre >= 0) & (centre < n)
        a = np.where(inside, centre, a)
        b = np.where(inside, centre + 1, np.where(empty, a, b))
    return a, b


def _box_sums(mask: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Sum of *mask* over [r0, r1) x [c0, c1) for many boxes via a summed-area table."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    return sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]


def _downsample(downsample: Any) -> tuple[float, float]:
    try:
        dx, dy = (float(v) for v in downsample)
    except (TypeError, ValueError):
        raise TissueError(f"downsample must be (dx, dy), not {downsample!r}") from None
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        raise TissueError(f"downsample must be positive, not {(dx, dy)}")
    return dx, dy


def _check_coverage(w: int, h: int, dx: float, dy: float, width: int, height: int) -> None:
    """A wrong downsample or swapped axes would silently select the wrong bags."""
    for axis, n_px, step, size in (("x", w, dx, width), ("y", h, dy, height)):
        if abs(n_px * step - size) > max(2.0 * step, 0.02 * size):
            raise TissueError(
                f"low-resolution image is {w} x {h} px; with downsample {(dx, dy)} it covers "
                f"{w * dx:.0f} x {h * dy:.0f} level-0 px, not the slide's {width} x {height} "
                f"(mismatch along {axis})"
            )


def _bag_fractions(grid: np.ndarray, size: tuple[int, int], bag_px: int,
                   down: tuple[float, float], tissue: np.ndarray, valid_mask: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(white fraction of the valid pixels, valid fraction, fraction inside the slide) of
    each bag; the part of a padded edge bag outside the slide is white with data."""
    (width, height), (dx, dy) = size, down
    h, w = tissue.shape
    gx1 = np.minimum(grid[:, 2], width).astype(np.float64)  # the part inside the slide
    gy1 = np.minimum(grid[:, 3], height).astype(np.float64)
    c0, c1 = _pixel_ranges(grid[:, 0].astype(np.float64), gx1, dx, w)
    r0, r1 = _pixel_ranges(grid[:, 1].astype(np.float64), gy1, dy, h)
    n_total = ((r1 - r0) * (c1 - c0)).astype(np.float64)
    n_valid = _box_sums(valid_mask, r0, r1, c0, c1).astype(np.float64)
    n_tissue = _box_sums(tissue, r0, r1, c0, c1).astype(np.float64)
    inside = (gx1 - grid[:, 0]) * (gy1 - grid[:, 1]) / float(bag_px * bag_px)
    outside = np.where(inside > 0, n_total / np.maximum(inside, 1e-12) - n_total, 0.0)
    n_total = n_total + outside
    n_valid = n_valid + outside
    with np.errstate(divide="ignore", invalid="ignore"):
        valid_fraction = np.where(n_total > 0, n_valid / np.maximum(n_total, 1), 0.0)
        white_fraction = np.where(
            n_valid > 0, (n_valid - n_tissue) / np.maximum(n_valid, 1), np.nan
        )
    return white_fraction, valid_fraction, inside


def select_tissue_bags(
    lowres: np.ndarray,
    downsample: tuple[float, float],
    level0_size: tuple[int, int],
    *,
    bag_px: int = 2048,
    method: str = "reference",
    white_level: int = 127,
    max_white_fraction: float = 0.98,
    valid: np.ndarray | None = None,
    min_valid_fraction: float = 0.5,
    min_tissue_fraction: float = 0.05,
    min_saturation: float = 0.05,
    edge: str = "drop",
) -> TissueSelection:
    """Select the bags of the grid that hold tissue.

    Parameters
    ----------
    lowres : (h, w, 3) uint8 RGB (or (h, w, 4) RGBA: alpha 0 = no data) image of the
        whole slide at low resolution.
    downsample : (dx, dy) level-0 pixels per low-res pixel along x and y.
    level0_size : (width, height) of the slide at level 0.
    method : ``"reference"`` keeps a bag when its white fraction (pixels with all
        channels > ``white_level``) is ``< max_white_fraction`` (the MRAN rule);
        ``"otsu"`` keeps a bag when the fraction of pixels whose saturation exceeds
        Otsu's threshold is ``>= min_tissue_fraction``.
    valid : optional (h, w) bool, False where the low-res image has no data (missing
        tiles).  Such pixels are excluded from the fractions; a bag whose valid
        fraction is ``< min_valid_fraction`` is dropped and reported in ``no_data``.
    edge : ``"drop"`` (whole bags only, the authors' rule) or ``"pad"`` (partial edge
        bags too; the part of such a bag outside the slide counts as valid white
        background in the fractions, as the padded bag the model reads).

    Fractions are computed on the low-res pixels whose centres fall inside each bag
    (an approximation of the reference rule, which reads level 0).
    """
    edge = edge_policy(edge)
    if method not in METHODS:
        raise TissueError(f"unknown tissue method {method!r}; expected one of {METHODS}")
    width, height = _level0_size(level0_size)
    bag_px = _bag_px(bag_px)
    dx, dy = _downsample(downsample)
    for name, frac in (
        ("max_white_fraction", max_white_fraction),
        ("min_valid_fraction", min_valid_fraction),
        ("min_tissue_fraction", min_tissue_fraction),
    ):
        if not 0.0 <= float(frac) <= 1.0:
            raise TissueError(f"{name} must be in [0, 1], not {frac!r}")
    arr = _check_lowres(lowres)
    h, w = arr.shape[:2]
    _check_coverage(w, h, dx, dy, width, height)
    tissue, valid_mask, info = _pixel_masks(arr, method, white_level, valid, min_saturation)
    grid = bag_grid((width, height), bag_px, edge)
    rows, cols = grid_shape((width, height), bag_px, edge)
    white_fraction, valid_fraction, inside = _bag_fractions(
        grid, (width, height), bag_px, (dx, dy), tissue, valid_mask)
    no_data = valid_fraction < float(min_valid_fraction)
    if method == "reference":
        tissue_ok = white_fraction < float(max_white_fraction)
    else:
        tissue_ok = (1.0 - white_fraction) >= float(min_tissue_fraction)
    tissue_ok &= np.isfinite(white_fraction)
    kept = tissue_ok & ~no_data

    parameters: dict[str, Any] = {
        "method": method, "bag_px": bag_px, "level0_size": [width, height],
        "downsample": [dx, dy], "lowres_shape": [h, w],
        "min_valid_fraction": float(min_valid_fraction), "valid_mask_given": valid is not None,
        "alpha_as_valid": arr.shape[2] == 4,
        "pixel_rule": "low-res pixels whose centres fall inside the bag box",
        "n_grid_bags": int(grid.shape[0]), "edge": edge,
        "n_partial_bags": int(np.count_nonzero(inside < 1.0)),
        "n_kept_bags": int(kept.sum()), "n_no_data_bags": int(no_data.sum()),
        **({"white_level": int(white_level), "max_white_fraction": float(max_white_fraction)}
           if method == "reference" else
           {"min_tissue_fraction": float(min_tissue_fraction),
            "min_saturation": float(min_saturation),
            "otsu_threshold": float(info["otsu_threshold"])}),
    }
    return TissueSelection(
        boxes=grid[kept],
        grid_boxes=grid,
        white_fraction=white_fraction.astype(np.float64),
        valid_fraction=valid_fraction.astype(np.float64),
        kept=kept,
        no_data=no_data,
        grid_shape=(rows, cols),
        method=method,
        parameters=parameters,
    )


def tissue_coverage(
    lowres: np.ndarray,
    downsample: tuple[float, float],
    boxes: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    glass_level: int = 220,
) -> tuple[float, int]:
    """Fraction of the slide's tissue that lies inside ``boxes`` (level-0), and the
    number of tissue pixels it was measured on.

    Tissue here is any low-res pixel that is not glass (some channel <= ``glass_level``)
    and holds data.  Used to state how much of the tissue an analysis covered (the
    authors' edge rule leaves the partial bags at the right and bottom edges out).
    Returns ``(1.0, 0)`` when the image has no tissue pixel at all.
    """
    arr = _check_lowres(lowres)
    mask = ~np.all(arr[..., :3] > int(glass_level), axis=2) & _valid_mask(arr, valid)
    total = int(np.count_nonzero(mask))
    if total == 0:
        return 1.0, 0
    h, w = mask.shape
    dx, dy = (float(v) for v in downsample)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if b.shape[0] == 0:
        return 0.0, total
    c0, c1 = _pixel_ranges(b[:, 0], b[:, 2], dx, w)
    r0, r1 = _pixel_ranges(b[:, 1], b[:, 3], dy, h)
    covered = np.zeros((h, w), dtype=bool)
    for a0, a1, e0, e1 in zip(r0, r1, c0, c1):  # boxes may be many but never overlap much
        covered[a0:a1, e0:e1] = True
    return float(np.count_nonzero(mask & covered)) / total, total
