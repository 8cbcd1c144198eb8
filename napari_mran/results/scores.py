"""Scores of a result at every level, their rasters (:meth:`heatmap`: the one function
that turns scores into a raster; the napari layer, the exporters and the CLI use it) and
what lies under a point (hover)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ResultsError
from ..vocab import check_choice
from .heatmap import Heatmap
from .schema import (CELLS_PER_PATCH_SIDE, CELLS_PER_SIDE, LEVELS, MAX_HEATMAP_PIXELS,
                     PATCHES_PER_SIDE, PIXELS_PER_BAG, VALUES, WEIGHTINGS)

__all__ = ["ScoresMixin", "rank_desc"]


def rank_desc(values: np.ndarray) -> np.ndarray:
    """1-based rank by value, highest first; ties by index; NaN ranks last."""
    values = np.asarray(values, dtype=np.float64)
    key = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((np.arange(values.size), -key))
    # NaN after -inf: push NaN entries behind everything else
    nan_mask = np.isnan(values[order])
    order = np.concatenate([order[~nan_mask], order[nan_mask]])
    ranks = np.empty(values.size, dtype=np.int64)
    ranks[order] = np.arange(1, values.size + 1)
    return ranks


def _raster(vals: np.ndarray, level: str, rc: np.ndarray, rows: int, cols: int
            ) -> np.ndarray:
    """Per-object scores of the bags at grid positions *rc* as a (rows * k, cols * k)
    float32 raster (k pixels per bag side at *level*); NaN where no bag is."""
    k = PIXELS_PER_BAG[level]
    if level == "bag":
        data = np.full((rows, cols), np.nan, dtype=np.float32)
        data[rc[:, 0], rc[:, 1]] = vals
        return data
    if level == "patch":
        # [bag r, bag c, patch r, patch c]
        tiles = np.full((rows, cols, k, k), np.nan, dtype=np.float32)
        tiles[rc[:, 0], rc[:, 1]] = vals.reshape(-1, k, k)
        return tiles.transpose(0, 2, 1, 3).reshape(rows * k, cols * k)
    p, c = PATCHES_PER_SIDE, CELLS_PER_PATCH_SIDE
    # [bag r, bag c, patch r, patch c, cell r, cell c]
    cells = np.full((rows, cols, p, p, c, c), np.nan, dtype=np.float32)
    cells[rc[:, 0], rc[:, 1]] = vals.reshape(-1, p, p, c, c)
    return cells.transpose(0, 2, 4, 1, 3, 5).reshape(rows * k, cols * k)


class ScoresMixin:
    """Scores, heatmaps and hover values of :class:`~napari_mran.results.SlideResult`
    (which holds the fields below)."""

    boxes: np.ndarray
    bag_attention: np.ndarray
    bag_probs: np.ndarray
    patch_attention: np.ndarray
    patch_probs: np.ndarray
    cell_attention: np.ndarray
    cell_probs: np.ndarray
    slide_probs: np.ndarray
    class_names: list[str]
    slide_size: tuple[int, int]
    bag_px: int
    cell_tissue: np.ndarray | None
    _index: dict[tuple[int, int], int] | None

    if TYPE_CHECKING:  # defined by SlideResult
        @property
        def n_classes(self) -> int: ...
        @property
        def grid_shape(self) -> tuple[int, int]: ...
        @property
        def bag_rc(self) -> np.ndarray: ...
        @property
        def patch_px(self) -> float: ...
        @property
        def cell_px(self) -> float: ...
        @property
        def mpp_xy(self) -> tuple[float, float] | None: ...

    def _class_index(self, class_index: int | str) -> int:
        if isinstance(class_index, str):
            if class_index not in self.class_names:
                raise ValueError(f"unknown class {class_index!r}; classes are {self.class_names}")
            return self.class_names.index(class_index)
        ci = int(class_index)
        if not 0 <= ci < self.n_classes:
            raise ValueError(f"class_index {ci} out of range for classes {self.class_names}")
        return ci

    def scores(self, level: str = "bag", weighting: str = "local", value: str = "attention",
               class_index: int | str = 1) -> np.ndarray:
        """Per-object scores: bag (N,), patch (N, 64), cell (N, 64, 16) float32.

        ``attention``: local = gamma / alpha / beta; global = gamma, gamma * alpha,
        gamma * alpha * beta.  ``prob``: that level's probability of *class_index*
        (``weighting`` must be local).
        """
        check_choice("level", level, LEVELS)
        check_choice("weighting", weighting, WEIGHTINGS)
        check_choice("value", value, VALUES)
        if value == "prob":
            if weighting != "local":
                raise ValueError(
                    "weighting='global' applies to attention only, not to probabilities"
                )
            ci = self._class_index(class_index)
            probs = {"bag": self.bag_probs, "patch": self.patch_probs,
                     "cell": self.cell_probs}[level]
            return np.ascontiguousarray(probs[..., ci])
        if level == "bag":
            return self.bag_attention.copy()
        if level == "patch":
            if weighting == "local":
                return self.patch_attention.copy()
            return self.bag_attention[:, None] * self.patch_attention
        if weighting == "local":
            return self.cell_attention.copy()
        return (
            self.bag_attention[:, None, None] * self.patch_attention[:, :, None]
        ) * self.cell_attention

    def heatmap(self, level: str = "bag", weighting: str = "local", value: str = "attention",
                class_index: int | str = 1) -> Heatmap:
        """Rasterise one level over the slide's whole bag grid.

        One pixel per bag (``level="bag"``), 8 x 8 per bag (patch) or 32 x 32 per bag
        (cell); NaN where no tissue bag was analysed, where a pixel lies wholly past
        the slide's edge (the padding of partial edge bags) and, when the result has
        ``cell_tissue``, where nothing is shown: a cell off it, a patch none of whose 16
        cells is on it, a bag none of whose cells is.  ``data[0, 0]``'s top-left
        corner is the slide's level-0 origin.
        """
        vals = self.scores(level, weighting, value, class_index)
        shown = self.shown(level)
        if shown is not None:
            vals = np.where(shown, vals, np.nan).astype(np.float32)
        k = PIXELS_PER_BAG[level]
        rows, cols = self.grid_shape
        if rows * k * cols * k > MAX_HEATMAP_PIXELS:
            raise ResultsError(
                f"the {level} heatmap of a {self.slide_size[0]} x {self.slide_size[1]} px "
                f"slide with {self.bag_px} px bags would be {rows * k} x {cols * k} px, "
                f"more than {MAX_HEATMAP_PIXELS} pixels"
            )
        data = _raster(vals, level, self.bag_rc, rows, cols)
        step = self.bag_px / k
        # pixels wholly past the slide's edge (padded edge bags): nothing is there
        w, h = self.slide_size
        data[np.arange(data.shape[0]) * step >= h, :] = np.nan
        data[:, np.arange(data.shape[1]) * step >= w] = np.nan
        ci = None if value == "attention" else self._class_index(class_index)
        return Heatmap(
            data=np.ascontiguousarray(data, dtype=np.float32),
            scale=(float(step), float(step)),
            translate=(0.0, 0.0),
            level=level,
            weighting=weighting,
            value=value,
            class_index=ci,
            class_name=None if ci is None else self.class_names[ci],
            mpp=self.mpp_xy,
        )

    def shown(self, level: str = "cell") -> np.ndarray | None:
        """Which objects of a level are shown (bool: bag (N,), patch (N, 64), cell
        (N, 64, 16)): those with at least one shown cell; None without ``cell_tissue``."""
        check_choice("level", level, LEVELS)
        if self.cell_tissue is None:
            return None
        cells = self.cell_tissue.astype(bool)
        if level == "cell":
            return cells
        return np.asarray(cells.any(axis=2) if level == "patch" else cells.any(axis=(1, 2)))

    def top_bags(self, k: int | None = None) -> np.ndarray:
        """Indices of the bags by bag attention (gamma), highest first (NaN last)."""
        order = np.argsort(rank_desc(self.bag_attention), kind="stable")
        return order if k is None else order[: max(0, int(k))]

    def bag_index_at(self, x0: float, y0: float) -> int | None:
        """Index of the analysed bag holding level-0 point (x0, y0), or None."""
        if self._index is None:
            self._index = {(int(r), int(c)): i for i, (r, c) in enumerate(self.bag_rc)}
        if not (math.isfinite(x0) and math.isfinite(y0)) or x0 < 0 or y0 < 0:
            return None
        key = (int(y0 // self.bag_px), int(x0 // self.bag_px))
        return self._index.get(key)

    def value_at(self, x0: float, y0: float) -> dict[str, Any] | None:
        """Scores under level-0 point (x0, y0) at every level (for hover), or None.

        Keys: ``bag_index``, ``patch_index``, ``cell_index`` and their ``*_box``
        (level-0), ``bag_attention``, ``patch_attention`` (+ ``_global``),
        ``cell_attention`` (+ ``_global``), ``bag_probs``/``patch_probs``/``cell_probs``
        and ``slide_probs`` as {class name: probability}.
        """
        i = self.bag_index_at(x0, y0)
        if i is None:
            return None
        bx0, by0 = (int(v) for v in self.boxes[i, :2])
        rr = min(
            int((y0 - by0) * CELLS_PER_SIDE // self.bag_px), CELLS_PER_SIDE - 1
        )  # cell row in bag
        cc = min(int((x0 - bx0) * CELLS_PER_SIDE // self.bag_px), CELLS_PER_SIDE - 1)
        pr, pc = rr // CELLS_PER_PATCH_SIDE, cc // CELLS_PER_PATCH_SIDE
        cr, ccol = rr % CELLS_PER_PATCH_SIDE, cc % CELLS_PER_PATCH_SIDE
        p = pr * PATCHES_PER_SIDE + pc
        c = cr * CELLS_PER_PATCH_SIDE + ccol
        g = float(self.bag_attention[i])
        a = float(self.patch_attention[i, p])
        b = float(self.cell_attention[i, p, c])
        pp, cp = self.patch_px, self.cell_px
        px0, py0 = bx0 + pc * pp, by0 + pr * pp
        cx0, cy0 = px0 + ccol * cp, py0 + cr * cp

        def probs(v: np.ndarray) -> dict[str, float]:
            return {name: float(x) for name, x in zip(self.class_names, v)}

        return {
            "x0": float(x0),
            "y0": float(y0),
            "bag_index": i,
            "bag_box": tuple(int(v) for v in self.boxes[i]),
            "bag_attention": g,
            "bag_probs": probs(self.bag_probs[i]),
            "patch_index": p,
            "patch_row": pr,
            "patch_col": pc,
            "patch_box": (px0, py0, px0 + pp, py0 + pp),
            "patch_attention": a,
            "patch_attention_global": float(np.float32(g) * np.float32(a)),
            "patch_probs": probs(self.patch_probs[i, p]),
            "cell_index": c,
            "cell_row": cr,
            "cell_col": ccol,
            "cell_box": (cx0, cy0, cx0 + cp, cy0 + cp),
            "cell_attention": b,
            "cell_attention_global": float(np.float32(g) * np.float32(a) * np.float32(b)),
            "cell_probs": probs(self.cell_probs[i, p, c]),
            "slide_probs": probs(self.slide_probs),
        }
