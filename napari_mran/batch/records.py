"""What cohort prediction and evaluation report per slide, and their progress events."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..results import SlideResult

__all__ = ["BatchEvent", "SlideRecord", "SlideStatus", "Stage"]


class Stage(StrEnum):
    """The stage of a progress event (equal to its plain string: ``"plan"`` ...)."""

    PLAN = "plan"          # after the checks, before any slide
    SLIDE = "slide"        # one slide finished (any status)
    METRICS = "metrics"    # evaluation: metrics computed, outputs not yet written
    DONE = "done"          # everything written


class SlideStatus(StrEnum):
    """How a slide ended in a run."""

    DONE = "done"          # predict: analysed and its store written
    SKIPPED = "skipped"    # predict: a verified store made the same way was kept
    ANALYSED = "analysed"  # evaluate: analysed now
    REUSED = "reused"      # evaluate: read from a verified store of a predict run
    FAILED = "failed"      # error class and message recorded; the others went on


@dataclass
class SlideRecord:
    """One slide of a cohort or evaluation run (a row of its predictions.csv)."""

    index: int                        # position in the run's slide list
    slide: str                        # predict: absolute path; evaluate: as in labels.csv
    store: str | None = None          # the results store's name (predict) or path (reused)
    status: SlideStatus = SlideStatus.FAILED
    probs: list[float] | None = None  # slide-level class probabilities
    n_bags: int | None = None
    failed_bags: int | None = None
    degraded: bool | None = None
    seconds: float | None = None
    error: str | None = None          # exception class of a failure
    message: str | None = None        # its message, or a note on a finished slide
    host: str | None = None           # where it ran (predict)
    pid: int | None = None
    traceback: str | None = None      # an unexpected exception's traceback (predict)
    label: int | None = None          # evaluate: the true class index
    case: str | None = None           # evaluate: the case the slide belongs to
    sweep: list[dict[str, Any]] | None = None  # evaluate: the top-k / top-m predictions

    @property
    def failed(self) -> bool:
        return self.status == SlideStatus.FAILED

    def take_result(self, result: SlideResult) -> None:
        """Copy the slide-level numbers of *result*."""
        self.probs = [float(p) for p in result.slide_probs]
        self.n_bags = result.n_bags
        self.failed_bags = int(len(result.failed_boxes))
        self.degraded = bool(result.degraded)

    def fail(self, error: str, message: str) -> None:
        self.status, self.error, self.message = SlideStatus.FAILED, error, message

    def failure(self) -> dict[str, Any]:
        """``{"slide", "error", "message"}`` (the ``failed`` lists of summaries)."""
        return {"slide": self.slide, "error": self.error, "message": self.message}

    def progress(self, note: str = "", name: str | None = None) -> str:
        """``"<status>: <name>"`` (default: the slide's file name) with the error of a
        failure, else *note*."""
        text = f"{self.status}: {os.path.basename(self.slide) if name is None else name}"
        if self.failed:
            return text + f" ({self.error}: {self.message})"
        return text + (f" ({note})" if note else "")

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for JSON)."""
        out = dataclasses.asdict(self)
        out["status"] = str(self.status)
        return out


@dataclass
class BatchEvent:
    """One progress event of a batch run (:class:`~napari_mran.cohort.CohortEvent`,
    :class:`~napari_mran.evaluation.EvaluationEvent`)."""

    stage: Stage
    index: int | None = None        # position of the slide in the run's list
    slide: str | None = None
    status: SlideStatus | None = None
    done: int = 0                   # slides finished so far (any status)
    total: int = 0
    failed: int = 0
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0
