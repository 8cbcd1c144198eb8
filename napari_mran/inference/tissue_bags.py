"""Which bags of a slide hold tissue (the reference, exact and Otsu rules) and how much
of the slide's tissue they cover."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .reading import tissue_lowres

if TYPE_CHECKING:
    from ..slide import Slide


@dataclass
class TissueBags:
    """Tissue bags of a slide and how they were found (for provenance)."""

    boxes: np.ndarray            # (N, 4) level-0 x0, y0, x1, y1 of the kept bags
    grid_boxes: np.ndarray       # (G, 4) every whole bag of the grid
    white_fraction: np.ndarray   # (N,) the rule's white fraction of each kept bag
    parameters: dict


#: the reference white rule is evaluated on pixels at most this many times coarser than level 0
REFINE_MAX_DOWNSAMPLE = 4.0


def find_tissue_bags(slide: Slide, bag_px: int, method: str = "reference",
                     options: dict | None = None, workers: int = 4, *,
                     edge: str = "drop", lowres: tuple | None = None) -> TissueBags:
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
        return TissueBags(kboxes, sel.grid_boxes, np.asarray(sel.white_fraction)[kept],
                          {**sel.parameters, "stages": 1, **coverage(kboxes)})
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
    return TissueBags(cboxes[keep], cand.grid_boxes, wf[keep], params)


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
