"""One slide of a cohort run: analyse it and save its store, in a dask worker process or
in this process (:func:`predict_task`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..errors import MRANError
from ..inference.options import AnalysisOptions
from .common import json_normal
from .models import cached_model
from .records import SlideRecord, SlideStatus
from .stores import COHORT_KEY

__all__ = ["TaskSpec", "dask_setup", "predict_task"]


@dataclass
class TaskSpec:
    """Everything a worker needs for one slide (pickled to dask workers)."""

    index: int
    slide: str
    store: str                     # the store's name in the output folder
    store_path: str
    model_path: str
    model_sha256: str
    options: AnalysisOptions
    save_embeddings: bool = True
    replace: bool = False          # overwrite a valid store made differently
    cohort_block: dict[str, Any] = field(default_factory=dict)  # provenance["cohort"]
    torch_threads: int | None = None


def dask_setup(worker: Any = None) -> None:
    """Worker preload hook (``LocalCluster(preload=["napari_mran.batch.worker"])``):
    ignore SIGINT, and no traceback when the cluster is closed under a busy worker.

    A Ctrl-C in a terminal reaches every process of the foreground group, local dask
    workers included; they would die with tracebacks in the middle of a write.  The
    client handles the interrupt (cancels pending tasks, closes the cluster)."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker").addFilter(_closed_scheduler_heartbeat)


def _closed_scheduler_heartbeat(record: logging.LogRecord) -> bool:
    """False for the error a local worker logs (with a traceback) when its heartbeat
    finds the connection closed because the cluster is being closed -- the scheduler
    removed the worker while a slide still ran in it (distributed's own code calls this
    a common race of ``remove_worker``).  The client has stopped the run; nothing is
    lost.  Everything else passes."""
    from distributed.comm.core import CommClosedError

    exc = record.exc_info[1] if record.exc_info else None
    return not (record.getMessage().startswith("Failed to communicate with scheduler "
                                                "during heartbeat")
                and isinstance(exc, CommClosedError))


def worker_device(device: str) -> str:
    """On a worker of a multi-GPU machine, spread workers over the GPUs by worker name."""
    if device not in ("auto", "cuda", "gpu"):
        return device
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no CUDA runtime: let the analysis decide
        return device
    if count <= 1:
        return device
    try:
        from distributed import get_worker

        index = int(get_worker().name)
    except Exception:  # noqa: BLE001 - not on a worker, or a non-integer worker name
        return device
    return f"cuda:{index % count}"


def predict_task(spec: TaskSpec) -> SlideRecord:
    """Analyse one slide and save its store (runs in a worker process, or in-process).

    Never raises for a slide-level failure: returns a record with status ``done`` or
    ``failed`` (error class + message).  Exceptions of our package are not always
    picklable, so they never cross the process boundary.
    """
    t0 = time.perf_counter()
    rec = SlideRecord(spec.index, spec.slide, spec.store, host=socket.gethostname(),
                      pid=os.getpid())
    try:
        _analyse_and_save(spec, rec)
    except MRANError as exc:
        rec.fail(type(exc).__name__, str(exc))
    except MemoryError:
        rec.fail("MemoryError", "out of memory while analysing the slide")
    except Exception as exc:  # noqa: BLE001 - one slide's bug must not stop the cohort
        rec.fail(type(exc).__name__, str(exc) or repr(exc))
        rec.traceback = traceback.format_exc(limit=20)
    rec.seconds = round(time.perf_counter() - t0, 3)
    return rec


def _analyse_and_save(spec: TaskSpec, rec: SlideRecord) -> None:
    if spec.torch_threads:
        import torch

        if torch.get_num_threads() != spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
    model = cached_model(spec.model_path, spec.model_sha256)
    from ..analysis import predict_slide
    from ..slide import open_slide

    opts = spec.options.replace(device=worker_device(spec.options.device))
    with open_slide(spec.slide, mpp=opts.mpp) as slide:
        result = predict_slide(slide, model, **opts.engine_kwargs())
    if not spec.save_embeddings:
        result.embeddings = None
    provenance = dict(result.provenance)
    provenance[COHORT_KEY] = spec.cohort_block
    result.provenance = json_normal(provenance)
    result.save(spec.store_path, overwrite=spec.replace)
    rec.status = SlideStatus.DONE
    rec.take_result(result)
