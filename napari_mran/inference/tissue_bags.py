"""Which bags of a slide hold tissue (the reference, exact and Otsu rules) and how much
of the slide's tissue they cover."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .reading import tissue_lowres

if TYPE_CHECKING:
    from ..roi import Region
    from ..slide import Slide


@dataclass
class TissueBags:
    """Tissue bags of a slide and how they were found (for provenance)."""

    boxes: np.ndarray            # (N, 4) level-0 x0, y0, x1, y1 of the kept bags
    grid_boxes: np.ndarray       # (G, 4) every whole bag of the grid
    white_fraction: np.ndarray   # (N,) the rule's white fraction of each kept bag
    parameters: dict
    n_outside: int = 0           # candidate bags left out (not read): outside the region
    cell_tissue: np.ndarray | None = None  # (N, 64, 16) uint8 shown cells (engine sets it)


#: the reference white rule is evaluated on pixels at most this many times coarser than level 0
REFINE_MAX_DOWNSAMPLE = 4.0


def find_tissue_bags(slide: Slide, bag_px: int, method: str = "reference",
                     options: dict | None = None, workers: int = 4, *,
                     edge: str = "drop", lowres: tuple | None = None,
                     region: Region | None = None) -> TissueBags:
    """Tissue bags of a slide.

    ``otsu``: saturation + Otsu on the smallest level (cheap and fine at low resolution).

    ``reference`` (MRAN's rule: keep a bag when < 98 % of its pixels have all channels
    > 127): averaging at a low resolution turns stroma into "white" pale pink, so the rule
    is not applied to the smallest level. Instead (1) the smallest level gives candidate
    bags (anything that is not glass: < 99.9 % of pixels with all channels > 220), and
    (2) the rule is evaluated on each candidate at the coarsest level whose downsample is
    <= 4 (level 0 when there is no such level; the exact reference when that is level 0).

    ``exact``: the authors' rule as they apply it: every bag of the grid, on level-0
    pixels, read in strips (memory bounded); slower (reads all of level 0 once).

    ``edge``: ``"drop"`` (the authors' rule: whole bags only) or ``"pad"`` (partial bags
    at the right and bottom edges too, read with white background outside the slide).
    ``lowres``: the ``tissue_lowres(slide)`` tuple when the caller has read it already.
    ``region``: keep only bags meeting it; candidates outside are never read.
    The parameters record ``tissue_coverage``: the fraction of the slide's tissue (not
    glass, at the smallest level) that the kept bags cover.
    """
    from ..tissue import select_tissue_bags, tissue_coverage

    opts = dict(options or {})
    w0, h0 = slide.dimensions
    image, valid, down = lowres if lowres is not None else tissue_lowres(slide)

    def coverage(boxes) -> dict:
        frac, n_px = tissue_coverage(image, down, boxes, valid=valid)
        return {"tissue_coverage": round(frac, 4), "tissue_coverage_pixels": n_px}

    if method not in ("reference", "exact"):
        sel = select_tissue_bags(image, down, (w0, h0), bag_px=bag_px, method=method,
                                 valid=valid, edge=edge, **opts)
        kept = np.flatnonzero(sel.kept)
        kboxes = np.asarray(sel.boxes, np.int64).reshape(-1, 4)
        inside = _inside(region, kboxes)
        return TissueBags(kboxes[inside], sel.grid_boxes,
                          np.asarray(sel.white_fraction)[kept][inside],
                          {**sel.parameters, "stages": 1, **coverage(kboxes[inside])},
                          int((~inside).sum()))
    white_level = int(opts.pop("white_level", 127))
    max_white = float(opts.pop("max_white_fraction", 0.98))
    min_valid = float(opts.get("min_valid_fraction", 0.5))
    cand = select_tissue_bags(image, down, (w0, h0), bag_px=bag_px, method="reference",
                              white_level=220, max_white_fraction=0.999, valid=valid,
                              edge=edge, **opts)
    if method == "exact":  # every bag of the grid, at level 0: the authors' rule as is
        cboxes, level = np.asarray(cand.grid_boxes, np.int64).reshape(-1, 4), 0
    else:
        cboxes, level = np.asarray(cand.boxes, np.int64).reshape(-1, 4), 0
        for lv, d in enumerate(slide.level_downsamples):
            if d <= REFINE_MAX_DOWNSAMPLE * (1 + 1e-6):
                level = lv
    inside = _inside(region, cboxes)
    cboxes, n_outside = cboxes[inside], int((~inside).sum())
    wf, vf = _white_fractions(slide, cboxes, level, bag_px, white_level, workers)
    keep = (wf < max_white) & (vf >= min_valid)
    d = slide.level_downsamples[level]
    params = {"rule": f"white = all channels > {white_level}; keep when white fraction < {max_white}",
              "white_level": white_level, "max_white_fraction": max_white,
              "min_valid_fraction": min_valid, "n_candidates": int(len(cboxes)),
              "rule_level": level, "rule_level_downsample": float(d),
              "edge": edge, "n_partial_bags": cand.parameters["n_partial_bags"]}
    if method == "exact":
        params.update(stages=1, candidates_from="every bag of the grid (level 0)")
    else:
        params.update(stages=2, candidates_from="smallest level (not glass: < 99.9 % of "
                      "pixels with all channels > 220)")
    params.update(coverage(cboxes[keep]))
    return TissueBags(cboxes[keep], cand.grid_boxes, wf[keep], params, n_outside)


def _inside(region: Region | None, boxes: np.ndarray) -> np.ndarray:
    """Which boxes meet the region (all of them without one)."""
    if region is None:
        return np.ones(len(boxes), dtype=bool)
    return region.intersects(boxes)


#: rows of a bag read at once by the exact rule (bounds memory: 256 x 2048 x 3 bytes)
_RULE_STRIP_ROWS = 256


def _white_fractions(slide: Slide, boxes: np.ndarray, level: int, bag_px: int, white_level: int,
                     workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(white fraction of the valid pixels, valid fraction) of each bag at *level*, read in
    strips of ``_RULE_STRIP_ROWS`` rows (memory per thread is one strip, not one bag)."""
    d = slide.level_downsamples[level]
    side = max(1, int(round(bag_px / d)))

    strip = _RULE_STRIP_ROWS if level == 0 else side  # coarser levels: one small read

    def one(box) -> tuple[float, float]:
        n_white = n_valid = 0
        for r0 in range(0, side, strip):
            rows = min(strip, side - r0)
            rr = slide.read_region_ex((int(box[0]), int(box[1] + round(r0 * d))), level,
                                      (side, rows), on_error="record")
            is_white: np.ndarray = np.asarray((rr.pixels > white_level).all(-1))
            if rr.valid is None:
                n_white += int(is_white.sum())
                n_valid += is_white.size
            else:
                n_white += int(is_white[rr.valid].sum())
                n_valid += int(rr.valid.sum())
        return (n_white / n_valid if n_valid else 1.0), n_valid / float(side * side)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mran-tissue") as pool:
        fr = list(pool.map(one, boxes))
    wf = np.array([f[0] for f in fr], np.float64).reshape(-1)
    vf = np.array([f[1] for f in fr], np.float64).reshape(-1)
    return wf, vf


#: a cell is shown when at least this fraction of its low-resolution pixels is tissue
CELL_TISSUE_MIN_FRACTION = 0.1
_CELLS = 32  # cells per bag side


def cell_tissue(lowres: tuple, boxes: np.ndarray, bag_px: int, method: str,
                slide_size: tuple[int, int], region: Region | None = None) -> np.ndarray:
    """(N, 64, 16) uint8: 1 where a cell of a bag is shown -- at least
    ``CELL_TISSUE_MIN_FRACTION`` of its low-resolution pixels are tissue (not glass:
    some channel <= 220; the Otsu mask for method "otsu") and, with a region, its centre
    lies inside it."""
    from ..tissue import tissue_mask

    image, valid, (dx, dy) = lowres
    mask = tissue_mask(image, "otsu" if method == "otsu" else "reference", white_level=220,
                       valid=valid)
    frac = _cell_fractions(mask, np.asarray(boxes, np.int64).reshape(-1, 4), bag_px,
                           (dx, dy), slide_size)
    shown = frac >= CELL_TISSUE_MIN_FRACTION  # (N, 32, 32) rows, cols of the bag's cells
    if region is not None:
        shown &= _cells_in_region(region, boxes, bag_px)
    n = len(shown)
    # (N, 8 patch rows, 4 cell rows, 8 patch cols, 4 cell cols) -> (N, 64, 16)
    out = shown.reshape(n, 8, 4, 8, 4).transpose(0, 1, 3, 2, 4).reshape(n, 64, 16)
    return out.astype(np.uint8)


def _cell_fractions(mask: np.ndarray, boxes: np.ndarray, bag_px: int,
                    down: tuple[float, float], slide_size: tuple[int, int]) -> np.ndarray:
    """(N, 32, 32) tissue fraction of each cell's low-res pixels (0 past the slide)."""
    from ..tissue.select import _pixel_ranges

    step = bag_px / _CELLS
    k = np.arange(_CELLS) * step
    w, h = slide_size
    x0 = (boxes[:, 0, None] + k[None]).ravel()
    y0 = (boxes[:, 1, None] + k[None]).ravel()
    c0, c1 = _pixel_ranges(x0, np.minimum(x0 + step, w), down[0], mask.shape[1])
    r0, r1 = _pixel_ranges(y0, np.minimum(y0 + step, h), down[1], mask.shape[0])
    c0, c1 = c0.reshape(-1, 1, _CELLS), c1.reshape(-1, 1, _CELLS)
    r0, r1 = r0.reshape(-1, _CELLS, 1), r1.reshape(-1, _CELLS, 1)
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    n_tissue = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    n_total = (r1 - r0) * (c1 - c0)
    past = (x0.reshape(-1, 1, _CELLS) >= w) | (y0.reshape(-1, _CELLS, 1) >= h)
    frac = np.where(n_total > 0, n_tissue / np.maximum(n_total, 1), 0.0)
    return np.where(past, 0.0, frac)


def _cells_in_region(region: Region, boxes: np.ndarray, bag_px: int) -> np.ndarray:
    """(N, 32, 32) bool: cell centres inside the region, rasterised one bag row at a time."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    out = np.zeros((len(boxes), _CELLS, _CELLS), dtype=bool)
    if not len(boxes):
        return out
    step = bag_px / _CELLS
    cols = boxes[:, 0] // bag_px
    for y in np.unique(boxes[:, 1]):
        sel = np.flatnonzero(boxes[:, 1] == y)
        c_lo, c_hi = int(cols[sel].min()), int(cols[sel].max()) + 1
        strip = region.mask((_CELLS, (c_hi - c_lo) * _CELLS), step,
                            origin=(float(y), float(c_lo * bag_px)))
        for i in sel:
            c = (int(cols[i]) - c_lo) * _CELLS
            out[i] = strip[:, c:c + _CELLS]
    return out
