"""Bag grid and tissue selection (pure numpy, level-0 pixel coordinates).

A bag is a ``bag_px`` x ``bag_px`` square of level-0 pixels on a non-overlapping
grid that starts at the slide's top-left corner.  Bags that would cross the right or
bottom edge are dropped by the authors' rule (edge policy ``"drop"``, docs/mran-spec.md
section 1) or kept as partial bags padded with white background (``"pad"``, the
default of analysis: docs/edge-bags.md).  Boxes are
``[x0, y0, x1, y1]`` with ``x1``/``y1`` exclusive.

Tissue is decided on a low-resolution RGB image of the whole slide (a pyramid
level or thumbnail) that the caller has read; this module never reads files.  Each
bag box is mapped onto the low-resolution pixels whose *centres* fall inside it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mran.errors import MRANError

__all__ = [
    "MPP_PLAUSIBLE_RANGE",
    "TissueError",
    "TissueSelection",
    "EDGE_POLICIES",
    "bag_grid",
    "bag_px_from_um",
    "tissue_coverage",
    "otsu_threshold",
    "select_tissue_bags",
    "tissue_mask",
]

#: µm per pixel outside this range is treated as broken metadata (reliability.md fact 8).
MPP_PLAUSIBLE_RANGE = (0.05, 20.0)
METHODS = ("reference", "otsu")
#: every tissue method analysis offers: ``exact`` is the reference rule on level-0
#: pixels of every bag (napari_mran.analysis.find_tissue_bags reads them)
ANALYSIS_METHODS = ("reference", "exact", "otsu")
#: What happens to the partial bags at the right and bottom edges of the slide:
#: ``"pad"`` keeps them (the part outside the slide reads as white background and the
#: tissue rule decides), ``"drop"`` leaves them out (the authors' rule).
EDGE_POLICIES = ("pad", "drop")


def edge_policy(edge: Any) -> str:
    if edge not in EDGE_POLICIES:
        raise TissueError(f"unknown edge policy {edge!r}; expected one of {EDGE_POLICIES}")
    return str(edge)


class TissueError(MRANError, ValueError):
    """Invalid input to the tissue/grid functions (bad MPP, mismatched image size...)."""


def _as_int(value: Any, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    raise TissueError(f"{name} must be an integer, not {value!r}")


def _level0_size(level0_size: Any) -> tuple[int, int]:
    try:
        width, height = level0_size
    except (TypeError, ValueError):
        raise TissueError(f"level0_size must be (width, height), not {level0_size!r}") from None
    width, height = _as_int(width, "level0 width"), _as_int(height, "level0 height")
    if width <= 0 or height <= 0:
        raise TissueError(f"level0_size must be positive, not {(width, height)}")
    return width, height


def _bag_px(bag_px: Any) -> int:
    bag_px = _as_int(bag_px, "bag_px")
    if bag_px < 32:
        # a cell is bag_px / 32 level-0 px: below 32 a cell is smaller than a pixel
        raise TissueError(f"bag_px must be >= 32 level-0 px, not {bag_px}")
    return bag_px


def grid_shape(level0_size: tuple[int, int], bag_px: int, edge: str = "drop") -> tuple[int, int]:
    """(rows, cols) of the bag grid: whole bags only (``"drop"``) or with the partial
    edge bags (``"pad"``)."""
    width, height = _level0_size(level0_size)
    bag_px = _bag_px(bag_px)
    if edge_policy(edge) == "pad":
        return -(-height // bag_px), -(-width // bag_px)
    return height // bag_px, width // bag_px


def bag_grid(level0_size: tuple[int, int], bag_px: int = 2048, edge: str = "drop") -> np.ndarray:
    """All bags of a slide, row-major (left to right, then top to bottom).

    Returns an ``(rows * cols, 4)`` int64 array of ``[x0, y0, x1, y1]`` level-0
    boxes with ``cols = width // bag_px`` and ``rows = height // bag_px`` (``edge="drop"``,
    whole bags only) or rounded up (``edge="pad"``: the partial bags at the right and
    bottom edges are included as full ``bag_px`` boxes that reach past the slide).
    """
    rows, cols = grid_shape(level0_size, bag_px, edge)
    bag_px = _bag_px(bag_px)
    yy, xx = np.meshgrid(
        np.arange(rows, dtype=np.int64), np.arange(cols, dtype=np.int64), indexing="ij"
    )
    x0 = (xx * bag_px).ravel()
    y0 = (yy * bag_px).ravel()
    return np.stack([x0, y0, x0 + bag_px, y0 + bag_px], axis=1).astype(np.int64).reshape(-1, 4)


def _mpp_pair(mpp: Any) -> tuple[float, float]:
    if isinstance(mpp, (tuple, list, np.ndarray)):
        values = [float(v) for v in np.asarray(mpp, dtype=float).ravel()]
        if len(values) != 2:
            raise TissueError(f"mpp must be a number or an (x, y) pair, not {mpp!r}")
        mx, my = values
    else:
        try:
            mx = my = float(mpp)
        except (TypeError, ValueError):
            raise TissueError(f"mpp must be a number, not {mpp!r}") from None
    lo, hi = MPP_PLAUSIBLE_RANGE
    for v in (mx, my):
        if not math.isfinite(v) or not lo <= v <= hi:
            raise TissueError(
                f"mpp {v!r} µm/px is missing or implausible (expected {lo}-{hi} µm/px); "
                "give the slide's pixel size explicitly"
            )
    return mx, my


def bag_px_from_um(bag_um: float, mpp: float | tuple[float, float]) -> int:
    """Bag side in level-0 pixels for a bag side of *bag_um* micrometres.

    ``mpp`` is µm per level-0 pixel (a number, or an ``(x, y)`` pair that must be
    isotropic within 1 %: bags are square in pixels).  Raises TissueError for a
    missing/implausible MPP or a bag smaller than 32 px.
    """
    try:
        bag_um = float(bag_um)
    except (TypeError, ValueError):
        raise TissueError(f"bag size must be a number of µm, not {bag_um!r}") from None
    if not math.isfinite(bag_um) or bag_um <= 0:
        raise TissueError(f"bag size must be a positive number of µm, not {bag_um!r}")
    mx, my = _mpp_pair(mpp)
    if abs(mx - my) > 0.01 * max(mx, my):
        raise TissueError(
            f"anisotropic pixels (mpp x={mx}, y={my} µm/px): a bag size in µm needs square "
            "pixels; give the bag size in pixels instead"
        )
    bag_px = round(bag_um / ((mx + my) / 2.0))
    if bag_px < 32:
        raise TissueError(f"{bag_um} µm at {mx} µm/px is {bag_px} px; bags must be >= 32 px")
    return bag_px


# --------------------------------------------------------------------------- pixel masks


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


# --------------------------------------------------------------------------- bag selection


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
    try:
        dx, dy = (float(v) for v in downsample)
    except (TypeError, ValueError):
        raise TissueError(f"downsample must be (dx, dy), not {downsample!r}") from None
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        raise TissueError(f"downsample must be positive, not {(dx, dy)}")
    for name, frac in (
        ("max_white_fraction", max_white_fraction),
        ("min_valid_fraction", min_valid_fraction),
        ("min_tissue_fraction", min_tissue_fraction),
    ):
        if not 0.0 <= float(frac) <= 1.0:
            raise TissueError(f"{name} must be in [0, 1], not {frac!r}")

    arr = _check_lowres(lowres)
    h, w = arr.shape[:2]
    # A wrong downsample or swapped axes would silently select the wrong bags.
    for axis, n_px, step, size in (("x", w, dx, width), ("y", h, dy, height)):
        if abs(n_px * step - size) > max(2.0 * step, 0.02 * size):
            raise TissueError(
                f"low-resolution image is {w} x {h} px; with downsample {(dx, dy)} it covers "
                f"{w * dx:.0f} x {h * dy:.0f} level-0 px, not the slide's {width} x {height} "
                f"(mismatch along {axis})"
            )

    tissue, valid_mask, info = _pixel_masks(arr, method, white_level, valid, min_saturation)

    grid = bag_grid((width, height), bag_px, edge)
    rows, cols = grid_shape((width, height), bag_px, edge)
    gx1 = np.minimum(grid[:, 2], width).astype(np.float64)  # the part inside the slide
    gy1 = np.minimum(grid[:, 3], height).astype(np.float64)
    c0, c1 = _pixel_ranges(grid[:, 0].astype(np.float64), gx1, dx, w)
    r0, r1 = _pixel_ranges(grid[:, 1].astype(np.float64), gy1, dy, h)
    n_total = ((r1 - r0) * (c1 - c0)).astype(np.float64)
    n_valid = _box_sums(valid_mask, r0, r1, c0, c1).astype(np.float64)
    n_tissue = _box_sums(tissue, r0, r1, c0, c1).astype(np.float64)
    # padded edge bags: the outside part is white background with data
    inside = (gx1 - grid[:, 0]) * (gy1 - grid[:, 1]) / float(bag_px * bag_px)
    outside = np.where(inside > 0, n_total / np.maximum(inside, 1e-12) - n_total, 0.0)
    n_total = n_total + outside
    n_valid = n_valid + outside
    with np.errstate(divide="ignore", invalid="ignore"):
        valid_fraction = np.where(n_total > 0, n_valid / np.maximum(n_total, 1), 0.0)
        white_fraction = np.where(
            n_valid > 0, (n_valid - n_tissue) / np.maximum(n_valid, 1), np.nan
        )
    no_data = valid_fraction < float(min_valid_fraction)
    if method == "reference":
        tissue_ok = white_fraction < float(max_white_fraction)
    else:
        tissue_ok = (1.0 - white_fraction) >= float(min_tissue_fraction)
    tissue_ok &= np.isfinite(white_fraction)
    kept = tissue_ok & ~no_data

    parameters: dict[str, Any] = {
        "method": method,
        "bag_px": bag_px,
        "level0_size": [width, height],
        "downsample": [dx, dy],
        "lowres_shape": [h, w],
        "min_valid_fraction": float(min_valid_fraction),
        "valid_mask_given": valid is not None,
        "alpha_as_valid": arr.shape[2] == 4,
        "pixel_rule": "low-res pixels whose centres fall inside the bag box",
        "n_grid_bags": int(grid.shape[0]),
        "edge": edge,
        "n_partial_bags": int(np.count_nonzero(inside < 1.0)),
        "n_kept_bags": int(kept.sum()),
        "n_no_data_bags": int(no_data.sum()),
    }
    if method == "reference":
        parameters.update(
            white_level=int(white_level), max_white_fraction=float(max_white_fraction)
        )
    else:
        parameters.update(
            min_tissue_fraction=float(min_tissue_fraction),
            min_saturation=float(min_saturation),
            otsu_threshold=float(info["otsu_threshold"]),
        )
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
