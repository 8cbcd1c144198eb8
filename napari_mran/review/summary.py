"""A cheap summary of a store's review marks (the cohort table): no array is read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .record import context_of, parse_record
from .reviews import mark_counts, model_warning_of

__all__ = ["review_summary"]


def review_summary(store: str | os.PathLike) -> dict[str, Any]:
    """Counts of the marks of *store* (:meth:`Reviews.counts`) with ``reviewers`` (sorted
    names), ``last_time`` (ISO 8601 UTC of the newest mark) and ``model_warning``
    (:meth:`Reviews.model_warning`); ``{}`` when it has no marks.

    Reads the store's attributes (verified against its completion marker) and the marks
    (checked against their checksum) -- not the arrays, so whether each mark sits on a
    bag of the grid is checked only by :meth:`Reviews.load`.  ReviewError for corrupt
    marks, ResultsError for a store that does not verify.
    """
    ctx = context_of(Path(store), None, boxes=False)
    marks, _, record_store_sha = parse_record(ctx)
    if not marks:
        return {}
    return {**mark_counts(marks),
            "reviewers": sorted({m.reviewer for m in marks}),
            "last_time": max(m.time for m in marks),
            "model_warning": model_warning_of(marks, ctx.model_sha256, record_store_sha,
                                              ctx.store_sha256)}
