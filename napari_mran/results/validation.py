"""What makes a result valid: the checks of a :class:`SlideResult` when it is made and
of a store's attributes against its arrays (before saving and after loading, so that a
store ``save`` writes always loads)."""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import numpy as np

from ..errors import ResultsError
from .schema import (ARRAYS, CELLS_PER_SIDE, FLOAT, MAX_SLIDE_SIDE, N_CELLS, N_PATCHES,
                     NONFINITE_KEY)
from .strict import short, strict_json

__all__ = ["check_arrays", "check_cell_tissue", "check_embeddings", "check_grid",
           "check_header", "clean_provenance", "consistency_problems", "mpp_pair"]


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def _is_integral(arr: np.ndarray) -> bool:
    if np.issubdtype(arr.dtype, np.integer):
        return True
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.mod(arr, 1) == 0))


def mpp_pair(mpp: Any) -> tuple[float, float] | None:
    """``(x, y)`` µm per level-0 px of a number or a pair (None stays None);
    ResultsError for anything else or a value that is not positive and finite."""
    if mpp is None:
        return None
    try:
        vals = [float(v) for v in np.asarray(mpp, dtype=float).ravel()]
    except (TypeError, ValueError):
        vals = []
    if np.ndim(mpp) == 0:
        vals = vals * 2
    if len(vals) != 2:
        raise ResultsError(f"SlideResult: mpp must be a number or an (x, y) pair, not {mpp!r}")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ResultsError(f"SlideResult: mpp must be positive and finite, not {mpp!r}")
    return (vals[0], vals[1])


# --------------------------------------------------------------------------- in memory


def check_arrays(values: dict[str, Any], n_classes: int) -> dict[str, np.ndarray]:
    """The arrays of a new result with their dtype and shape checked (ResultsError)."""
    boxes = np.asarray(values["boxes"])
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    n = boxes.shape[0] if boxes.ndim == 2 else -1
    out = {}
    for name, (dtype, trailing) in ARRAYS.items():
        arr = np.asarray(boxes if name == "boxes" else values[name])
        if name == "failed_boxes" and arr.size == 0:
            arr = arr.reshape(0, 4)
        if dtype.kind == "i" and arr.size and not _is_integral(arr):
            raise ResultsError(f"SlideResult: {name} must hold integer pixel coordinates")
        if trailing is None:
            expected: tuple[int, ...] = (n_classes,)
        else:
            lead = arr.shape[0] if name == "failed_boxes" and arr.ndim == 2 else n
            expected = (lead, *trailing(n_classes))
        if arr.shape != expected:
            raise ResultsError(f"SlideResult: {name} has shape {arr.shape}, expected {expected} "
                               f"(N={n} bags, C={n_classes} classes)")
        out[name] = np.ascontiguousarray(arr, dtype=dtype)
    return out


def check_header(class_names: Any, slide_size: Any, bag_px: Any
                 ) -> tuple[list[str], tuple[int, int], int]:
    """``(class_names, (width, height), bag_px)`` of a new result, normalised;
    ResultsError naming what is wrong."""
    names = [str(n) for n in class_names]
    if not names:
        raise ResultsError("SlideResult: class_names is empty")
    if len(set(names)) != len(names):
        raise ResultsError(f"SlideResult: class names are not unique: {names}")
    try:
        w, h = (int(v) for v in slide_size)
    except (TypeError, ValueError):
        raise ResultsError(f"SlideResult: slide_size must be (width, height), not "
                           f"{slide_size!r}") from None
    if w <= 0 or h <= 0:
        raise ResultsError(f"SlideResult: slide_size must be positive, not {(w, h)}")
    try:
        bag = int(bag_px)
    except (TypeError, ValueError):
        raise ResultsError(f"SlideResult: bag_px must be an integer, not {bag_px!r}") from None
    if bag < CELLS_PER_SIDE:
        raise ResultsError(f"SlideResult: bag_px must be >= {CELLS_PER_SIDE}, not {bag}")
    return names, (w, h), bag


def check_grid(b: np.ndarray, bag_px: int, size: tuple[int, int]) -> None:
    """ResultsError unless *b* (K, 4) are distinct ``bag_px`` squares of the bag grid
    starting inside the slide.  Partial edge bags (edge policy "pad") reach past the
    right/bottom edge."""
    if not b.shape[0]:
        return
    w, h = size
    problem = None
    if np.any(b[:, 2] - b[:, 0] != bag_px) or np.any(b[:, 3] - b[:, 1] != bag_px):
        problem = f"every box must be {bag_px} x {bag_px} px (bag_px)"
    elif np.any(b[:, :2] % bag_px != 0):
        problem = f"every box must start on the bag grid (x0, y0 multiples of {bag_px})"
    elif np.any(b[:, :2] < 0) or np.any(b[:, 0] >= w) or np.any(b[:, 1] >= h):
        problem = f"a box lies outside the slide ({w} x {h} px)"
    elif _has_duplicates([b], bag_px, w):
        problem = "two boxes cover the same bag"
    if problem:
        raise ResultsError(f"SlideResult: {problem}")


def clean_provenance(provenance: Any) -> dict[str, Any]:
    """Provenance as strict JSON; the pointers of non-finite values replaced by null are
    listed under ``_nonfinite_replaced_by_null``."""
    if not isinstance(provenance, dict):
        raise ResultsError(f"SlideResult: provenance must be a dict, not "
                           f"{type(provenance).__name__}")
    clean, replaced = strict_json(provenance, "SlideResult.provenance")
    if replaced:
        previous = clean.get(NONFINITE_KEY) or []
        clean[NONFINITE_KEY] = sorted(set(previous) | set(replaced))
    return clean


def check_embeddings(embeddings: Any, n: int) -> np.ndarray | None:
    """(N, E) float32 bag embeddings, or None."""
    if embeddings is None:
        return None
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != n or emb.shape[1] < 1:
        raise ResultsError(f"SlideResult: embeddings has shape {emb.shape}, expected "
                           f"(N={n}, E>=1)")
    if not np.issubdtype(emb.dtype, np.number) or np.iscomplexobj(emb):
        raise ResultsError(f"SlideResult: embeddings must be real numbers, not {emb.dtype}")
    return np.ascontiguousarray(emb, dtype=FLOAT)


def check_cell_tissue(cells: Any, n: int) -> np.ndarray | None:
    """(N, 64, 16) uint8 of 0/1 (1: the cell is shown), or None."""
    if cells is None:
        return None
    arr = np.asarray(cells)
    if arr.shape != (n, N_PATCHES, N_CELLS):
        raise ResultsError(f"SlideResult: cell_tissue has shape {arr.shape}, expected "
                           f"({n}, {N_PATCHES}, {N_CELLS})")
    if arr.dtype != np.bool_ and not (np.issubdtype(arr.dtype, np.integer)
                                      and bool(np.isin(arr, (0, 1)).all())):
        raise ResultsError("SlideResult: cell_tissue must hold 0 and 1 only")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _has_duplicates(boxes: list[np.ndarray], bag_px: int, width: int) -> bool:
    keys = np.concatenate([(b[:, 1] // bag_px) * (width // bag_px + 1) + b[:, 0] // bag_px
                           for b in boxes])
    return bool(np.unique(keys).size != keys.size)


# --------------------------------------------------------------------------- stores


def consistency_problems(
    own: dict[str, Any], provenance: Any, arrays: dict[str, np.ndarray]
) -> list[str]:
    """What is wrong with a store's attributes, alone and against its arrays ([] if
    nothing).  Checked before saving and after loading: a store that ``save`` writes
    always loads."""
    problems: list[str] = []
    names, size, bag_px, reasons = _attribute_problems(own, provenance, problems)
    boxes = arrays.get("boxes")
    if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4:
        problems.append(f"boxes must be (N, 4), not {None if boxes is None else boxes.shape}")
        return problems
    problems += _shape_problems(own, arrays, names, reasons)
    if size is not None and bag_px is not None:
        problems += _geometry_problems(arrays, bag_px, size)
    return problems


def _attribute_problems(own: dict[str, Any], provenance: Any, problems: list[str]
                        ) -> tuple[list[str] | None, list[int] | None, int | None,
                                   list[str] | None]:
    """Check the attributes alone (appending to *problems*); return the usable
    ``(class_names, slide_size, bag_px, failed_reasons)`` (None where unusable)."""
    from napari_mran.slide._metadata import MPP_MAX, MPP_MIN

    names = own.get("class_names")
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        problems.append(f"class_names must be a non-empty list of distinct names, not "
                        f"{short(names)}")
        names = None
    size = own.get("slide_size")
    if (not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size)
            or not all(1 <= v <= MAX_SLIDE_SIDE for v in size)):
        problems.append(f"slide_size must be [width, height] in whole pixels, 1 to "
                        f"{MAX_SLIDE_SIDE} each, not {short(size)}")
        size = None
    bag_px = own.get("bag_px")
    if not (_is_int(bag_px) and CELLS_PER_SIDE <= bag_px <= MAX_SLIDE_SIDE):
        problems.append(f"bag_px must be a whole number of pixels >= {CELLS_PER_SIDE}, not "
                        f"{short(bag_px)}")
        bag_px = None
    mpp = own.get("mpp")
    if mpp is not None:
        vals = mpp if isinstance(mpp, list) and len(mpp) == 2 else [mpp]
        if (isinstance(mpp, list) and len(mpp) != 2) or not all(
                _is_number(v) and math.isfinite(v) and MPP_MIN <= v <= MPP_MAX for v in vals):
            problems.append(f"mpp must be null, a number or an [x, y] pair within the "
                            f"plausible {MPP_MIN}-{MPP_MAX} µm/px, not {short(mpp)}")
    if not isinstance(own.get("degraded"), bool):
        problems.append(f"degraded must be true or false, not {short(own.get('degraded'))}")
    reasons = own.get("failed_reasons")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        problems.append("failed_reasons must be a list of strings")
        reasons = None
    problems += _provenance_problems(own, provenance)
    return names, size, bag_px, reasons


def _provenance_problems(own: dict[str, Any], provenance: Any) -> list[str]:
    if not isinstance(provenance, dict):
        return ["the provenance attribute must be a JSON object"]
    model = provenance.get("model")
    demo = isinstance(model, dict) and model.get("demo") is True
    if own.get("model_is_demo") is not demo:
        return [f"model_is_demo is {short(own.get('model_is_demo'))} but the "
                f"provenance says the model is {'' if demo else 'not '}the demo model"]
    return []


def _shape_problems(own: dict[str, Any], arrays: dict[str, np.ndarray],
                    names: list[str] | None, reasons: list[str] | None) -> list[str]:
    """Shapes: N bags (``boxes``), C classes, K failed bags."""
    problems = []
    n = arrays["boxes"].shape[0]
    if own.get("n_bags") != n or not _is_int(own.get("n_bags")):
        problems.append(f"n_bags is {short(own.get('n_bags'))} but boxes holds {n} bags")
    c = len(names) if names is not None else None
    for name, (_dtype, trailing) in ARRAYS.items():
        arr = arrays.get(name)
        if arr is None or c is None or name == "boxes":
            continue
        if trailing is None:
            expected: tuple[int, ...] = (c,)
        elif name == "failed_boxes":
            expected = (arr.shape[0] if arr.ndim == 2 else -1, 4)
        else:
            expected = (n, *trailing(c))
        if arr.shape != expected:
            problems.append(f"{name} is {arr.shape}, expected {expected} for {n} bags and "
                            f"{c} classes {names}")
    emb = arrays.get("embeddings")
    if emb is not None and (emb.ndim != 2 or emb.shape[0] != n or emb.shape[1] < 1):
        problems.append(f"embeddings is {emb.shape}, expected ({n}, E)")
    cells = arrays.get("cell_tissue")
    if cells is not None and cells.shape != (n, N_PATCHES, N_CELLS):
        problems.append(f"cell_tissue is {cells.shape}, expected ({n}, {N_PATCHES}, {N_CELLS})")
    elif cells is not None and cells.size and int(cells.max()) > 1:
        problems.append("cell_tissue holds values other than 0 and 1")
    failed = arrays.get("failed_boxes")
    if failed is not None and reasons is not None and failed.ndim == 2 \
            and failed.shape[0] != len(reasons):
        problems.append(f"{failed.shape[0]} failed boxes but {len(reasons)} failure reasons")
    return problems


def _geometry_problems(arrays: dict[str, np.ndarray], bag_px: int, size: list[int]
                       ) -> list[str]:
    """Every box a ``bag_px`` square on the grid that starts inside the slide; analysed
    and failed bags distinct."""
    w, h = size
    problems, checked = [], []
    for name in ("boxes", "failed_boxes"):
        b = arrays.get(name)
        if b is None or b.ndim != 2 or b.shape[1] != 4 or not b.shape[0]:
            continue
        b = b.astype(np.int64)
        bad = ((b[:, 2] - b[:, 0] != bag_px) | (b[:, 3] - b[:, 1] != bag_px)
               | (b[:, 0] % bag_px != 0) | (b[:, 1] % bag_px != 0)
               | (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 0] >= w) | (b[:, 1] >= h))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            problems.append(
                f"{name}[{i}] = {b[i].tolist()} is not a {bag_px} px bag of the grid of "
                f"a {w} x {h} px slide ({int(bad.sum())} such box(es))")
            continue
        checked.append(b)
    if checked and _has_duplicates(checked, bag_px, w):
        problems.append("two boxes (analysed or failed) cover the same bag")
    return problems
