"""Where the slides of a cohort run are analysed: in this process, on a local dask
cluster or on a running dask scheduler.  Each executor is a generator of finished
:class:`SlideRecord`; closing it cancels what is pending and closes what it started."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import uuid
from collections.abc import Generator, Sequence
from typing import Any

from .common import CohortError
from .records import SlideRecord
from .worker import TaskSpec, predict_task

__all__ = ["default_workers", "run_distributed", "run_in_process"]

#: the module a local cluster's workers preload (its ``dask_setup`` ignores Ctrl-C)
WORKER_PRELOAD = "napari_mran.batch.worker"


def default_workers(device: str) -> int:
    """One worker per GPU, else ``cpu_count // 4`` (1 to 4)."""
    if device in ("auto", "cuda", "gpu"):
        try:
            import torch

            if torch.cuda.is_available():
                return max(1, torch.cuda.device_count())
        except Exception:  # noqa: BLE001
            pass
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def run_in_process(specs: Sequence[TaskSpec]) -> Generator[SlideRecord, None, None]:
    for spec in specs:
        yield predict_task(spec)


def _client(workers: int, scheduler: Any, info: dict[str, Any]) -> tuple[Any, Any, bool]:
    """``(client, local cluster or None, whether the client is ours to close)``;
    ``info["cluster"]`` says which."""
    from distributed import Client, LocalCluster

    if scheduler is None:
        try:
            # preload: workers ignore Ctrl-C (the terminal sends it to the whole process
            # group); the client cancels the work and closes the cluster instead
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR,
                                   preload=[WORKER_PRELOAD])
        except Exception as exc:  # noqa: BLE001 - many causes, one message
            cause = exc.__cause__ or exc
            raise CohortError(
                f"cannot start a local dask cluster of {workers} worker processes "
                f"({type(cause).__name__}: {cause}); a script that calls predict_cohort "
                "must guard its top level with `if __name__ == '__main__':` (workers "
                "are spawned), or use workers=1 to run in this process") from None
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close(timeout=10)
            raise
        info["cluster"] = f"LocalCluster({workers} processes x 1 thread)"
        return client, cluster, True
    if isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise CohortError(f"cannot connect to the dask scheduler {scheduler}: "
                              f"{type(exc).__name__}: {exc}") from None
        info["cluster"] = f"scheduler {scheduler}"
        return client, None, True
    info["cluster"] = f"client {getattr(scheduler, 'scheduler', scheduler)}"
    return scheduler, None, False  # an existing distributed.Client


class _DeferredInterrupt:
    """While a dask run lasts: Ctrl-C (SIGINT) only sets a flag, which :meth:`check`
    turns into KeyboardInterrupt between two calls into distributed -- never inside one
    (distributed's ``sync`` cannot take it there: its cancel callback fails with a
    NameError and a traceback).  A second Ctrl-C interrupts at once.  Only in the main
    thread (elsewhere signals are not ours to handle)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()

    def check(self) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def run_distributed(specs: Sequence[TaskSpec], *, workers: int, scheduler: Any,
                    resources: dict[str, float] | None, info: dict[str, Any]
                    ) -> Generator[SlideRecord, None, None]:
    """Submit every slide, yield the records as they finish (a lost task, a killed
    worker: a failed record).  Ctrl-C meanwhile: KeyboardInterrupt at the next check
    (at most 0.1 s later), after which what is pending is cancelled and what was
    started is closed."""
    with _DeferredInterrupt() as interrupt:
        client, cluster, own_client = _client(workers, scheduler, info)
        finished: queue.Queue[Any] = queue.Queue()
        futures: dict[Any, TaskSpec] = {}
        try:
            token = uuid.uuid4().hex[:8]
            for spec in specs:
                fut = client.submit(predict_task, spec, key=f"napari-mran-{token}-{spec.index}",
                                    pure=False, resources=resources, retries=0)
                futures[fut] = spec
                fut.add_done_callback(finished.put)
            while futures:
                interrupt.check()
                try:
                    fut = finished.get(timeout=0.1)
                except queue.Empty:
                    continue
                yield _record(fut, futures.pop(fut))
        finally:
            _close(client, cluster, own_client, list(futures))


def _record(fut: Any, spec: TaskSpec) -> SlideRecord:
    """The record a finished future holds; a failed one when the task was lost."""
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, comm errors
        rec = SlideRecord(spec.index, spec.slide, spec.store)
        rec.fail(type(exc).__name__, (str(exc) or repr(exc))
                 + " (the worker died or the task was lost: memory limit, crash?)")
        return rec


def _close(client: Any, cluster: Any, own_client: bool, pending: list[Any]) -> None:
    """Cancel what is pending, close the client (if ours) and the local cluster."""
    if pending:
        with contextlib.suppress(Exception):
            client.cancel(pending, force=True)
    if own_client:
        with contextlib.suppress(Exception):
            client.close(timeout=10)
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close(timeout=10)
