"""The review record in a results store: what the store says about itself (classes,
bag size, model, marker checksum) and the marks' record, read and checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ResultsError
from ..results.schema import ATTRS_KEY
from ..results.store import (REVIEWS_GROUP, REVIEWS_KEY, read_bag_boxes, read_verified_attrs,
                             review_record, store_checksum)
from .marks import REVIEWS_VERSION, ReviewError, ReviewMark, mark_from_json, marks_sha256

if TYPE_CHECKING:
    from ..results import SlideResult

__all__ = ["Context", "context_of", "parse_record", "record_of"]


@dataclass(frozen=True)
class Context:
    """What marks are checked against: the store and the result it holds."""

    store: Path
    boxes: np.ndarray | None  # (N, 4) bag boxes; None: not read (summaries)
    class_names: list[str]
    bag_px: int
    model_sha256: str | None
    store_sha256: str


def _model_sha(provenance: Any) -> str | None:
    model = provenance.get("model") if isinstance(provenance, dict) else None
    sha = model.get("sha256") if isinstance(model, dict) else None
    return sha if isinstance(sha, str) else None


def context_of(store: Path, result: SlideResult | None, *, boxes: bool = True) -> Context:
    """The context of *store* (verified attributes; the bag boxes from *result*, or
    read from the store when *boxes*)."""
    if result is not None:
        attrs = read_verified_attrs(store)
        return Context(store, np.asarray(result.boxes), list(result.class_names),
                       int(result.bag_px), _model_sha(result.provenance), store_checksum(attrs))
    if boxes:
        attrs, bag_boxes = read_bag_boxes(store)
    else:
        attrs, bag_boxes = read_verified_attrs(store), None
    own = attrs[ATTRS_KEY]
    try:
        names, bag_px = [str(c) for c in own["class_names"]], int(own["bag_px"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{store}: invalid results store metadata ({exc})") from exc
    return Context(store, bag_boxes, names, bag_px, _model_sha(attrs.get("provenance")),
                   store_checksum(attrs))


def parse_record(ctx: Context) -> tuple[list[ReviewMark], str | None, str | None]:
    """(marks, the record's sha256, the store sha256 it refers to) of *ctx*'s store;
    ([], None, None) when it has none.  ReviewError for a corrupt or tampered record, or
    (boxes known) a mark whose bag is not a bag of the result."""
    where = f"{ctx.store}: review marks ({REVIEWS_GROUP}/zarr.json)"
    try:
        record = review_record(ctx.store)
    except ResultsError as exc:
        raise ReviewError(str(exc)) from None
    if record is None:
        return [], None, None
    if record.get("version") != REVIEWS_VERSION:
        raise ReviewError(f"{where}: version {record.get('version')!r} is not supported "
                          f"(this napari-mran reads version {REVIEWS_VERSION})")
    raw, store_sha = record.get("marks"), record.get("store_sha256")
    if not isinstance(raw, list) or marks_sha256(raw, store_sha) != record.get("sha256"):
        raise ReviewError(f"{where}: the marks do not match their checksum (edited or corrupt)")
    marks = []
    for i, d in enumerate(raw):
        try:
            marks.append(mark_from_json(d, ctx.class_names, ctx.bag_px))
        except ValueError as exc:
            raise ReviewError(f"{where}: mark {i}: {exc}") from None
    _check_places(where, marks, ctx.boxes)
    return marks, str(record["sha256"]), store_sha if isinstance(store_sha, str) else None


def _check_places(where: str, marks: list[ReviewMark], boxes: np.ndarray | None) -> None:
    bags = None if boxes is None else {tuple(int(v) for v in b) for b in boxes}
    seen = set()
    for i, m in enumerate(marks):
        if bags is not None and m.bag_box not in bags:
            raise ReviewError(f"{where}: mark {i} is on {list(m.bag_box)}, which is not a bag "
                              "of this result (marks of another bag grid?)")
        if m.place in seen:
            raise ReviewError(f"{where}: mark {i}: two marks at the same place")
        seen.add(m.place)


def record_of(marks: list[ReviewMark], store_sha256: str) -> dict[str, Any]:
    """The record saved for *marks* (sorted by place), with its checksum."""
    ordered = sorted(marks, key=lambda m: (m.bag_box[1], m.bag_box[0], -1 if m.patch_index is None else m.patch_index))
    raw = [m.to_json() for m in ordered]
    return {"version": REVIEWS_VERSION, "marks": raw, "store_sha256": store_sha256,
            "sha256": marks_sha256(raw, store_sha256)}
