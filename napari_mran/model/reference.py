"""Importing the authors' reference checkpoints (spec section 6).

Their key names are mapped onto ours (:func:`reference_key`), ``DataParallel``
``module.`` prefixes removed, the model size inferred from tensor shapes, and the
weights checked before any is copied.  Torch pickles holding a dict with
``model_state_dict`` and/or ``best_pth`` are opened with
``torch.load(..., weights_only=True)`` or, when that refuses them (the authors' full
training checkpoints also hold optimiser and scheduler objects), with our restricted
unpickler; never with ``weights_only=False``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from napari_mran.model._checks import (check_and_load, checkpoint_error, key_problems, listing,
                                       sha256_of)
from napari_mran.model._torch_archive import restricted_load, torch_load_weights_only
from napari_mran.model.mran import MRAN, MRANConfig

__all__ = ["load_reference_pickle", "model_from_reference_state", "reference_key"]

# Our names -> the reference code's names, by module prefix (longest match first).
_TOP_LEVEL_RENAMES: tuple[tuple[str, str], ...] = (
    ("upstream.trunk.stem_conv.", "upstream.conv1."),
    ("upstream.trunk.stem_bn.", "upstream.bn1."),
    ("upstream.classifier.", "upstream.linear."),
    ("downstream.to_hidden.", "downstream.linear0."),
    ("downstream.classifier.", "downstream.linear1."),
)
# Inside a block: our projection shortcut vs the reference's Sequential(conv, bn).
_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("proj.conv.", "shortcut.0."),
    ("proj.bn.", "shortcut.1."),
    ("conv1.", "conv1."),
    ("bn1.", "bn1."),
    ("conv2.", "conv2."),
    ("bn2.", "bn2."),
)


def reference_key(our_key: str) -> str:
    """Name of one of our state-dict keys in a reference checkpoint (spec section 6).

    ``upstream.trunk.stages.{s}.{b}.<rest>`` -> ``upstream.layer{s+1}.{b}.<rest'>``, the stem
    -> ``upstream.conv1`` / ``upstream.bn1``, the shared classifier -> ``upstream.linear``,
    the downstream ``to_hidden`` / ``classifier`` -> ``downstream.linear0`` / ``linear1``.

    Raises:
        KeyError: for a key that has no reference counterpart.
    """
    for ours, theirs in _TOP_LEVEL_RENAMES:
        if our_key.startswith(ours):
            return theirs + our_key[len(ours):]
    prefix = "upstream.trunk.stages."
    if our_key.startswith(prefix):
        stage, block, rest = our_key[len(prefix):].split(".", 2)
        for ours, theirs in _BLOCK_RENAMES:
            if rest.startswith(ours):
                return f"upstream.layer{int(stage) + 1}.{int(block)}.{theirs}{rest[len(ours):]}"
    raise KeyError(our_key)


@lru_cache(maxsize=1)
def _reference_names() -> dict[str, str]:
    """Reference name -> our name for every state-dict entry (the key set is width-independent)."""
    tiny = MRAN(MRANConfig(width=1 / 64))
    return {reference_key(k): k for k in tiny.state_dict()}


def _strip_parallel_prefixes(state: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Remove DataParallel ``module.`` segments (``upstream.module.x`` -> ``upstream.x``)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise checkpoint_error(path, f"state dict has a non-string key {key!r}")
        name = key[len("module."):] if key.startswith("module.") else key
        for branch in ("upstream.", "downstream."):
            if name.startswith(branch + "module."):
                name = branch + name[len(branch) + len("module."):]
        if name in out:
            raise checkpoint_error(path, f"state dict holds {name!r} twice (with and without a 'module.' prefix)")
        out[name] = value
    return out



def _shape_of(state: Mapping[str, Any], key: str, ndim: int, path: Path) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise checkpoint_error(path, f"missing keys: {key} (needed to infer the model size)")
    if value.ndim != ndim:
        raise checkpoint_error(path, f"tensor shape mismatch: {key}: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    return tuple(value.shape)


def model_from_reference_state(state: Mapping[str, Any], path: Path, provenance: dict[str, Any]) -> MRAN:
    """Infer the config from tensor shapes, build the model, check and load the weights."""
    state = _strip_parallel_prefixes(state, str(path))
    names = _reference_names()  # reference name -> our name
    problems = key_problems(names, state)
    if problems:
        raise checkpoint_error(path, "not an MRAN reference state dict: " + problems)

    stem = _shape_of(state, "upstream.conv1.weight", 4, path)
    n_classes = _shape_of(state, "upstream.linear.weight", 2, path)[0]
    hidden = _shape_of(state, "downstream.linear0.weight", 2, path)[0]
    try:
        config = MRANConfig(n_classes=n_classes, width=stem[0] / 64, hidden=hidden, provenance=provenance)
    except ValueError as exc:
        raise checkpoint_error(path, f"implausible model size in the checkpoint: {exc}") from None
    model = MRAN(config)
    ours = {names[k]: v for k, v in state.items()}
    check_and_load(model, ours, path, display={v: k for k, v in names.items()})
    return model

def _pick_state_dict(obj: Any, path: Path, which: str) -> tuple[Mapping[str, Any], str]:
    """Choose the state dict inside a reference checkpoint. Returns (state, entry name)."""
    if not isinstance(obj, Mapping):
        raise checkpoint_error(path, f"expected a dict with 'model_state_dict' / 'best_pth', got {type(obj).__name__}")
    has_best = isinstance(obj.get("best_pth"), Mapping)
    has_last = isinstance(obj.get("model_state_dict"), Mapping)
    if which == "best" and has_best:
        return obj["best_pth"], "best_pth"
    if has_last:
        if which == "best" and "best_pth" in obj:
            warnings.warn(f"{path}: 'best_pth' is not a state dict; using 'model_state_dict'", stacklevel=4)
        return obj["model_state_dict"], "model_state_dict"
    if has_best:  # which == "last"
        raise checkpoint_error(path, "which='last' needs a 'model_state_dict' entry, and the checkpoint has none")
    keys = [str(k) for k in obj]
    if keys and all(k.startswith(("upstream.", "downstream.", "module.")) for k in keys):
        return obj, "<top level>"  # a bare state dict
    raise checkpoint_error(path, f"no 'model_state_dict' or 'best_pth' state dict in the checkpoint (top-level keys: "
                                 f"{listing(keys) or 'none'})")


def load_reference_pickle(path: Path, which: str) -> MRAN:
    not_restored: set[str] = set()
    try:
        obj = torch_load_weights_only(path)
    except MemoryError:
        raise checkpoint_error(path, "not enough memory to read the checkpoint") from None
    except Exception:  # noqa: BLE001 - refused or unreadable: the restricted reader decides
        # The authors' full checkpoints (optimiser and scheduler objects next to the
        # weights) are refused by torch; read them with the restricted unpickler, whose
        # verdict (refused, naming the global, or unreadable) is the one reported.
        obj, not_restored = restricted_load(path)
    state, entry = _pick_state_dict(obj, path, which)
    provenance: dict[str, Any] = {
        "imported_from": {
            "file": path.name,
            "sha256": sha256_of(path),
            "format": "reference torch checkpoint",
            "state_dict": entry,
        }
    }
    if not_restored:
        provenance["imported_from"]["format"] += " (weights only; optimiser/scheduler objects not restored)"
        provenance["imported_from"]["not_restored"] = sorted(not_restored)
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        provenance["imported_from"]["epoch"] = epoch
    return model_from_reference_state(state, path, provenance)

