"""QuPath-compatible GeoJSON of bag/patch (or, for chosen bags, cell) scores.

Each object is a ``Feature`` with a ``Polygon`` in level-0 pixel coordinates
(QuPath's image coordinates: origin at the top-left of the full-resolution image).
``properties`` follow QuPath (>= 0.4): ``objectType``, ``name``,
``classification`` ``{name, color}``, ``measurements`` (a flat dict of numbers).

Object type by level (``object_type=None``): bags are ``"annotation"`` objects (a
slide has tens to a few thousand; they appear in QuPath's annotation list, to review
and edit), patches are ``"tile"`` objects (QuPath's tiles are detections: tens of
thousands are drawn cheaply, listed in the detection measurement table, and Measure >
Show measurement maps colours them by attention), cells are ``"detection"`` objects.
Any of the four can be forced with ``object_type``.

With the shown-cell mask (``cell_tissue``, docs/roi.md: cells on glass or outside the
analysed region are not shown), patches and cells that are not shown are left out (a
patch is shown when any of its 16 cells is); bags stay, and ``rank`` orders the shown
objects only (a bag with no shown cell has no ``rank``).  Results without the mask
(older stores) list every object on the slide.

Every feature has an ``id``: a UUID (version 5) derived from the slide and model
fingerprints in the result's provenance, the level, the object's indices and its
level-0 box, so that exporting the same result again gives the same ids, and another
bag size or tissue rule (other boxes) gives other ids.

A path ending in ``.gz`` is written gzip-compressed (QuPath reads ``.geojson.gz``).

A result of the bundled demo model (``result.model_is_demo``) says so twice: a
top-level member ``"napari_mran": {"model_is_demo": true, "note": ...}`` of the
FeatureCollection (a GeoJSON "foreign member", RFC 7946 section 6.1, which QuPath
ignores) and ``"model_is_demo": true`` in every feature's ``properties`` (kept when
features are copied into another collection).  Results of other models carry neither.

Strict JSON: non-finite numbers are never written.  A non-finite measurement is
left out of that feature's ``measurements`` (QuPath reads a missing measurement as
NaN, while a JSON ``null`` would break its reader); a feature whose probabilities
are all non-finite gets no classification.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mran._atomic import atomic_file
from napari_mran.results import (
    CELLS_PER_PATCH_SIDE,
    DEMO_MODEL_NOTE,
    N_CELLS,
    N_PATCHES,
    PATCHES_PER_SIDE,
    SlideResult,
)
from napari_mran.results.scores import rank_desc
from napari_mran.vocab import LEVELS, WEIGHTINGS, check_choice

__all__ = ["DEFAULT_CLASS_COLORS", "MAX_CELL_BAGS", "export_geojson"]

#: RGB colours of the classes, in class order (cycled when there are more classes).
DEFAULT_CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (56, 142, 60),  # class 0, e.g. normal
    (211, 47, 47),  # class 1, e.g. tumour
    (25, 118, 210),
    (251, 140, 0),
    (123, 31, 162),
    (0, 151, 167),
)
#: Cell polygons are only exported for a chosen subset of at most this many bags.
MAX_CELL_BAGS = 64
OBJECT_TYPES = ("detection", "annotation", "tile")
#: QuPath object type of each level when ``object_type`` is None.
LEVEL_OBJECT_TYPES = {"bag": "annotation", "patch": "tile", "cell": "detection"}
#: UUID-5 namespace of napari-mran's feature ids.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://napari-mran/geojson-feature")


def _num(value: float) -> float | int | None:
    """A finite JSON number from a float32 value (shortest text), or None."""
    f32 = np.float32(value)
    if not np.isfinite(f32):
        return None
    return float(str(f32))


def _coord(value: float) -> float | int:
    f = float(value)
    return int(f) if f.is_integer() else f


def _polygon(box: Sequence[float]) -> dict:
    x0, y0, x1, y1 = (_coord(v) for v in box)
    # closed ring; counter-clockwise by the shoelace formula on the raw numbers
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _bag_selection(result: SlideResult, bags: Iterable[int] | None) -> np.ndarray:
    if bags is None:
        return np.arange(result.n_bags)
    idx = np.asarray(list(bags), dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= result.n_bags):
        raise ValueError(f"bag indices must be in [0, {result.n_bags}), got {idx.tolist()}")
    return np.unique(idx)


def export_geojson(
    result: SlideResult,
    path: str | os.PathLike,
    *,
    level: str = "bag",
    weighting: str = "local",
    bags: Iterable[int] | None = None,
    object_type: str | None = None,
    class_colors: Sequence[Sequence[int]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a GeoJSON FeatureCollection of one level of *result*; return the path.

    Parameters
    ----------
    level : ``"bag"`` or ``"patch"`` (64 polygons per bag), or ``"cell"`` (1024 per
        bag; only together with ``bags``, at most MAX_CELL_BAGS of them).
    weighting : which attention becomes the ``score`` measurement and orders
        ``rank``: ``"local"`` (gamma / alpha / beta) or ``"global"`` (gamma,
        gamma*alpha, gamma*alpha*beta).  Both attentions are always included.
    bags : optional bag indices to export (default: all bags).
    object_type : None (by level: bag ``"annotation"``, patch ``"tile"``, cell
        ``"detection"``), or one of ``"annotation"``, ``"tile"``, ``"detection"``.

    Patches and cells not shown (``result.shown(level)``, when the result has the
    mask) are left out; bags stay.  Measurements per feature: ``bag_index`` (+
    ``patch_index``, ``cell_index``), ``attention``, ``attention_global``, ``score``,
    ``rank`` (1 = highest score among the exported shown features), ``prob_<class>``.
    Classification: the class with the highest probability at that level.
    """
    object_type, colors = _check_options(level, weighting, bags, object_type, class_colors)
    sel = _bag_selection(result, bags)
    if level == "cell" and sel.size > MAX_CELL_BAGS:
        raise ValueError(f"cell polygons: at most {MAX_CELL_BAGS} bags at a time, got {sel.size}")
    features = _LevelFeatures(result, level, weighting, sel, object_type, colors)
    _write_collection(path, features, overwrite=overwrite)
    return Path(path)


def _check_options(level: str, weighting: str, bags: Iterable[int] | None,
                   object_type: str | None, class_colors: Sequence[Sequence[int]] | None
                   ) -> tuple[str, list[tuple[int, ...]]]:
    """``(object type, class colours)`` after checking the options (ValueError)."""
    check_choice("level", level, LEVELS)
    check_choice("weighting", weighting, WEIGHTINGS)
    if object_type is None:
        object_type = LEVEL_OBJECT_TYPES[level]
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be None or one of {OBJECT_TYPES}, "
                         f"not {object_type!r}")
    if level == "cell" and bags is None:
        raise ValueError(
            "cell polygons are exported only for chosen bags (pass bags=[...]); "
            "use the cell heatmap (OME-TIFF/OME-Zarr) or CSV for the whole slide"
        )
    colors = [tuple(int(v) for v in c) for c in (class_colors or DEFAULT_CLASS_COLORS)]
    if not colors or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
        raise ValueError("class_colors must be RGB triples in 0-255")
    return object_type, colors


class _LevelFeatures:
    """The features of one level of the selected bags, one JSON text each."""

    def __init__(self, result: SlideResult, level: str, weighting: str, sel: np.ndarray,
                 object_type: str, colors: list[tuple[int, ...]]):
        self.level, self.sel, self.object_type, self.colors = level, sel, object_type, colors
        self.per_bag_shape = {"bag": (), "patch": (N_PATCHES,),
                              "cell": (N_PATCHES, N_CELLS)}[level]
        self.local = result.scores(level, "local")[sel]
        self.glob = result.scores(level, "global")[sel]
        self.score = self.glob if weighting == "global" else self.local
        self.probs = {"bag": result.bag_probs, "patch": result.patch_probs,
                      "cell": result.cell_probs}[level][sel]
        # geometry clipped to the slide; patches/cells wholly past its edge (the padding
        # of partial edge bags) are left out and not ranked
        boxes, inside = result.slide_boxes(level)
        self.boxes, self.inside = boxes[sel], inside[sel]
        # with the shown-cell mask: patches/cells not shown (glass, outside the region)
        # are left out; bags stay, but only shown ones are ranked
        shown = result.shown(level)
        ranked = self.inside if shown is None else self.inside & shown[sel]
        if level != "bag":
            self.inside = ranked
        self.ranks = rank_desc(np.where(ranked, self.score, np.nan).reshape(-1)
                               ).reshape(self.score.shape)
        self.ranked = ranked
        self.class_names = result.class_names
        self.prob_keys = [f"prob_{n}" for n in self.class_names]
        self.id_base = f"{_fingerprint(result)}/{level}"
        self.demo = result.model_is_demo

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Index of every feature that lies on the slide."""
        for idx in np.ndindex((self.sel.size, *self.per_bag_shape)):
            if self.inside[idx]:
                yield idx

    def _name(self, idx: tuple[int, ...]) -> tuple[str, dict[str, float | int]]:
        b = int(self.sel[idx[0]])
        measurements: dict[str, float | int] = {"bag_index": b}
        name = f"bag {b}"
        if self.level in ("patch", "cell"):
            p = idx[1]
            measurements["patch_index"] = p
            name += f" patch {p} (row {p // PATCHES_PER_SIDE}, col {p % PATCHES_PER_SIDE})"
        if self.level == "cell":
            c = idx[2]
            measurements["cell_index"] = c
            name += f" cell {c} (row {c // CELLS_PER_PATCH_SIDE}, col {c % CELLS_PER_PATCH_SIDE})"
        return name, measurements

    def properties(self, idx: tuple[int, ...]) -> dict[str, Any]:
        name, measurements = self._name(idx)
        values = {
            "attention": _num(self.local[idx]),
            "attention_global": _num(self.glob[idx]),
            "score": _num(self.score[idx]),
        }
        if values["score"] is not None and self.ranked[idx]:
            values["rank"] = int(self.ranks[idx])
        p_vals = [_num(v) for v in self.probs[idx]]
        values.update(zip(self.prob_keys, p_vals))
        measurements.update({k: v for k, v in values.items() if v is not None})
        props: dict[str, Any] = {"objectType": self.object_type, "name": name}
        if self.demo:
            props["model_is_demo"] = True
        finite = [(v, k) for k, v in enumerate(p_vals) if v is not None]
        if finite:
            best = max(finite, key=lambda t: (t[0], -t[1]))[1]
            props["classification"] = {
                "name": self.class_names[best],
                "color": list(self.colors[best % len(self.colors)]),
            }
        props["measurements"] = measurements
        return props

    def feature(self, idx: tuple[int, ...]) -> str:
        box = ",".join(f"{float(v):g}" for v in self.boxes[idx])  # ties the id to the geometry
        key = "/".join([self.id_base, str(int(self.sel[idx[0]])),
                        *(str(int(i)) for i in idx[1:]), box])
        feat = {"type": "Feature", "id": str(uuid.uuid5(ID_NAMESPACE, key)),
                "geometry": _polygon(self.boxes[idx]), "properties": self.properties(idx)}
        return json.dumps(feat, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _write_collection(path: str | os.PathLike, features: _LevelFeatures, *,
                      overwrite: bool) -> None:
    """The FeatureCollection, one feature a line; gzip-compressed for a ``.gz`` path."""
    compress = os.fspath(path).lower().endswith(".gz")
    with atomic_file(path, "wb", overwrite=overwrite) as raw:
        # mtime=0: the same result gives byte-identical .gz files
        zipped = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else None
        target = zipped if zipped is not None else raw
        fh = io.TextIOWrapper(target, encoding="utf-8", newline="\n")
        head = '{"type":"FeatureCollection",'
        if features.demo:
            head += json.dumps({"napari_mran": {"model_is_demo": True, "note": DEMO_MODEL_NOTE}},
                               ensure_ascii=False, separators=(",", ":"))[1:-1] + ","
        fh.write(head + '"features":[\n')
        first = True
        for idx in features.indices():
            if not first:
                fh.write(",\n")
            fh.write(features.feature(idx))
            first = False
        fh.write("\n]}\n")
        fh.flush()
        fh.detach()  # leave *raw* open: atomic_file syncs and publishes it
        if zipped is not None:
            zipped.close()  # writes the gzip trailer into *raw*


def _fingerprint(result: SlideResult) -> str:
    """Slide + model identity from the provenance (for stable feature ids)."""
    prov = result.provenance or {}
    slide = prov.get("slide") or {}
    model = prov.get("model") or {}
    parts = [slide.get("sha256_first_mb") or slide.get("path") or result.slide_name or "",
             str(slide.get("bytes") or ""), model.get("sha256") or "",
             "x".join(str(v) for v in result.slide_size)]
    return "|".join(parts)
