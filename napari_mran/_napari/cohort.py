"""The cohort under review (no Qt): the rows of a ``predict`` output folder and what
the "Cohort review" panel opens for one of them.

:class:`CohortTable` reads ``predictions.csv`` at once (strictly: a folder that is not a
predict output is a :class:`CohortReviewError` naming the file and the reason), then the
per-store details (the top-bag attention, the review marks) one row at a time
(:meth:`CohortTable.iter_details`, run in a worker thread by the panel).
:func:`load_slide_view` reads one row's store and slide into napari layer tuples (in a
worker); the panel adds them on the main thread.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..batch.cohort import PREDICTIONS_NAME
from ..batch.manifest import find_store
from ..errors import MRANError, ResultsError
from ..vocab import STORE_SUFFIX

#: predictions.csv columns the table needs (besides at least one ``prob_<class>``)
REQUIRED = ("slide", "store", "status", "predicted", "n_bags", "failed_bags", "degraded",
            "error", "message")
#: (key, header) of the table's columns, in order
COLUMNS = (("name", "slide"), ("predicted", "predicted"), ("probability", "probability"),
           ("top_attention", "top bag γ"), ("failed_bags", "failed bags"),
           ("degraded", "degraded"), ("reviewed", "reviewed"), ("status", "status"))
NO_VALUE = "—"


class CohortReviewError(MRANError):
    """A folder that cannot be reviewed (not a predict output, unreadable table)."""


def _review_summary():
    """``napari_mran.review.review_summary`` once it exists, else None."""
    try:
        from ..review import review_summary  # type: ignore[attr-defined]
    except ImportError:
        return None
    return review_summary


@dataclass
class CohortRow:
    """One slide of the cohort."""

    index: int
    name: str                      # the slide's file name
    slide: str                     # its path, as predict recorded it
    store: str | None              # the results store (absolute), None for a failed slide
    status: str                    # done / skipped / failed (predictions.csv)
    predicted: str = ""
    probability: float | None = None  # of the predicted class
    n_bags: int | None = None
    failed_bags: int | None = None
    degraded: bool | None = None
    error: str = ""                # predict's error, or a problem found while reviewing
    top_attention: float | None = None  # max bag attention γ (read from the store)
    review: dict[str, Any] | None = None  # review_summary(store); None: not known
    details: bool = False          # top_attention / review were read

    @property
    def failed(self) -> bool:
        return self.status == "failed" or self.store is None

    @property
    def reviewed(self) -> int | None:
        """Review marks on the slide (0: none); None when unknown."""
        if self.review is None:
            return None
        return int(self.review.get("marks", 0) or 0)

    def text(self, key: str) -> str:
        """The cell of column *key* as shown."""
        value = getattr(self, key) if key != "status" else self.status_text()
        if value is None or value == "":
            return NO_VALUE
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    def status_text(self) -> str:
        return f"{self.status}: {self.error}" if self.error else self.status

    def sort_key(self, key: str) -> tuple:
        """A key that sorts column *key* (unknown values last in ascending order)."""
        value = getattr(self, key) if key != "status" else self.status_text()
        if value is None:
            return (1, 0.0, "")
        if isinstance(value, (int, float)):
            return (0, float(value), "")
        return (0, 0.0, str(value).lower())


@dataclass
class RowFilter:
    """What the table shows: *text* in the name or predicted class, only degraded
    slides, only slides without review marks."""

    text: str = ""
    only_degraded: bool = False
    only_unreviewed: bool = False

    def accepts(self, row: CohortRow) -> bool:
        t = self.text.strip().lower()
        if t and t not in row.name.lower() and t not in row.predicted.lower():
            return False
        if self.only_degraded and not row.degraded:
            return False
        return not (self.only_unreviewed and (row.reviewed or 0) > 0)


@dataclass
class CohortTable:
    """The rows of a predict output folder."""

    folder: Path
    rows: list[CohortRow] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> CohortTable:
        """Read ``<folder>/predictions.csv`` (CohortReviewError naming it when it is
        missing or not one ``napari-mran predict`` wrote)."""
        folder = Path(folder).expanduser().absolute()
        if not folder.is_dir():
            raise CohortReviewError(f"{folder}: not a folder")
        path = folder / PREDICTIONS_NAME
        header, records = _read_csv(path)
        classes = [h[len("prob_"):] for h in header if h.startswith("prob_")]
        missing = [c for c in REQUIRED if c not in header]
        if missing or not classes:
            what = ", ".join(missing) if missing else "prob_<class>"
            raise CohortReviewError(f"{path}: not a napari-mran predict table "
                                    f"(no column {what})")
        rows = [_row(folder, i, rec, path) for i, rec in enumerate(records)]
        return cls(folder, rows, classes)

    def __len__(self) -> int:
        return len(self.rows)

    def order(self, key: str = "name", descending: bool = False,
              row_filter: RowFilter | None = None) -> list[int]:
        """Indices of the rows shown, sorted by column *key* (unknown values last)."""
        keep = [r for r in self.rows if row_filter is None or row_filter.accepts(r)]
        known = sorted((r for r in keep if r.sort_key(key)[0] == 0),
                       key=lambda r: r.sort_key(key), reverse=descending)
        return [r.index for r in known] + [r.index for r in keep
                                           if r.sort_key(key)[0] != 0]

    def find(self, store: str | os.PathLike) -> int | None:
        """The row of results store *store*, or None."""
        want = os.path.abspath(os.fspath(store).rstrip("/\\"))
        for r in self.rows:
            if r.store is not None and os.path.abspath(r.store) == want:
                return r.index
        return None

    def iter_details(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row, details)`` of every row not read yet (for a worker thread; apply each
        with :meth:`apply_details` on the main thread)."""
        for r in list(self.rows):
            if not r.details:
                yield r.index, read_details(r)

    def apply_details(self, index: int, details: dict[str, Any]) -> None:
        row = self.rows[index]
        row.details = True
        row.top_attention = details.get("top_attention")
        row.review = details.get("review")
        if details.get("problem") and not row.error:
            row.error = details["problem"]

    def refresh_reviews(self, index: int) -> None:
        """Read row *index*'s review marks again (after the slide was reviewed)."""
        row = self.rows[index]
        row.review = _read_review(row.store)

    def mark_problem(self, index: int, problem: str) -> None:
        """Record a problem met while reviewing (a missing slide, a corrupt store)."""
        self.rows[index].error = problem


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise CohortReviewError(f"{path}: no such file (not a napari-mran predict output "
                                "folder)")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, strict=True)
            header = list(reader.fieldnames or [])
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortReviewError(f"{path}: cannot be read: {exc}") from None
    if any(None in rec or None in rec.values() for rec in records):
        raise CohortReviewError(f"{path}: rows do not match the header")
    return header, records


def _row(folder: Path, i: int, rec: dict[str, str], path: Path) -> CohortRow:
    slide = rec["slide"]
    status = rec["status"]
    store = None if status == "failed" else _store_path(folder, slide, rec["store"])
    predicted = rec["predicted"]
    try:
        prob = rec.get(f"prob_{predicted}", "") if predicted else ""
        return CohortRow(
            index=i, name=os.path.basename(slide), slide=slide, store=store, status=status,
            predicted=predicted, probability=float(prob) if prob else None,
            n_bags=_int(rec["n_bags"]), failed_bags=_int(rec["failed_bags"]),
            degraded={"true": True, "false": False}.get(rec["degraded"]),
            error=": ".join(x for x in (rec["error"], rec["message"]) if x)
            if status == "failed" else "")
    except ValueError as exc:
        raise CohortReviewError(f"{path}: row {i + 2}: {exc}") from None


def _int(text: str) -> int | None:
    return int(text) if text else None


def _store_path(folder: Path, slide: str, name: str) -> str:
    """The store of *slide*: by the folder's manifest, else the ``store`` column (a
    name inside the folder; a leading ``'`` is the CSV's formula escape)."""
    found = find_store(folder, slide)
    if found is not None:
        return str(found)
    if name.startswith("'") and not os.path.lexists(folder / name):
        name = name[1:]
    if not name.endswith(STORE_SUFFIX) or "/" in name or "\\" in name:
        raise CohortReviewError(f"{folder / PREDICTIONS_NAME}: store {name!r} of {slide} "
                                "is not a results store name")
    return str(folder / name)


def read_details(row: CohortRow) -> dict[str, Any]:
    """The top-bag attention (the store's ``bag_attention`` array only) and the review
    summary of *row*; ``problem`` when the store cannot be read."""
    out: dict[str, Any] = {"top_attention": None, "review": None}
    if row.store is None:
        return out
    if not os.path.isdir(row.store):
        out["problem"] = f"{row.store}: results store missing"
        return out
    from ..results.zarr_io import zarr_read

    try:
        gamma = zarr_read(Path(row.store), ["bag_attention"])["bag_attention"]
        out["top_attention"] = float(gamma.max()) if gamma.size else None
        if out["top_attention"] is not None and not math.isfinite(out["top_attention"]):
            out["top_attention"] = None
    except Exception as exc:  # noqa: BLE001 - zarr/json/OS errors of a damaged store
        out["problem"] = f"{row.store}: unreadable results store ({type(exc).__name__})"
    out["review"] = _read_review(row.store)
    return out


def _read_review(store: str | None) -> dict[str, Any] | None:
    summary = _review_summary()
    if summary is None or store is None:
        return None
    try:
        return dict(summary(store))
    except (MRANError, OSError, ValueError):
        return None


# ------------------------------------------------------------------ opening a row

@dataclass
class SlideView:
    """What the panel adds for one row: layer tuples (slide first when shown) and the
    warnings to notify on the main thread."""

    index: int
    layers: list[tuple]
    warnings: list[str]
    slide: Any = None  # the open Slide (closed when its layers are removed)
    problem: str = ""  # why the slide itself is not shown (the row is marked)


def load_slide_view(row: CohortRow) -> SlideView:
    """Read *row*'s store (verified) and open its slide (lazily) into layer tuples; a
    worker-thread job.  ResultsError names the store when it cannot be shown; a slide
    that is missing or of another size leaves the heatmaps alone, with a warning."""
    from ..results import SlideResult
    from . import keys
    from .frame import SlideFrame
    from .layers import result_layer_data, slide_layer_data
    from .reader import _open_matching_slide

    if row.store is None:
        raise ResultsError(f"{row.slide}: no result (predict failed: {row.error})")
    result = SlideResult.load(row.store)
    slide, why = _open_matching_slide(row.slide, result)
    out, warnings, frame, problem = [], [], None, ""
    if slide is not None:
        out.append(slide_layer_data(slide))
        frame = SlideFrame.from_slide(slide)
    else:
        warnings.append(f"napari-mran: {row.name} is not shown ({why}); its heatmaps are "
                        "shown alone")
        problem = f"slide not shown: {why}"
    out += result_layer_data(result, frame, extra_metadata={
        keys.RESULTS_PATH: os.path.abspath(row.store)})
    return SlideView(row.index, out, warnings, slide, problem)
