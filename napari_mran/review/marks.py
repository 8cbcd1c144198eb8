"""One review mark, its JSON form and its checks (docs/review.md)."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ResultsError
from ..results.schema import N_PATCHES, PATCHES_PER_SIDE
from ..results.strict import canonical_sha256

__all__ = ["MARKS", "MARK_LEVELS", "REVIEWS_VERSION", "ReviewError", "ReviewMark",
           "mark_from_json", "marks_sha256", "now_iso", "patch_box"]

#: what a reviewer says about a bag or a patch
MARKS = ("agree", "disagree", "label")
#: what can be marked
MARK_LEVELS = ("bag", "patch")
REVIEWS_VERSION = 1
_SHA = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = ("level", "box", "bag_box", "patch_index", "mark", "label", "reviewer", "time",
           "model_sha256")

Box = tuple[int, int, int, int]


class ReviewError(ResultsError, ValueError):
    """Review marks that cannot be read, made or saved; the message names the store."""


@dataclass(frozen=True)
class ReviewMark:
    """A reviewer's mark on a bag (``patch_index`` None) or on one of its 64 patches.

    ``box`` and ``bag_box``: level-0 px ``[x0, y0, x1, y1]`` (a bag mark: both the
    bag's); ``patch_index`` p = row * 8 + col; ``label``: one of the result's class
    names when ``mark == "label"``, else None; ``time``: ISO 8601 UTC;
    ``model_sha256``: the model of the result that was marked.
    """

    level: str
    box: Box
    bag_box: Box
    patch_index: int | None
    mark: str
    label: str | None
    reviewer: str
    time: str
    model_sha256: str | None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"], d["bag_box"] = list(self.box), list(self.bag_box)
        return d

    @property
    def place(self) -> tuple[Box, int | None]:
        """Where the mark sits: (bag box, patch index or None)."""
        return self.bag_box, self.patch_index


def now_iso() -> str:
    """The current time, ISO 8601 UTC to the second (``2026-01-31T12:00:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def patch_box(bag_box: Box, bag_px: int, patch_index: int) -> Box:
    """Level-0 box of patch *patch_index* of the bag at *bag_box* (rounded to px)."""
    pp = bag_px / PATCHES_PER_SIDE
    row, col = divmod(patch_index, PATCHES_PER_SIDE)
    x0, y0 = bag_box[0], bag_box[1]
    return (round(x0 + col * pp), round(y0 + row * pp),
            round(x0 + (col + 1) * pp), round(y0 + (row + 1) * pp))


def marks_sha256(marks: list[dict[str, Any]], store_sha256: str | None) -> str:
    """The checksum of a review record: its marks and the store they refer to."""
    return canonical_sha256({"version": REVIEWS_VERSION, "marks": marks,
                             "store_sha256": store_sha256})


def check_label(mark: str, label: str | None, class_names: list[str]) -> None:
    """ValueError unless (mark, label) is allowed: a label exactly when mark is "label",
    and then one of *class_names*."""
    if mark not in MARKS:
        raise ValueError(f"mark must be one of {', '.join(MARKS)}, not {mark!r}")
    if mark == "label":
        if label not in class_names:
            raise ValueError(f"label must be one of the result's classes "
                             f"({', '.join(class_names)}), not {label!r}")
    elif label is not None:
        raise ValueError(f"a {mark!r} mark has no label (got {label!r})")


def _box(value: Any, what: str) -> Box:
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{what} must be 4 integers, not {value!r}")
    return (value[0], value[1], value[2], value[3])


def mark_from_json(d: Any, class_names: list[str], bag_px: int) -> ReviewMark:
    """A mark read from a record; ValueError saying what is wrong with it."""
    if not isinstance(d, dict) or sorted(d) != sorted(_FIELDS):
        raise ValueError(f"a mark must have exactly the fields {', '.join(_FIELDS)}")
    level, p = d["level"], d["patch_index"]
    if level not in MARK_LEVELS:
        raise ValueError(f"level must be bag or patch, not {level!r}")
    box, bag_box = _box(d["box"], "box"), _box(d["bag_box"], "bag_box")
    if level == "bag" and (p is not None or box != bag_box):
        raise ValueError("a bag mark has no patch_index and its box is its bag's")
    if level == "patch":
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < N_PATCHES:
            raise ValueError(f"patch_index must be 0..{N_PATCHES - 1}, not {p!r}")
        if box != patch_box(bag_box, bag_px, p):
            raise ValueError(f"box {list(box)} is not patch {p} of bag {list(bag_box)}")
    check_label(d["mark"], d["label"], class_names)
    if not isinstance(d["reviewer"], str) or not d["reviewer"].strip():
        raise ValueError("reviewer must be a non-empty name")
    _check_time(d["time"])
    sha = d["model_sha256"]
    if sha is not None and not (isinstance(sha, str) and _SHA.match(sha)):
        raise ValueError(f"model_sha256 must be 64 hex digits or null, not {sha!r}")
    return ReviewMark(level, box, bag_box, p, d["mark"], d["label"], d["reviewer"], d["time"],
                      sha)


def _check_time(value: Any) -> None:
    try:
        t = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        t = None
    if not isinstance(value, str) or t is None or t.utcoffset() != _dt.timedelta(0):
        raise ValueError(f"time must be ISO 8601 UTC, not {value!r}")
