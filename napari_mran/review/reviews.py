"""The review marks of one results store: set, clear, undo/redo, save (docs/review.md)."""

from __future__ import annotations

import getpass
import operator
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._atomic import remove_stale_partials
from ..results.schema import N_PATCHES
from ..results.store import REVIEWS_GROUP, REVIEWS_KEY, read_verified_attrs, store_checksum
from ..results.zarr_io import write_subgroup_attrs
from .marks import (MARKS, ReviewError, ReviewMark, check_label, now_iso, patch_box)
from .record import Context, context_of, parse_record, record_of

if TYPE_CHECKING:
    from ..results import SlideResult

__all__ = ["Reviews", "default_reviewer", "mark_counts", "model_warning_of"]

Place = tuple[tuple[int, int, int, int], "int | None"]
#: one undo step: the (place, mark before, mark after) changes it made, in order
Step = list[tuple[Place, "ReviewMark | None", "ReviewMark | None"]]


def default_reviewer() -> str:
    """The login name of the user (``getpass.getuser()``), "unknown" when it has none."""
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError, ImportError):
        return "unknown"


def mark_counts(marks: Sequence[ReviewMark]) -> dict[str, int]:
    """{"marks", "bags" (bag marks), "patches" (patch marks), "agree", "disagree", "label"}."""
    kinds = Counter(m.mark for m in marks)
    return {"marks": len(marks), "bags": sum(m.level == "bag" for m in marks),
            "patches": sum(m.level == "patch" for m in marks),
            **{k: kinds.get(k, 0) for k in MARKS}}


def model_warning_of(marks: Sequence[ReviewMark], model_sha256: str | None,
                     record_store_sha: str | None, store_sha256: str) -> str | None:
    """Why marks may not fit the result they are shown on (None: they do)."""
    if not marks:
        return None
    other = [m for m in marks if m.model_sha256 != model_sha256]
    if other:
        theirs = sorted({(m.model_sha256 or "unknown")[:12] for m in other})
        return (f"{len(other)} of {len(marks)} review mark(s) were made on results of another "
                f"model version (sha256 {', '.join(theirs)}...) than this store's "
                f"({(model_sha256 or 'unknown')[:12]}...)")
    if record_store_sha is not None and record_store_sha != store_sha256:
        return "the review marks were saved on an earlier version of this results store"
    return None


class Reviews:
    """The review marks of the results store *store* (load with :meth:`load`)."""

    def __init__(self, ctx: Context, marks: list[ReviewMark], disk_sha: str | None,
                 record_store_sha: str | None):
        self._ctx = ctx
        self.store: Path = ctx.store
        self._marks: dict[Place, ReviewMark] = {m.place: m for m in marks}
        self._saved = dict(self._marks)
        self._disk_sha = disk_sha
        self._record_store_sha = record_store_sha
        self._undo: list[Step] = []
        self._redo: list[Step] = []
        self._group: Step | None = None  # the step being collected by group()
        assert ctx.boxes is not None
        self._bags = [tuple(int(v) for v in b) for b in ctx.boxes]

    @classmethod
    def load(cls, store: str | os.PathLike, result: SlideResult | None = None) -> Reviews:
        """The marks of *store* (none when it has none).  Bag indices resolve through
        *result* (default: the store's own bag boxes).  ReviewError when the marks are
        corrupt, tampered with, or on bags that are not the result's; ResultsError when
        the store itself does not verify."""
        store = Path(store)
        remove_stale_partials(store / REVIEWS_GROUP / "zarr.json", directory=False)
        ctx = context_of(store, result)
        marks, disk_sha, record_store_sha = parse_record(ctx)
        return cls(ctx, marks, disk_sha, record_store_sha)

    # -- reading ---------------------------------------------------------------------

    @property
    def marks(self) -> list[ReviewMark]:
        """The marks (a copy, in bag-grid order)."""
        return sorted(self._marks.values(), key=lambda m: (
            m.bag_box[1], m.bag_box[0], -1 if m.patch_index is None else m.patch_index))

    @property
    def dirty(self) -> bool:
        """Whether the marks differ from those saved (or loaded)."""
        return self._marks != self._saved

    @property
    def class_names(self) -> list[str]:
        return list(self._ctx.class_names)

    def mark_at(self, bag_index: int, patch_index: int | None = None) -> ReviewMark | None:
        return self._marks.get(self._place(bag_index, patch_index))

    def counts(self) -> dict[str, int]:
        return mark_counts(list(self._marks.values()))

    def model_warning(self) -> str | None:
        """Set when marks were made on another model version than the store's (or the
        store was written again since the marks were saved)."""
        return model_warning_of(list(self._marks.values()), self._ctx.model_sha256,
                                self._record_store_sha, self._ctx.store_sha256)

    # -- editing ---------------------------------------------------------------------

    def set_bag(self, bag_index: int, mark: str, label: str | None = None, *,
                reviewer: str | None = None) -> ReviewMark:
        """Mark bag *bag_index* (replacing its mark, if any); return the new mark."""
        return self._set(bag_index, None, mark, label, reviewer)

    def set_patch(self, bag_index: int, patch_index: int, mark: str, label: str | None = None,
                  *, reviewer: str | None = None) -> ReviewMark:
        """Mark patch *patch_index* (p = row * 8 + col) of bag *bag_index*."""
        if patch_index is None:
            raise ReviewError(f"{self.store}: set_patch needs a patch index (0..63)")
        return self._set(bag_index, patch_index, mark, label, reviewer)

    def clear(self, bag_index: int, patch_index: int | None = None) -> None:
        """Remove the mark of a bag (patch_index None) or of a patch; no-op if none."""
        place = self._place(bag_index, patch_index)
        if place in self._marks:
            self._apply(place, None)

    @contextmanager
    def group(self) -> Iterator[None]:
        """The sets and clears made inside are one undo step (a click, a paint stroke);
        nested groups join the outer one; a group that changed nothing is no step."""
        if self._group is not None:
            yield
            return
        self._group = []
        try:
            yield
        finally:
            step, self._group = self._group, None
            if step:
                self._undo.append(step)
                self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> bool:
        """Undo the last step (a set/clear, or a :meth:`group` of them) of this
        session; False when there is none."""
        if not self._undo:
            return False
        step = self._undo.pop()
        for place, before, _after in reversed(step):
            self._put(place, before)
        self._redo.append(step)
        return True

    def redo(self) -> bool:
        """Redo the last undone step; False when there is none."""
        if not self._redo:
            return False
        step = self._redo.pop()
        for place, _before, after in step:
            self._put(place, after)
        self._undo.append(step)
        return True

    def _set(self, bag_index: int, patch_index: int | None, mark: str, label: str | None,
             reviewer: str | None) -> ReviewMark:
        place = self._place(bag_index, patch_index)
        try:
            check_label(mark, label, self._ctx.class_names)
        except ValueError as exc:
            raise ReviewError(f"{self.store}: {exc}") from None
        name = default_reviewer() if reviewer is None else str(reviewer).strip()
        if not name:
            raise ReviewError(f"{self.store}: the reviewer needs a name")
        bag_box = place[0]
        box = bag_box if patch_index is None else patch_box(bag_box, self._ctx.bag_px,
                                                             patch_index)
        new = ReviewMark("bag" if patch_index is None else "patch", box, bag_box, patch_index,
                         mark, label, name, now_iso(), self._ctx.model_sha256)
        self._apply(place, new)
        return new

    def _apply(self, place: Place, new: ReviewMark | None) -> None:
        change = (place, self._marks.get(place), new)
        if self._group is not None:
            self._group.append(change)
        else:
            self._undo.append([change])
            self._redo.clear()
        self._put(place, new)

    def _put(self, place: Place, mark: ReviewMark | None) -> None:
        if mark is None:
            self._marks.pop(place, None)
        else:
            self._marks[place] = mark

    def _place(self, bag_index: Any, patch_index: Any) -> Place:
        n = len(self._bags)
        try:
            i = -1 if isinstance(bag_index, bool) else operator.index(bag_index)
        except TypeError:
            i = -1
        if not 0 <= i < n:
            raise ReviewError(f"{self.store}: bag index {bag_index!r} is not one of the "
                              f"{n} bags (0..{n - 1})")
        if patch_index is None:
            return self._bags[i], None  # type: ignore[return-value]
        try:
            p = -1 if isinstance(patch_index, bool) else operator.index(patch_index)
        except TypeError:
            p = -1
        if not 0 <= p < N_PATCHES:
            raise ReviewError(f"{self.store}: patch index must be 0..{N_PATCHES - 1}, "
                              f"not {patch_index!r}")
        return self._bags[i], p  # type: ignore[return-value]

    # -- saving ----------------------------------------------------------------------

    def save(self) -> Path:
        """Write the marks atomically into the store's ``reviews/`` sub-group; return its
        ``zarr.json``.  Refused (ReviewError, nothing written) when the store was written
        again, or its marks were saved by someone else, since they were loaded."""
        now_sha = store_checksum(read_verified_attrs(self.store))
        if now_sha != self._ctx.store_sha256:
            raise ReviewError(f"{self.store}: the results store was written again since its "
                              "marks were opened; your marks are not saved (reopen the store)")
        _, disk_sha, _ = parse_record(self._ctx)
        if disk_sha != self._disk_sha:
            raise ReviewError(f"{self.store}: its review marks were saved by another session "
                              "since they were opened; your marks are not saved (reopen it)")
        record = record_of(list(self._marks.values()), now_sha)
        path = write_subgroup_attrs(self.store, REVIEWS_GROUP, {REVIEWS_KEY: record})
        self._disk_sha, self._record_store_sha = record["sha256"], now_sha
        self._saved = dict(self._marks)
        return path
