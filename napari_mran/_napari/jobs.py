"""What the widget runs in worker threads (no Qt): the analysis, model loading, the
exports, the faithfulness check and the environment probe.

Each is a plain function (the analysis a generator of progress events); the widget
hands them to napari's ``create_worker`` and only the main thread touches layers.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MRANError
from ..inference import AnalysisOptions
from .storage import save_result_unique

#: at most this many decode threads when the widget leaves a core to the viewer
MAX_DECODE_THREADS = 8


@dataclass
class Saving:
    """Yielded by :func:`analysis_job` before it writes the results store."""

    path: str


@dataclass
class Outcome:
    """Returned by :func:`analysis_job`."""

    cancelled: bool = False
    result: Any = None
    saved: str | None = None
    save_error: str | None = None


def _leave_one_core(options: AnalysisOptions) -> tuple[AnalysisOptions, int]:
    """Torch on one CPU core less than there are (at least one); the decode threads
    too unless the options set them.  Returns the options and the thread count to
    restore afterwards."""
    import torch

    cores = os.cpu_count() or 1
    restore = torch.get_num_threads()
    torch.set_num_threads(max(1, min(restore, cores - 1)))
    if options.num_workers is None:
        options = options.replace(num_workers=max(1, min(MAX_DECODE_THREADS, cores - 1)))
    return options, restore


def analysis_job(slide, model, options: AnalysisOptions, cancel: threading.Event,
                 save_folder: Path | None, leave_one_core: bool = False):
    """Worker-thread generator: analyze_slide's events, then save; returns an Outcome.

    Checks *cancel* after every event, so a cancel takes effect within one batch; the
    analysis generator is always closed here, in the worker thread.  With
    *leave_one_core*, torch and the decode threads use one CPU core less than there are
    (at least one), so the viewer stays responsive on small machines.  The store is
    named after the slide (:func:`.storage.save_result_unique`).
    """
    from ..analysis import analyze_slide

    if cancel.is_set():
        return Outcome(cancelled=True)
    restore = None
    if leave_one_core:
        options, restore = _leave_one_core(options)
    gen = analyze_slide(slide, model, **options.engine_kwargs())
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if cancel.is_set():
                return Outcome(cancelled=True)
            yield event
    finally:
        gen.close()
        if restore is not None:
            import torch

            torch.set_num_threads(restore)
    if cancel.is_set():
        return Outcome(cancelled=True)
    outcome = Outcome(result=result)
    if save_folder is not None:
        yield Saving(str(save_folder))
        try:
            outcome.saved = str(save_result_unique(result, Path(save_folder), slide.path))
        except (MRANError, OSError) as exc:
            outcome.save_error = str(exc)
    return outcome


def load_model_job(spec: str):
    """Worker thread: ``load_model`` ("demo" or a checkpoint path)."""
    from ..model import load_model

    return load_model(spec)


def export_job(result, jobs: list[tuple[str, str, dict, bool]]) -> list[str]:
    """Worker thread: run the exporters; ``jobs`` = (kind, path, options, overwrite)."""
    from ..export.plan import ExportJob, write_export

    return [os.fspath(write_export(result, ExportJob(kind, Path(path), opts),
                                   overwrite=overwrite))
            for kind, path, opts, overwrite in jobs]


def faithfulness_job(check, slide, model, result, k: int, m: int, device: str):
    """Worker thread: *check* (``restricted_prediction`` of :func:`find_faithfulness`)
    re-predicts *result*'s slide from its top *k* bags and their top *m* patches."""
    return check(slide, model, result, k, m, device=device)


# ----------------------------------------------------------------- environment

def probe_devices() -> dict[str, Any]:
    """``{"cuda": GPU name or None, "mps": bool}``: what ``device="auto"`` would use
    (:func:`napari_mran.analysis.pick_device`).  A machine has CUDA or MPS, never both,
    so the automatic choice says which of the two the device menu can offer."""
    from ..analysis import pick_device

    best = pick_device("auto")
    if best.type == "cuda":
        import torch

        return {"cuda": torch.cuda.get_device_name(best), "mps": False}
    return {"cuda": None, "mps": best.type == "mps"}


def probe_environment() -> dict:
    """Worker thread: devices torch can see, the demo model, the faithfulness check."""
    info: dict[str, Any] = {"cuda": None, "mps": False, "demo": None, "demo_path": None,
                            "faithfulness": None, "faithfulness_why": ""}
    try:
        info.update(probe_devices())
    except Exception as exc:  # noqa: BLE001
        info["torch_error"] = str(exc)
    try:
        from ..model import DEMO_MODEL_PATH

        info["demo_path"] = str(DEMO_MODEL_PATH)
        info["demo"] = DEMO_MODEL_PATH.is_file()
    except Exception as exc:  # noqa: BLE001
        info["demo"] = False
        info["demo_path"] = f"({exc})"
    info["faithfulness"], info["faithfulness_why"] = find_faithfulness()
    return info


def find_faithfulness():
    """``(restricted_prediction, "")``, or ``(None, why not)``."""
    try:
        mod = importlib.import_module("napari_mran.faithfulness")
    except ImportError:
        return None, "napari_mran.faithfulness is not available in this installation"
    fn = getattr(mod, "restricted_prediction", None)
    if not callable(fn):
        return None, "napari_mran.faithfulness has no restricted_prediction()"
    return fn, ""
