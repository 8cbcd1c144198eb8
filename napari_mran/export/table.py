"""CSV tables of bag/patch/cell scores and the provenance.json sidecar.

A result with the shown-cell mask (``cell_tissue``, docs/roi.md) keeps every row and
gets a ``shown`` column (``true``/``false``, ``SlideResult.shown(level)``) after the
probabilities; ``rank`` then orders the shown rows only.  Results without the mask
(older stores) are written as before, without the column.

A result computed with the bundled demo model (``result.model_is_demo``) gets one more,
last column ``model_is_demo`` with ``true`` in every row, so the flag travels with
every row that is copied elsewhere; results of other models have no such column.

CSV cells that hold text and start like a spreadsheet formula (``= + - @``, tab,
CR, LF, their full-width forms, or those after leading spaces) are prefixed with a
single quote (OWASP "CSV injection"); numbers are never altered.  Missing (NaN)
numbers are written as empty cells.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_mran._atomic import atomic_file
from napari_mran.results import (
    CELLS_PER_PATCH_SIDE,
    DEMO_MODEL_NOTE,
    LEVELS,
    N_CELLS,
    N_PATCHES,
    PATCHES_PER_SIDE,
    SlideResult,
    strict_json,
)
from napari_mran.results.scores import rank_desc
from napari_mran.results.strict import dumps

__all__ = ["csv_columns", "csv_safe", "export_csv", "export_provenance", "format_numbers"]

_FORMULA_START = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
_ROWS_PER_CHUNK = 16384
PROVENANCE_FORMAT = "napari-mran-provenance"


def csv_safe(text: object) -> str:
    """*text* as a CSV cell that no spreadsheet evaluates as a formula."""
    s = "" if text is None else str(text)
    if s and (s[0] in _FORMULA_START or s.lstrip(" ")[:1] in _FORMULA_START):
        return "'" + s
    return s


def format_numbers(values: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Shortest round-trip text of numbers (float32 by default); NaN -> ""."""
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(str)
    arr = arr.astype(dtype)
    text = arr.astype(str)
    text[np.isnan(arr)] = ""
    return text


def _format_coords(values: np.ndarray) -> np.ndarray:
    """Level-0 coordinates: integers where integral, else shortest float64 text."""
    arr = np.asarray(values, dtype=np.float64)
    integral = np.mod(arr, 1.0) == 0
    if integral.all():
        return arr.astype(np.int64).astype(str)
    out = arr.astype(str).astype(object)
    out[integral] = arr[integral].astype(np.int64).astype(str)
    return out


def csv_columns(result: SlideResult, level: str) -> list[str]:
    """Header of :func:`export_csv` for *level* (before CSV escaping)."""
    ids = ["slide", "bag_index", "bag_row", "bag_col"]
    if level in ("patch", "cell"):
        ids += ["patch_index", "patch_row", "patch_col"]
    if level == "cell":
        ids += ["cell_index", "cell_row", "cell_col"]
    return [
        *ids,
        "x0",
        "y0",
        "x1",
        "y1",
        "attention",
        "attention_global",
        "rank",
        *[f"prob_{name}" for name in result.class_names],
        *(["shown"] if result.cell_tissue is not None else []),
        *(["model_is_demo"] if result.model_is_demo else []),
    ]


def _id_columns(rc: np.ndarray, level: str, start: int, stop: int, per_bag: int
                ) -> list[np.ndarray]:
    """Bag (+ patch, cell) indices and grid positions (*rc*: of every bag) of bags
    ``start:stop`` as text."""
    cols: list[np.ndarray] = [
        np.repeat(np.arange(start, stop), per_bag).astype(str),
        np.repeat(rc[start:stop, 0], per_bag).astype(str),
        np.repeat(rc[start:stop, 1], per_bag).astype(str),
    ]
    if level in ("patch", "cell"):
        per_patch = per_bag // N_PATCHES
        p = np.tile(np.repeat(np.arange(N_PATCHES), per_patch), stop - start)
        cols += [p.astype(str), (p // PATCHES_PER_SIDE).astype(str),
                 (p % PATCHES_PER_SIDE).astype(str)]
    if level == "cell":
        c = np.tile(np.arange(N_CELLS), (stop - start) * N_PATCHES)
        cols += [c.astype(str), (c // CELLS_PER_PATCH_SIDE).astype(str),
                 (c % CELLS_PER_PATCH_SIDE).astype(str)]
    return cols


def _chunks(result: SlideResult, level: str, slide: str) -> Iterator[list[np.ndarray]]:
    """Column arrays (as text) for successive groups of bags."""
    per_bag = {"bag": 1, "patch": N_PATCHES, "cell": N_PATCHES * N_CELLS}[level]
    local = result.scores(level, "local")
    glob = result.scores(level, "global")
    # coordinates clipped to the slide; rows wholly past its edge (the padding of partial
    # edge bags) are left out and not ranked
    boxes, inside = result.slide_boxes(level)
    # with the shown-cell mask every row stays, flagged; only shown rows are ranked
    shown = result.shown(level)
    ranked = np.where(inside if shown is None else inside & shown, glob, np.nan)
    ranks = rank_desc(ranked.reshape(-1)).reshape(glob.shape)
    ranks_txt_mask = np.isnan(ranked)
    probs = {"bag": result.bag_probs, "patch": result.patch_probs, "cell": result.cell_probs}[level]
    rc = result.bag_rc
    bags_per_chunk = max(1, _ROWS_PER_CHUNK // per_bag)
    slide_cell = csv_safe(slide)
    for start in range(0, result.n_bags, bags_per_chunk):
        stop = min(result.n_bags, start + bags_per_chunk)
        n_rows = (stop - start) * per_bag
        cols = [np.full(n_rows, slide_cell, dtype=object),
                *_id_columns(rc, level, start, stop, per_bag)]
        b = boxes[start:stop].reshape(n_rows, 4)
        cols += [_format_coords(b[:, k]) for k in range(4)]
        cols.append(format_numbers(local[start:stop].reshape(-1)))
        cols.append(format_numbers(glob[start:stop].reshape(-1)))
        r = ranks[start:stop].reshape(-1).astype(str).astype(object)
        r[ranks_txt_mask[start:stop].reshape(-1)] = ""
        cols.append(r)
        pr = probs[start:stop].reshape(n_rows, result.n_classes)
        cols += [format_numbers(pr[:, k]) for k in range(result.n_classes)]
        if shown is not None:
            cols.append(np.where(shown[start:stop].reshape(-1), "true", "false").astype(object))
        if result.model_is_demo:
            cols.append(np.full(n_rows, "true", dtype=object))
        keep = inside[start:stop].reshape(-1)
        yield cols if keep.all() else [c[keep] for c in cols]


def export_csv(
    result: SlideResult,
    path: str | os.PathLike,
    *,
    level: str = "bag",
    slide_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one CSV row per bag, patch or cell of *result*; return the path.

    Columns (see docs/formats.md): slide, ids and grid positions, level-0 box
    ``x0, y0, x1, y1`` (clipped to the slide; patches and cells wholly past its edge,
    the padding of partial edge bags, have no row), ``attention`` (local:
    gamma/alpha/beta), ``attention_global`` (gamma, gamma*alpha, gamma*alpha*beta),
    ``rank`` (1 = highest global attention at that level), ``prob_<class>``; ``shown``
    (``true``/``false``) when the result has the shown-cell mask (``cell_tissue``):
    every row stays, and only shown rows are ranked (the others have an empty rank);
    ``model_is_demo`` (``true``), always last, only when the result comes from the demo
    model.  The cell level is large (1024 rows per bag); it is written in chunks.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
    slide = result.slide_name if slide_name is None else slide_name
    with atomic_file(path, "w", overwrite=overwrite, encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([csv_safe(h) for h in csv_columns(result, level)])
        for cols in _chunks(result, level, slide):
            writer.writerows(zip(*cols))
    return Path(path)


def export_provenance(
    result: SlideResult, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``provenance.json``: a strict-JSON summary of *result* plus its provenance.

    ``model_is_demo`` (top level) says whether the bundled demo model made the result;
    when it did, ``demo_model_note`` says what that means.
    """
    head = {"format": PROVENANCE_FORMAT, "version": 1, "model_is_demo": result.model_is_demo}
    if result.model_is_demo:
        head["demo_model_note"] = DEMO_MODEL_NOTE
    body, _ = strict_json(
        {**head, "summary": result.summary(), "provenance": result.provenance}
    )
    text = dumps(body, indent=2) + "\n"
    with atomic_file(path, "w", overwrite=overwrite, encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)
