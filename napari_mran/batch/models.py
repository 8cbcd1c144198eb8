"""Checkpoints named by path (or ``"demo"``), loaded with their sha256, and the
once-per-process model cache of workers."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..model import MRAN

__all__ = ["cached_model", "class_names", "load_checkpoint", "remember_model",
           "resolve_model_path"]

_MODEL_CACHE: dict[tuple[str, str], MRAN] = {}
_MODEL_LOCK = threading.Lock()


def resolve_model_path(model: str | os.PathLike) -> tuple[str, bool]:
    """``(absolute checkpoint path, is the bundled demo model)`` of a ``--model`` value;
    ``"demo"`` names the bundled synthetic demo model.  CheckpointError when missing."""
    from ..model import DEMO_MODEL_PATH

    if isinstance(model, str) and model == "demo":
        if not DEMO_MODEL_PATH.is_file():
            raise CheckpointError(f"{DEMO_MODEL_PATH}: the demo model is not bundled with "
                                  "this installation")
        return str(DEMO_MODEL_PATH), True
    path = os.path.abspath(os.fspath(Path(model).expanduser()))
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    return path, os.path.realpath(path) == os.path.realpath(DEMO_MODEL_PATH)


def load_checkpoint(model: str | os.PathLike, expected_sha256: str | None = None) -> MRAN:
    """Load a checkpoint (:func:`resolve_model_path`) with ``checkpoint_sha256``,
    ``checkpoint_path`` and ``is_demo`` set.  With *expected_sha256*, CheckpointError
    when the file is not that one any more."""
    from ..model import load_model, sha256_of

    path, is_demo = resolve_model_path(model)
    sha = sha256_of(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise CheckpointError(f"{path}: the model file changed during the run "
                              f"(sha256 {sha[:12]}..., expected {expected_sha256[:12]}...)")
    loaded = load_model(path)
    loaded.checkpoint_sha256, loaded.checkpoint_path, loaded.is_demo = sha, path, is_demo
    return loaded


def remember_model(model: MRAN) -> None:
    """Make *model* the one the cache holds (an in-process run reuses the loaded model)."""
    with _MODEL_LOCK:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[(model.checkpoint_path, model.checkpoint_sha256)] = model


def cached_model(model_path: str, sha256: str) -> MRAN:
    """Load the checkpoint once per process (the worker's cache), checking its sha256."""
    key = (model_path, sha256)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = load_checkpoint(model_path, sha256)
            _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = model
        return model


def class_names(model: MRAN) -> list[str]:
    """The model's class names (an MRANConfig always has them: default ``class_<i>``)."""
    names = model.config.class_names
    assert names is not None  # MRANConfig.__post_init__ fills them in
    return list(names)
