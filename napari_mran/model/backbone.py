"""Initialising MRAN's CNN trunk from a torchvision-layout ResNet-18 state dict.

:func:`torchvision_key` maps our trunk's key names onto torchvision's;
:func:`init_backbone_from` reads a ``.safetensors`` or weights-only ``torch.save``
file, checks it against the trunk and copies it in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_mran.errors import CheckpointError
from napari_mran.model._checks import (DEFAULT_MAX_BYTES, check_and_load, check_file,
                                       checkpoint_error, key_problems, reason_of, sha256_of,
                                       sniff_format)
from napari_mran.model._torch_archive import torch_load_weights_only
from napari_mran.model.mran import MRAN, UpstreamBranch
from napari_mran.model.resnet import ResNetTrunk

__all__ = ["init_backbone_from", "torchvision_key"]

# Our trunk names -> torchvision's resnet18 names (the trunk has no fc; fc.* is ignored).
_TRUNK_RENAMES: tuple[tuple[str, str], ...] = (("stem_conv.", "conv1."), ("stem_bn.", "bn1."))
_TRUNK_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    ("proj.conv.", "downsample.0."),
    ("proj.bn.", "downsample.1."),
    ("conv1.", "conv1."), ("bn1.", "bn1."), ("conv2.", "conv2."), ("bn2.", "bn2."),
)


def torchvision_key(trunk_key: str) -> str:
    """Name of one of our :class:`ResNetTrunk` state-dict keys in a torchvision ResNet.

    ``stem_conv`` / ``stem_bn`` -> ``conv1`` / ``bn1``; ``stages.{s}.{b}.<rest>`` ->
    ``layer{s+1}.{b}.<rest>`` with the shortcut ``proj.conv`` / ``proj.bn`` ->
    ``downsample.0`` / ``downsample.1``.

    Raises:
        KeyError: for a key that has no torchvision counterpart.
    """
    for ours, theirs in _TRUNK_RENAMES:
        if trunk_key.startswith(ours):
            return theirs + trunk_key[len(ours):]
    if trunk_key.startswith("stages."):
        stage, block, rest = trunk_key[len("stages."):].split(".", 2)
        for ours, theirs in _TRUNK_BLOCK_RENAMES:
            if rest.startswith(ours):
                return f"layer{int(stage) + 1}.{int(block)}.{theirs}{rest[len(ours):]}"
    raise KeyError(trunk_key)


def _trunk_of(target: Any) -> ResNetTrunk:
    if isinstance(target, MRAN):
        return target.upstream.trunk
    if isinstance(target, UpstreamBranch):
        return target.trunk
    if isinstance(target, ResNetTrunk):
        return target
    raise TypeError(f"init_backbone_from expects an MRAN, its UpstreamBranch or a ResNetTrunk, "
                    f"got {type(target).__name__}")

def init_backbone_from(model_or_backbone: MRAN | UpstreamBranch | ResNetTrunk,
                       path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Copy a torchvision-layout ResNet-18 state dict file into MRAN's CNN trunk.

    MRAN has one CNN (the upstream branch's trunk; the downstream branch is two linear
    layers), so that is the one initialised. The file is a ``.safetensors`` file or a
    ``torch.save`` file read with ``weights_only=True`` (format from its content); it
    holds a state dict (top level, or under ``"state_dict"``) with torchvision's names
    (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...,
    ``layer2.0.downsample.0.weight``, ``...downsample.1.*``). ``fc.*`` is ignored;
    ``num_batches_tracked`` may be absent. Key sets, shapes (ResNet-18 weights fit
    ``width=1`` only), dtypes and finiteness are checked before anything is copied.
    Only the weights (and BN running statistics) change; the input is still RGB / 255
    without mean/std normalisation (see docs/model.md).

    Returns:
        The file's SHA-256 (hex), for provenance.

    Raises:
        CheckpointError: missing/unreadable/refused file, key or shape mismatch (the key
            named), NaN/Inf values. The model is unchanged in these cases.
        TypeError: ``model_or_backbone`` is not an MRAN, UpstreamBranch or ResNetTrunk.
    """
    trunk = _trunk_of(model_or_backbone)
    path = Path(path).expanduser()
    obj = _read_state_dict(path, max_bytes)
    names = {torchvision_key(k): k for k in trunk.state_dict()}  # torchvision name -> ours
    state = {k: v for k, v in obj.items() if not k.startswith("fc.")}
    problems = key_problems(names, state)
    if problems:
        if any(k.startswith(("stem_conv.", "stages.")) for k in state):
            problems += " (these are napari-mran's trunk names; rename them with torchvision_key)"
        raise checkpoint_error(path, f"not a torchvision-layout ResNet-18 state dict for this trunk: {problems}")
    ours = {names[k]: v for k, v in state.items()}
    try:
        check_and_load(trunk, ours, path, display={v: k for k, v in names.items()})
    except CheckpointError as exc:
        reason = reason_of(exc)
        if "shape mismatch" in reason:
            width = trunk.widths[0] / 64
            reason += (f" (this model has width {width:g}, stage widths {trunk.widths}; "
                       "ResNet-18 weights fit width 1 only)")
        raise checkpoint_error(path, reason) from None
    return sha256_of(path)


def _read_state_dict(path: Path, max_bytes: int) -> Mapping[str, Any]:
    """The state dict a backbone file holds (top level or under ``"state_dict"``), its
    keys checked to be strings; CheckpointError for anything else."""
    size = check_file(path, max_bytes)
    if sniff_format(path, size) == "safetensors":
        obj = _read_safetensors(path)
    else:
        obj = _read_torch(path)
    if isinstance(obj, Mapping) and "conv1.weight" not in obj and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise checkpoint_error(path, f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    if any(not isinstance(k, str) for k in obj):
        raise checkpoint_error(path, "the state dict has non-string keys")
    return obj


def _read_safetensors(path: Path) -> Any:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except MemoryError:
        raise checkpoint_error(path, "not enough memory to read the file") from None
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError of a damaged file
        raise checkpoint_error(path, f"not a valid safetensors file (truncated or corrupt?): "
                                     f"{type(exc).__name__}: {str(exc)[:300]}") from None


def _read_torch(path: Path) -> Any:
    try:
        return torch_load_weights_only(path)
    except MemoryError:
        raise checkpoint_error(path, "not enough memory to read the file") from None
    except Exception as exc:  # noqa: BLE001 - refused (non-data objects) or unreadable
        detail = str(exc).strip().splitlines()
        unsafe = next((line.strip() for line in detail if "GLOBAL" in line or "global" in line), "")
        raise checkpoint_error(path, "refused or unreadable: a backbone file must be a plain state dict that "
                                     "torch.load(weights_only=True) reads (or a safetensors file)"
                                     + (f" ({unsafe[:200]})" if unsafe else f" ({type(exc).__name__})")) from None
