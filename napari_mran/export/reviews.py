"""Exports of a store's review marks (docs/review.md): QuPath GeoJSON annotations and a
CSV table, one feature / row per mark.

GeoJSON: a ``FeatureCollection`` of ``Polygon`` features in level-0 px (closed rings,
clipped to the slide), each ``objectType: "annotation"`` with ``classification``
``{"name": "Agree" | "Disagree" | <class label>, "color": [r, g, b]}`` and properties
``mark``, ``label``, ``level``, ``bag_index``, ``patch_index``, ``reviewer``, ``time``,
``model_sha256``, ``bag_attention`` (gamma) and, for patch marks, ``patch_attention``
(alpha); ``measurements`` repeats the attention for QuPath's measurement table.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path
from typing import Any

from .._atomic import atomic_file
from ..errors import ResultsError
from ..results import DEMO_MODEL_NOTE, SlideResult
from ..review import ReviewMark, Reviews
from .geojson import DEFAULT_CLASS_COLORS
from .table import csv_safe

__all__ = ["CSV_COLUMNS", "MARK_COLORS", "export_reviews", "load_marks"]

#: colours of the agree / disagree classifications (labels: the class's colour)
MARK_COLORS = {"agree": (0, 170, 0), "disagree": (220, 0, 0)}
CSV_COLUMNS = ("slide", "level", "bag_index", "patch_index", "x0", "y0", "x1", "y1",
               "mark", "label", "classification", "reviewer", "time", "model_sha256",
               "bag_attention", "patch_attention")
_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://napari-mran/review-mark")


def load_marks(result: SlideResult, store: str | os.PathLike) -> Reviews:
    """The marks of *store* resolved through *result*; ReviewError (a ResultsError)
    naming the store when it has none: there is nothing to export."""
    reviews = Reviews.load(store, result)
    if not reviews.marks:
        from ..review import ReviewError

        raise ReviewError(f"{store}: holds no review marks; nothing to export (mark bags "
                          "in napari first)")
    return reviews


def _row(result: SlideResult, bags: dict[tuple[int, ...], int], m: ReviewMark) -> dict[str, Any]:
    i = bags[m.bag_box]
    w, h = result.slide_size
    box = [min(m.box[0], w), min(m.box[1], h), min(m.box[2], w), min(m.box[3], h)]
    if box[2] <= box[0] or box[3] <= box[1]:  # a patch in the padding of an edge bag
        box = list(m.box)
    if m.mark == "label":
        cls = m.label or ""
        color = DEFAULT_CLASS_COLORS[result.class_names.index(cls) % len(DEFAULT_CLASS_COLORS)]
    else:
        cls, color = m.mark.capitalize(), MARK_COLORS[m.mark]
    patch_att = None if m.patch_index is None else float(result.patch_attention[i, m.patch_index])
    return {"level": m.level, "bag_index": i, "patch_index": m.patch_index, "box": box,
            "mark": m.mark, "label": m.label, "classification": cls, "color": list(color),
            "reviewer": m.reviewer, "time": m.time, "model_sha256": m.model_sha256,
            "bag_attention": float(result.bag_attention[i]), "patch_attention": patch_att}


def _rows(result: SlideResult, reviews: Reviews) -> list[dict[str, Any]]:
    bags = {tuple(int(v) for v in b): i for i, b in enumerate(result.boxes)}
    return [_row(result, bags, m) for m in reviews.marks]


def _feature(r: dict[str, Any], slide_key: str) -> dict[str, Any]:
    x0, y0, x1, y1 = r["box"]
    where = f"bag {r['bag_index']}" if r["patch_index"] is None else \
        f"patch {r['patch_index']} of bag {r['bag_index']}"
    props = {"objectType": "annotation", "name": f"{r['classification']} ({where})",
             "classification": {"name": r["classification"], "color": r["color"]},
             "isLocked": False,
             **{k: r[k] for k in ("mark", "label", "level", "bag_index", "patch_index",
                                  "reviewer", "time", "model_sha256", "bag_attention")},
             "measurements": {"bag attention": r["bag_attention"]}}
    if r["patch_attention"] is not None:
        props["patch_attention"] = r["patch_attention"]
        props["measurements"]["patch attention"] = r["patch_attention"]
    key = f"{slide_key}|{r['box']}|{r['patch_index']}|{r['reviewer']}|{r['time']}"
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Feature", "id": str(uuid.uuid5(_NS, key)),
            "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}


def _write_geojson(result: SlideResult, reviews: Reviews, path: Path, overwrite: bool) -> Path:
    slide_key = f"{result.slide_name}|{Path(reviews.store).name}"
    doc: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [_feature(r, slide_key) for r in _rows(result, reviews)],
        "napari_mran": {"review_marks_of": result.slide_name, "counts": reviews.counts(),
                        "model_warning": reviews.model_warning()}}
    if result.model_is_demo:
        doc["napari_mran"].update(model_is_demo=True, note=DEMO_MODEL_NOTE)
    with atomic_file(path, "w", overwrite=overwrite) as fh:
        json.dump(doc, fh, allow_nan=False, ensure_ascii=False)
        fh.write("\n")
    return path


def _write_csv(result: SlideResult, reviews: Reviews, path: Path, overwrite: bool) -> Path:
    slide = csv_safe(result.slide_name)
    with atomic_file(path, "w", overwrite=overwrite, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in _rows(result, reviews):
            text = [csv_safe(r[k]) for k in ("mark", "label", "classification", "reviewer",
                                             "time", "model_sha256")]
            att = [f"{r['bag_attention']:.7g}", "" if r["patch_attention"] is None
                   else f"{r['patch_attention']:.7g}"]
            writer.writerow([slide, r["level"], r["bag_index"],
                             "" if r["patch_index"] is None else r["patch_index"],
                             *r["box"], *text, *att])
    return path


def export_reviews(result: SlideResult, path: str | os.PathLike, *, store: str | os.PathLike,
                   format: str, overwrite: bool = False) -> Path:
    """Write the review marks of *store* (whose result is *result*) as ``format``
    ``"geojson"`` or ``"csv"`` to *path*, atomically; return *path*.  ReviewError when
    the store holds no marks or they do not load."""
    writers = {"geojson": _write_geojson, "csv": _write_csv}
    if format not in writers:
        raise ResultsError(f"review marks are exported as geojson or csv, not {format!r}")
    return writers[format](result, load_marks(result, store), Path(path), overwrite)
