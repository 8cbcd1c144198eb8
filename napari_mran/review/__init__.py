"""Review marks: a pathologist's agree / disagree / class-label marks on bags and
patches of a result, saved atomically into the results store's ``reviews/`` sub-group
(docs/review.md)."""

from __future__ import annotations

from .marks import MARK_LEVELS, MARKS, ReviewError, ReviewMark
from .reviews import Reviews, default_reviewer
from .summary import review_summary

__all__ = ["MARKS", "MARK_LEVELS", "ReviewError", "ReviewMark", "Reviews", "default_reviewer",
           "review_summary"]
