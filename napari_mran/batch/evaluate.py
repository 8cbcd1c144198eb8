"""Evaluate a model on labelled slides, with the attention-faithfulness experiment
(:func:`evaluate`; public as :mod:`napari_mran.evaluation`, whose docstring lists the
outputs)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import AnalysisError, LabelsError, MRANError, OutputExistsError, ResultsError
from ..inference.options import AnalysisOptions
from ..labels import read_labels_table
from .common import fold_options
from .lock import OutputLock, prepare_out_dir
from .manifest import find_store
from .models import class_names, load_checkpoint
from .outputs import DEMO_MODEL_LABEL, model_label
from .records import BatchEvent, SlideRecord, SlideStatus, Stage
from .report import case_metrics, cell, faithfulness_table, sources, write_report
from .stores import store_status

if TYPE_CHECKING:
    from ..model import MRAN
    from ..results import SlideResult
    from ..slide import Slide

__all__ = ["EVALUATION_FILES", "EvaluationEvent", "evaluate", "run_evaluation"]

EVALUATION_FILES = {
    "predictions_csv": "predictions.csv",
    "metrics_json": "metrics.json",
    "roc_png": "roc.png",
    "faithfulness_json": "faithfulness.json",
    "faithfulness_md": "faithfulness.md",
}
METRICS_FORMAT = "napari-mran-evaluation"


@dataclass
class EvaluationEvent(BatchEvent):
    """One progress event of :func:`evaluate` (stages plan, slide -- ``status`` reused
    (verified store), analysed or failed --, metrics, done)."""


@dataclass
class _Evaluation:
    """One evaluation: the model, the labelled slides and where things go."""

    model: MRAN
    options: AnalysisOptions
    ks: list[Any]
    ms: list[Any]
    rows: list[dict[str, Any]]  # labels.csv (napari_mran.labels.read_labels_table)
    out: Path
    results_dir: Path | None
    meta: dict[str, Any]  # the common top of metrics.json and faithfulness.json

    @property
    def class_names(self) -> list[str]:
        return class_names(self.model)

    @property
    def files(self) -> dict[str, Path]:
        return {key: self.out / name for key, name in EVALUATION_FILES.items()}


def evaluate(
    model: Any,
    slides_dir: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: AnalysisOptions | None = None,
    *,
    k_list: Iterable[Any] = (1, 2, 4, 8, "all"),
    m_list: Iterable[Any] = (4, 16, 64),
    results_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    **legacy_kwargs: Any,
) -> Generator[EvaluationEvent, None, dict[str, Any]]:
    """Evaluate *model* on the labelled slides; a generator of events returning a report.

    Parameters
    ----------
    model : an :class:`~napari_mran.model.MRAN`, the path of a checkpoint, or ``"demo"``
        (the bundled synthetic demo model; the outputs then say so).
    slides_dir : folder the ``slide`` column of *labels_csv* is relative to.
    labels_csv : ``slide,label[,case]`` (see :func:`napari_mran.evaluation.read_labels`).
    out_dir : where the outputs go (created if missing; existing outputs are
        replaced only with ``overwrite=True``; locked while the run lasts).
    options : how to analyse a slide (:class:`~napari_mran.inference.AnalysisOptions`;
        keyword arguments named like its fields are folded in, as for
        :func:`napari_mran.cohort.predict_cohort`).
    k_list : bag limits of the faithfulness experiment (ints and/or ``"all"``).
    m_list : patch limits (ints in [1, 64]); an ``"all"`` column (the model's own
        thresholded patch attention) is always added.
    results_dir : a ``napari-mran predict`` output folder: a slide's store there is
        reused when it is verified complete and made by the same model file (sha256),
        analysis options and slide file; otherwise the slide is analysed.

    Returns
    -------
    ``{"out_dir", "files", "n_slides", "n_evaluated", "failed", "sources", "metrics",
    "case_metrics", "faithfulness", "model_sha256", "model_is_demo", "elapsed_s"}``.  A
    slide that fails is recorded (error class + message) and left out of the metrics.
    """
    t0 = time.perf_counter()
    ev = _start(model, slides_dir, labels_csv, out_dir, fold_options(options, legacy_kwargs),
                k_list, m_list, results_dir)
    lock = OutputLock(ev.out, "napari-mran evaluate").acquire()
    try:
        _refuse_existing(ev.files, overwrite)
        total = len(ev.rows)
        yield EvaluationEvent(Stage.PLAN, total=total,
                              message=f"{total} labelled slides; k = {ev.ks}, m = {ev.ms}")
        records: list[SlideRecord] = []
        for i, row in enumerate(ev.rows):
            rec, note = _evaluate_slide(ev, i, row)
            records.append(rec)
            yield EvaluationEvent(Stage.SLIDE, i, row["slide"], rec.status, done=i + 1,
                                  total=total, failed=sum(r.failed for r in records),
                                  message=rec.progress(note, name=row["slide"]))
        scores = _scores(ev, records)
        n_ok, n_failed = len(scores["labels"]), total - len(scores["labels"])
        yield EvaluationEvent(Stage.METRICS, done=total, total=total, failed=n_failed,
                              message=f"accuracy {cell(scores['slide_metrics']['accuracy'])}, "
                                      f"AUC {cell(scores['slide_metrics']['auc'])} on {n_ok} "
                                      "slides")
        write_report(ev.files, ev.meta, records, scores, overwrite=overwrite,
                     model_column=model_label(ev.meta["model"]["path"], ev.meta["model"]["demo"]))
        report = _report(ev, records, scores, t0)
        yield EvaluationEvent(Stage.DONE, done=total, total=total, failed=n_failed,
                              message=f"{n_ok} of {total} slides evaluated; outputs in {ev.out}")
        return report
    finally:
        lock.release()


def run_evaluation(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Drain :func:`evaluate` and return its report."""
    from .._events import drain

    return drain(evaluate(*args, **kwargs))


# --------------------------------------------------------------------------- steps


def _start(model: Any, slides_dir: str | os.PathLike, labels_csv: str | os.PathLike,
           out_dir: str | os.PathLike, options: AnalysisOptions, k_list: Iterable[Any],
           m_list: Iterable[Any], results_dir: str | os.PathLike | None) -> _Evaluation:
    """Check the input and load the model (fails before the output folder is made)."""
    from ..faithfulness import ALL, parse_k, parse_m

    mran = _model(model)
    n_patches = mran.config.n_patches
    ks = _limits(k_list, parse_k, "k")
    ms = _limits(m_list, lambda v: parse_m(v, n_patches), "m")
    if ALL not in ms:
        ms.append(ALL)
    if not ks:
        raise LabelsError("--k: give at least one bag limit")
    rows = read_labels_table(labels_csv, slides_dir, class_names(mran))
    out = prepare_out_dir(out_dir)
    rdir = _results_dir(results_dir, out)
    is_demo = bool(getattr(mran, "is_demo", False))
    meta = {
        "format": METRICS_FORMAT, "version": 1,
        "model": {"path": getattr(mran, "checkpoint_path", None),
                  "sha256": getattr(mran, "checkpoint_sha256", None), "demo": is_demo,
                  **({"note": DEMO_MODEL_LABEL} if is_demo else {}),
                  "config": mran.config.to_dict()},
        "slides_dir": os.path.abspath(slides_dir),
        "labels_csv": os.path.abspath(labels_csv),
        "results_dir": None if rdir is None else os.path.abspath(rdir),
        "options": options.key(),
        "class_names": class_names(mran),
    }
    return _Evaluation(mran, options, ks, ms, rows, out, rdir, meta)


def _model(model: Any) -> MRAN:
    """An MRAN as given, or loaded from a checkpoint path (or ``"demo"``)."""
    from ..model import MRAN

    if isinstance(model, (str, os.PathLike)):
        return load_checkpoint(model)
    if isinstance(model, MRAN):
        return model
    raise TypeError(f"model must be an MRAN or a checkpoint path, not {type(model).__name__}")


def _limits(values: Iterable[Any], parse: Callable[[Any], Any], name: str) -> list[Any]:
    """The k (or m) limits, parsed, ``"all"`` for no limit, duplicates dropped."""
    from ..faithfulness import ALL

    out = []
    for v in values:
        try:
            p = parse(v)
        except ValueError as exc:
            raise LabelsError(f"--{name}: {exc}") from None
        out.append(ALL if p is None else p)
    return list(dict.fromkeys(out))


def _results_dir(results_dir: str | os.PathLike | None, out: Path) -> Path | None:
    if results_dir is None:
        return None
    rdir = Path(results_dir).expanduser()
    if not rdir.is_dir():
        raise ResultsError(f"{rdir}: results folder not found (or not a folder)")
    if rdir.resolve() == out:
        raise OutputExistsError(f"{out}: the output folder must differ from the results "
                                "folder (both would hold a predictions.csv)")
    return rdir


def _refuse_existing(files: dict[str, Path], overwrite: bool) -> None:
    existing = [str(p) for p in files.values() if os.path.lexists(p)]
    if existing and not overwrite:
        raise OutputExistsError("refusing to overwrite earlier evaluation outputs (pass "
                                "overwrite to replace them): " + ", ".join(existing))
    for p in files.values():
        if p.is_dir() and not p.is_symlink():
            raise OutputExistsError(f"{p}: is a folder; refusing to replace it with a file")


def _evaluate_slide(ev: _Evaluation, index: int, row: dict[str, Any]
                    ) -> tuple[SlideRecord, str]:
    """The record of one labelled slide (its store reused or the slide analysed, then
    the top-k / top-m sweep) and a note on why a store was not reused."""
    t0 = time.perf_counter()
    rec = SlideRecord(index, row["slide"], label=row["label"], case=row["case"])
    note = ""
    try:
        result, note = _stored_result(ev, row["path"], rec)
        from ..slide import open_slide

        with open_slide(row["path"], mpp=ev.options.mpp) as slide:
            result = _predict(ev, slide, result, rec, row["path"])
            rec.sweep = _sweep(ev, slide, result)
        rec.take_result(result)
    except MRANError as exc:
        rec.fail(type(exc).__name__, str(exc))
    except MemoryError:
        rec.fail("MemoryError", "out of memory")
    rec.seconds = round(time.perf_counter() - t0, 3)
    if note and not rec.failed:
        rec.message = note
    return rec, note


def _stored_result(ev: _Evaluation, path: str, rec: SlideRecord
                   ) -> tuple[SlideResult | None, str]:
    """The slide's store in the results folder when it may be reused (status
    ``reused``), else ``(None, why not)``."""
    if ev.results_dir is None:
        return None, ""
    store = find_store(ev.results_dir, path)
    if store is None:
        return None, "no store in the results folder"
    st, why = store_status(store, model_sha256=ev.meta["model"]["sha256"],
                           options=ev.meta["options"], slide=path)
    if st != "valid":
        return None, f"store not reused: {why or st}"
    from ..results import SlideResult

    result = SlideResult.load(store, verify_checksums=False)
    rec.status, rec.store = SlideStatus.REUSED, str(store)
    return result, ""


def _predict(ev: _Evaluation, slide: Slide, result: SlideResult | None, rec: SlideRecord,
             path: str) -> SlideResult:
    """*result*, or the slide analysed now (status ``analysed``); finite probabilities."""
    if result is None:
        from ..analysis import predict_slide

        result = predict_slide(slide, ev.model, **ev.options.engine_kwargs())
        rec.status = SlideStatus.ANALYSED
    if not np.all(np.isfinite(result.slide_probs)):
        raise AnalysisError(f"{path}: the model gave non-finite slide "
                            f"probabilities {result.slide_probs.tolist()}")
    return result


def _sweep(ev: _Evaluation, slide: Slide, result: SlideResult) -> list[dict[str, Any]]:
    """The predictions from the top-k bags and top-m patches (faithfulness)."""
    from ..faithfulness import restriction_sweep

    o = ev.options
    sweep = restriction_sweep(slide, ev.model, result, ev.ks, ev.ms, device=o.device,
                              num_workers=o.num_workers,
                              batch_size=4 if o.batch_size == "auto" else o.batch_size)
    return [{"k": c["k"], "m": c["m"], "bags_used": c["bags_used"],
             "slide_probs": [float(p) for p in c["slide_probs"]]} for c in sweep]


def _scores(ev: _Evaluation, records: list[SlideRecord]) -> dict[str, Any]:
    """Slide and case metrics and the faithfulness table of the evaluated slides."""
    from ..metrics import classification_metrics

    ok = [r for r in records if not r.failed]
    names = ev.class_names
    labels = np.array([r.label for r in ok], np.int64)
    probs = np.array([r.probs for r in ok], np.float64).reshape(len(ok), len(names))
    return {"slide_metrics": classification_metrics(labels, probs, names),
            "case_metrics": case_metrics(ok, names),
            "faithfulness": faithfulness_table(ok, ev.ks, ev.ms, names),
            "labels": labels, "probs": probs}


def _report(ev: _Evaluation, records: list[SlideRecord], scores: dict[str, Any],
            t0: float) -> dict[str, Any]:
    return {
        "out_dir": str(ev.out),
        "files": {k: str(v) for k, v in ev.files.items()},
        "n_slides": len(records),
        "n_evaluated": len(scores["labels"]),
        "failed": [r.failure() for r in records if r.failed],
        "sources": sources(records),
        "metrics": scores["slide_metrics"],
        "case_metrics": scores["case_metrics"],
        "faithfulness": scores["faithfulness"],
        "model_sha256": ev.meta["model"]["sha256"],
        "model_is_demo": ev.meta["model"]["demo"],
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
