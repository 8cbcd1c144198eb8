"""The bag grid of a slide, edge policies and bag sizes from µm (pure numpy)."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from ..errors import MRANError
from ..vocab import EDGE_POLICIES as _EDGE_POLICIES


#: µm per pixel outside this range is treated as broken metadata (reliability.md fact 8).
MPP_PLAUSIBLE_RANGE = (0.05, 20.0)
#: the rules this package applies to a low-resolution image (``exact``, the reference
#: rule on level-0 pixels, is napari_mran.inference.tissue_bags's)
METHODS = ("reference", "otsu")
#: What happens to the partial bags at the right and bottom edges of the slide:
#: ``"pad"`` keeps them (the part outside the slide reads as white background and the
#: tissue rule decides), ``"drop"`` leaves them out (the authors' rule).
EDGE_POLICIES = _EDGE_POLICIES


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


