"""The run folder: the checks before a run starts or resumes, its checkpoint (written and
read back), atomic writes, and the verification of a finished run."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, MRANError, OutputExistsError
from .config import CHECKPOINT, MODEL, TEST_METRICS, TrainConfig
from .state import RunState

#: what a run folder holds before its first checkpoint: a run killed then can start over
_BEFORE_FIRST_CHECKPOINT = {"train_config.json", "splits.csv", "bags", MODEL, "metrics.jsonl",
                            "metrics.png", "metrics.tmp.png"}
#: what a run's checkpoint.pt holds (checked before resuming)
_CHECKPOINT_KEYS = ("model", "opt_up", "opt_down", "sched_up", "sched_down", "bag_weights",
                    "history", "best", "epoch", "torch_rng")


def _same_options(saved: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a run's saved ``train_config.json`` has the options ``cfg`` has; options added
    to TrainConfig after the run was started count as their defaults.  ``epochs`` may
    differ: a resumed run may be extended."""
    defaults = asdict(TrainConfig())
    return {**defaults, **saved, "epochs": cfg.epochs} == asdict(cfg)


def _killed_before_first_checkpoint(run: Path) -> bool:
    """Whether ``run`` holds only what a run writes before its first checkpoint (and its
    train_config.json): then resuming starts that run over (the tissue-bag cache is kept)."""
    names = {p.name for p in run.iterdir()}
    return ("train_config.json" in names
            and all(n in _BEFORE_FIRST_CHECKPOINT or n.startswith(CHECKPOINT + ".tmp")
                    or (n.startswith(f".{MODEL}.") and n.endswith(".partial")) for n in names))


def _load_checkpoint(path: Path, dev: Any) -> dict[str, Any]:
    """The run's checkpoint (torch.load with weights_only=True), or a clear error naming
    the file when it is damaged, hostile or not ours -- never a traceback."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location=dev, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot resume from this checkpoint "
                              f"({type(exc).__name__}{': ' + detail if detail else ''}); "
                              "it is damaged or was not written by napari-mran train") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: cannot resume: the checkpoint lacks "
                              f"{', '.join(missing)}")
    return state


def check_run_folder(run: Path, cfg: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Check that the run folder ``run`` may take this run; return the checkpoint to resume
    from (loaded on the CPU), or None when the run starts from scratch.

    The folder must be new or empty, unless ``resume`` and it holds a checkpoint of the
    same options (``epochs`` may grow, never shrink), or only what a run writes before its
    first checkpoint (then the run starts over)."""
    ckpt_path = run / CHECKPOINT
    if run.exists() and any(run.iterdir()):
        # a run that failed before its first checkpoint never blocks the next one: it
        # starts over in the same folder (its tissue-bag cache is kept)
        fresh = _killed_before_first_checkpoint(run)
        if not resume and not fresh:
            raise OutputExistsError(f"{run}: the run folder is not empty; use --resume to continue "
                                    "it, or choose a new folder")
        if resume and not ckpt_path.is_file() and not fresh:
            raise MRANError(f"{run}: nothing to resume (no {CHECKPOINT})")
        if resume and ckpt_path.is_file():
            saved = json.loads((run / "train_config.json").read_text())
            if not _same_options(saved, cfg):
                raise MRANError(f"{run}: the options differ from the run being resumed "
                                f"(saved: {saved})")
    resuming = resume and ckpt_path.is_file()
    state = _load_checkpoint(ckpt_path, "cpu") if resuming else None
    if state is not None and int(state["epoch"]) + 1 > cfg.epochs:
        raise MRANError(f"{run}: {int(state['epoch']) + 1} epochs are already trained; "
                        f"--epochs {cfg.epochs} cannot shorten the run")
    return state


def write_checkpoint(run: Path, rs: RunState, epoch: int, cfg_json: str,
                     stain_reference: dict[str, Any] | None = None) -> None:
    """``checkpoint.pt`` after ``epoch`` (0-based): everything a resume needs to continue
    exactly (weights, optimisers, schedulers, bag weights, history, best, torch RNG, the
    training cohort's stain reference as JSON), written under a temporary name and
    renamed into place."""
    import torch

    state = {
        "epoch": epoch, "model": rs.model.state_dict(), "opt_up": rs.opt_up.state_dict(),
        "opt_down": rs.opt_down.state_dict(), "sched_up": rs.sched_up.state_dict(),
        "sched_down": rs.sched_down.state_dict(),
        "bag_weights": {k: torch.from_numpy(v) for k, v in rs.weights.items()},
        "history": json.dumps(rs.history), "best": json.dumps(rs.best),
        "torch_rng": torch.get_rng_state(), "config": cfg_json,
        "init_backbone": json.dumps(rs.init_info),
        "stain_reference": json.dumps(stain_reference),
    }
    tmp = run / (CHECKPOINT + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, run / CHECKPOINT)


def write_text_atomic(path: Path, text: str) -> None:
    """Write *text* to *path* atomically, replacing it (:func:`napari_mran._atomic.atomic_file`)."""
    from .._atomic import atomic_file

    with atomic_file(path, "w", overwrite=True) as fh:
        fh.write(text)


def _write_json(path: Path, doc: Any) -> None:
    """Strict JSON (no NaN), written atomically."""
    write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def finished_run(run: str | os.PathLike, cfg: TrainConfig, *, strict: bool = False,
                 ) -> dict[str, Any] | None:
    """The test document of a run folder that finished training with options ``cfg`` and
    whose files agree: train_config.json has ``cfg``'s options, metrics.jsonl one line per
    epoch, the checkpoint is there, and test_metrics.json was made from the model file now
    there (SHA-256). None when the run has no test_metrics.json (not finished); when it has
    one but something disagrees, None, or with ``strict`` an MRANError naming what."""
    from ..model import sha256_of

    run = Path(run)
    if not (run / TEST_METRICS).is_file():
        return None
    try:
        saved = json.loads((run / "train_config.json").read_text())
        doc = json.loads((run / TEST_METRICS).read_text())
        lines = (run / "metrics.jsonl").read_text().splitlines()
        epochs = [json.loads(x)["epoch"] for x in lines]
        if not _same_options(saved, cfg):
            problem = "its options differ from the ones given now"
        elif not (run / CHECKPOINT).is_file():
            problem = f"{CHECKPOINT} is missing"
        elif doc.get("epochs") != cfg.epochs or epochs != list(range(1, cfg.epochs + 1)):
            problem = (f"it does not hold {cfg.epochs} epochs (metrics.jsonl has {len(epochs)}, "
                       f"{TEST_METRICS} says {doc.get('epochs')})")
        elif doc.get("model_sha256") != sha256_of(run / MODEL):
            problem = f"{MODEL} is not the model that {TEST_METRICS} was made from"
        else:
            return doc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"its files cannot be read ({exc})"
    if strict:
        raise MRANError(f"{run}: finished run that does not verify: {problem}; move it away "
                        "to train it again")
    return None
