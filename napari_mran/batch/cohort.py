"""Predict many slides: one results store per slide, a predictions table, on
dask.distributed (:func:`predict_cohort`; public as :mod:`napari_mran.cohort`, whose
docstring gives the output folder and the rules)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MRANError, OutputExistsError, ResultsError
from ..inference.options import AnalysisOptions
from ..results.store import reviews_reason
from .common import fold_options, os_reason
from .executors import default_workers, run_distributed, run_in_process
from .lock import OutputLock, prepare_out_dir
from .manifest import MANIFEST_NAME, read_manifest, write_manifest
from .models import class_names, load_checkpoint, remember_model
from .outputs import model_label, predicted, write_csv
from .records import BatchEvent, SlideRecord, SlideStatus, Stage
from .slides import expand_slides, store_names
from .stores import set_aside, store_status
from .worker import TaskSpec

if TYPE_CHECKING:
    from ..model import MRAN
    from ..roi import Region

__all__ = ["PREDICTIONS_NAME", "CohortEvent", "analysis_options", "predict_cohort",
           "run_cohort"]

PREDICTIONS_NAME = "predictions.csv"


@dataclass
class CohortEvent(BatchEvent):
    """One progress event of :func:`predict_cohort` (stage ``plan``: after the checks;
    ``slide``: one finished, ``status`` skipped / done / failed; ``done``)."""

    skipped: int = 0
    record: SlideRecord | None = None


def analysis_options(**options: Any) -> dict[str, Any]:
    """The result-affecting analysis options in a canonical, JSON-comparable form
    (:meth:`AnalysisOptions.key`; kept for callers of the former function)."""
    from ..inference.options import KEY_FIELDS

    unknown = sorted(set(options) - set(KEY_FIELDS))
    if unknown:
        raise TypeError(f"not result-affecting analysis options: {unknown}")
    return AnalysisOptions.from_mapping(options).key()


@dataclass
class _Run:
    """One cohort run: its input, the model and what it found in the output folder."""

    out: Path
    slides: list[str]
    names: list[str]
    model: MRAN
    options: AnalysisOptions
    statuses: list[tuple[str, str]] = field(default_factory=list)  # (store_status, why)
    kept: list[SlideRecord] = field(default_factory=list)  # verified stores skipped
    specs: list[TaskSpec] = field(default_factory=list)  # slides to analyse
    records: dict[int, SlideRecord] = field(default_factory=dict)  # finished, by index
    set_aside: list[dict[str, str]] = field(default_factory=list)
    cluster: str | None = None
    regions: dict[str, Region] = field(default_factory=dict)  # by absolute slide path

    def slide_options(self, slide: str) -> AnalysisOptions:
        """The options of one slide: the run's, with the slide's region if it has one."""
        region = self.regions.get(slide)
        return self.options if region is None else self.options.replace(roi=region)

    @property
    def model_path(self) -> str:
        return self.model.checkpoint_path

    @property
    def model_sha(self) -> str:
        return self.model.checkpoint_sha256

    @property
    def key(self) -> dict[str, Any]:
        return self.options.key()

    def counts(self) -> Counter[str]:
        return Counter(r.status for r in self.records.values())

    def event(self, rec: SlideRecord) -> CohortEvent:
        counts = self.counts()
        return CohortEvent(Stage.SLIDE, rec.index, rec.slide, rec.status,
                           done=len(self.records), total=len(self.slides),
                           failed=counts[SlideStatus.FAILED],
                           skipped=counts[SlideStatus.SKIPPED], message=rec.progress(),
                           record=rec)


def predict_cohort(
    slides: Iterable[str | os.PathLike],
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: AnalysisOptions | None = None,
    *,
    workers: int | None = None,
    scheduler: Any = None,
    resources: dict[str, float] | None = None,
    save_embeddings: bool = True,
    overwrite: bool = False,
    regions: dict[str, Region] | None = None,
    **legacy_kwargs: Any,
) -> Generator[CohortEvent, None, dict[str, Any]]:
    """Predict every slide into ``<out_dir>``; a generator of events returning a summary.

    Parameters
    ----------
    slides : slide files (or folders: their slide files, not recursive).
    model : the checkpoint (``.safetensors`` or reference ``.pth``), or ``"demo"``
        (the bundled synthetic demo model: recorded as such in every output); each
        worker loads it once (cached per process) and checks its sha256.
    out_dir : the output folder (created if missing).
    options : how to analyse each slide (:class:`~napari_mran.inference.AnalysisOptions`;
        default: the defaults).  Its :meth:`~AnalysisOptions.key` decides whether a
        stored result is reused.  Keyword arguments named like its fields
        (``device=``, ``batch_size=``, ``edge=``, ...) are folded into it.
    workers : processes of a local dask cluster (``threads_per_worker=1``: one slide at
        a time per worker, so one GPU task per worker).  0 or 1 runs in this process
        without dask.  None: one per GPU, else ``cpu_count // 4`` (at most 4).
    scheduler : ``"tcp://host:port"`` of a running dask scheduler (or a
        ``distributed.Client``); its workers must see the same paths and should run
        ``--nthreads 1``.  Overrides *workers*.
    resources : dask resources each task needs, e.g. ``{"GPU": 1}`` (workers started
        with ``--resources GPU=1``).
    save_embeddings : keep the (N, E) bag embeddings in each store (small; lets
        ``evaluate`` re-run the slide-level branch without re-reading).
    overwrite : replace valid stores made by another model/options/slide file and a
        foreign ``predictions.csv``.  Foreign folders at store names are never replaced.
    regions : {slide path: :class:`~napari_mran.roi.Region`}: analyse only the bags of
        that slide inside its region (:func:`~napari_mran.batch.regions.regions_from_dir`);
        a slide's region is part of its options key.  Slides not named: whole.

    Yields :class:`CohortEvent`; returns ``{"out_dir", "predictions_csv", "manifest",
    "model_sha256", "model_is_demo", "n_slides", "done", "skipped", "failed",
    "set_aside", "records", "cluster", "elapsed_s"}`` (``failed`` lists ``{"slide",
    "error", "message"}``; ``records`` one :class:`SlideRecord` per slide, in order).

    Raises (before any slide is analysed) CohortError, CheckpointError, ResultsError,
    OutputExistsError for bad input, a busy or unusable output folder; AnalysisError for
    a bad option value.
    """
    t0 = time.perf_counter()
    opts = fold_options(options, legacy_kwargs)
    run = _start(slides, model, out_dir, opts, workers)
    run.regions = {os.path.abspath(k): v for k, v in (regions or {}).items()}
    lock = OutputLock(run.out, "napari-mran predict").acquire()
    try:
        run.statuses = [store_status(run.out / n, model_sha256=run.model_sha,
                                     options=run.slide_options(s).key(), slide=s)
                        for s, n in zip(run.slides, run.names)]
        _refuse_clashes(run, overwrite)
        _plan(run, save_embeddings=save_embeddings)
        write_manifest(run.out, run.model_path, run.model_sha, run.key, run.slides, run.names,
                       None)
        yield from _skipped_events(run)
        run.cluster = None if scheduler is not None else "in-process"
        if run.specs:
            yield from _analyse(run, workers, scheduler, resources)
        summary = _finish(run, t0)
        yield CohortEvent(Stage.DONE, total=len(run.slides), done=len(run.slides),
                          failed=len(summary["failed"]), skipped=summary["skipped"],
                          message=f"{summary['done']} analysed, {summary['skipped']} skipped, "
                                  f"{len(summary['failed'])} failed")
        return summary
    finally:
        lock.release()


def run_cohort(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Drain :func:`predict_cohort` and return its summary."""
    from .._events import drain

    return drain(predict_cohort(*args, **kwargs))


# --------------------------------------------------------------------------- steps


def _start(slides: Iterable[str | os.PathLike], model: str | os.PathLike,
           out_dir: str | os.PathLike, options: AnalysisOptions, workers: int | None) -> _Run:
    """Check the input and load the model (fails before the output folder is made)."""
    slide_list = expand_slides(slides)
    if workers is not None and (isinstance(workers, bool) or int(workers) < 0):
        raise ValueError(f"workers must be >= 0, not {workers!r}")
    loaded = load_checkpoint(model)  # fail early on a bad checkpoint
    out = prepare_out_dir(out_dir)
    return _Run(out, slide_list, store_names(slide_list), loaded, options)


def _refuse_clashes(run: _Run, overwrite: bool) -> None:
    """OutputExistsError listing whatever is in the way, before any work: files that
    are not ours, and (without *overwrite*) valid stores made differently."""
    out = run.out
    manifest = read_manifest(out)
    problems: list[str] = []
    if manifest == {}:
        problems.append(f"{out / MANIFEST_NAME}: exists and is not a napari-mran "
                        "cohort manifest")
    pred_path = out / PREDICTIONS_NAME
    if os.path.lexists(pred_path):
        if pred_path.is_dir() or pred_path.is_symlink():
            problems.append(f"{pred_path}: exists and is not a file we wrote")
        elif manifest is None and not overwrite:
            problems.append(f"{pred_path}: exists and was not written by napari-mran predict "
                            "(pass overwrite to replace it)")
    for n, (st, why) in zip(run.names, run.statuses):
        if st == "foreign":
            problems.append(f"{out / n}: {why}; it is never replaced (move it away)")
        elif st == "different" and not overwrite:
            problems.append(f"{out / n}: {why} (pass overwrite to replace it)")
        elif st == "different" and (marks := reviews_reason(out / n)):
            problems.append(f"{out / n}: {marks}")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise OutputExistsError("refusing to write into the output folder:\n  "
                                + "\n  ".join(problems[:8]) + more)


def _plan(run: _Run, *, save_embeddings: bool) -> None:
    """Records of the verified stores kept, tasks for the others; invalid stores of
    ours moved aside."""
    for i, (s, n, (st, why)) in enumerate(zip(run.slides, run.names, run.statuses)):
        store = run.out / n
        if st == "valid":
            run.kept.append(_record_from_store(i, s, n, store))
            continue
        if st == "invalid":
            try:
                moved = set_aside(store)
            except OSError as exc:
                raise ResultsError(f"{store}: cannot move the invalid store aside: "
                                   f"{os_reason(exc)}") from None
            run.set_aside.append({"store": n, "moved_to": moved.name, "reason": why})
        opts = run.slide_options(s)
        run.specs.append(TaskSpec(
            index=i, slide=s, store=n, store_path=str(store), model_path=run.model_path,
            model_sha256=run.model_sha, options=opts,
            save_embeddings=bool(save_embeddings), replace=st == "different",
            cohort_block={"model_sha256": run.model_sha, "options": opts.key(), "store": n,
                          "slide_name": os.path.basename(s)}))


def _record_from_store(index: int, slide: str, name: str, store: Path) -> SlideRecord:
    from ..results import SlideResult

    rec = SlideRecord(index, slide, name, SlideStatus.SKIPPED, seconds=0.0,
                      message="verified store from an earlier run")
    try:
        rec.take_result(SlideResult.load(store, verify_checksums=False))
    except MRANError as exc:  # changed between the check and now
        rec.fail(type(exc).__name__, str(exc))
    return rec


def _skipped_events(run: _Run) -> Generator[CohortEvent, None, None]:
    """The plan event, then one event per slide whose store was kept."""
    total = len(run.slides)
    yield CohortEvent(Stage.PLAN, total=total,
                      message=f"{total} slides: {len(run.kept)} verified stores skipped, "
                              f"{len(run.specs)} to analyse"
                              + (f", {len(run.set_aside)} invalid stores moved aside"
                                 if run.set_aside else ""))
    for rec in run.kept:
        run.records[rec.index] = rec
        yield run.event(rec)


def _analyse(run: _Run, workers: int | None, scheduler: Any,
             resources: dict[str, float] | None) -> Generator[CohortEvent, None, None]:
    """Run the tasks (in this process, or on dask when it pays off: a scheduler, or two
    workers and two slides to share); one event per finished slide."""
    n_workers = default_workers(run.options.device) if workers is None else int(workers)
    info: dict[str, Any] = {"cluster": run.cluster}
    if scheduler is not None or min(n_workers, len(run.specs)) > 1:
        n_local = min(n_workers, len(run.specs))
        specs = run.specs if scheduler is not None else _share_cpus(run.specs, n_local)
        runner = run_distributed(specs, workers=n_local, scheduler=scheduler,
                                 resources=resources, info=info)
    else:
        remember_model(run.model)
        runner = run_in_process(run.specs)
    try:
        for rec in runner:
            run.records[rec.index] = rec
            yield run.event(rec)
    finally:
        runner.close()  # cancels pending futures and closes the cluster
        run.cluster = info["cluster"]


def _share_cpus(specs: list[TaskSpec], n_local: int) -> list[TaskSpec]:
    """Local workers share the CPUs: torch threads and decode threads per worker."""
    per = max(1, (os.cpu_count() or 1) // n_local)
    return [dataclasses.replace(spec, torch_threads=per,
                                options=spec.options if spec.options.num_workers is not None
                                else spec.options.replace(num_workers=min(8, per)))
            for spec in specs]


def _finish(run: _Run, t0: float) -> dict[str, Any]:
    """Write predictions.csv and the manifest; the summary."""
    out, total = run.out, len(run.slides)
    ordered = [run.records[i] for i in range(total)]
    _write_predictions(out / PREDICTIONS_NAME, ordered, class_names(run.model),
                       model_label(run.model_path, run.model.is_demo))
    counts = Counter(r.status for r in ordered)
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "predictions_csv": str(out / PREDICTIONS_NAME),
        "manifest": str(out / MANIFEST_NAME),
        "model_sha256": run.model_sha,
        "model_is_demo": run.model.is_demo,
        "n_slides": total,
        "done": counts[SlideStatus.DONE],
        "skipped": counts[SlideStatus.SKIPPED],
        "failed": [r.failure() for r in ordered if r.failed],
        "set_aside": run.set_aside,
        "records": ordered,
        "cluster": run.cluster,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    write_manifest(out, run.model_path, run.model_sha, run.key, run.slides, run.names,
                   {k: summary[k] for k in ("n_slides", "done", "skipped", "failed",
                                            "set_aside", "cluster", "elapsed_s")})
    return summary


def _write_predictions(path: Path, records: list[SlideRecord], class_names: list[str],
                       label: str) -> None:
    header = ["slide", "store", "status", *[f"prob_{c}" for c in class_names], "predicted",
              "n_bags", "failed_bags", "degraded", "seconds", "error", "message", "model"]
    rows = []
    for r in records:
        best = predicted(r.probs)
        rows.append([r.slide, r.store, r.status,
                     *(r.probs if r.probs else [None] * len(class_names)),
                     "" if best is None else class_names[best], r.n_bags, r.failed_bags,
                     r.degraded, r.seconds, r.error or "", r.message or "", label])
    write_csv(path, header, rows, overwrite=True)
