"""Checks shared by every checkpoint reader and writer.

File checks before opening (existence, type, size), the container format from the
first bytes, and the checks of a state dict against a model (key sets, tensor types,
shapes, dtypes, finiteness) before anything is copied into it.  Every problem is a
:class:`napari_mran.errors.CheckpointError` ``"<file>: <reason>"``
(:func:`checkpoint_error`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from napari_mran.errors import CheckpointError

#: Refuse checkpoint files larger than this (bytes) unless the caller raises the cap.
DEFAULT_MAX_BYTES = 2 * 1024**3
ZIP_MAGIC = b"PK\x03\x04"
MAX_LISTED = 5  # how many offending keys an error message lists


def checkpoint_error(path: str | os.PathLike[str], reason: str) -> CheckpointError:
    """A CheckpointError ``"<path>: <reason>"`` with ``.path`` and ``.reason`` attributes."""
    err = CheckpointError(f"{os.fspath(path)}: {reason}")
    # CheckpointError (errors.py) declares no fields; these two are ours, read by reason_of
    err.path = os.fspath(path)  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


def reason_of(exc: CheckpointError) -> str:
    """The ``reason`` part of an error made by :func:`checkpoint_error`."""
    return str(exc.reason)  # type: ignore[attr-defined]  # set by checkpoint_error


def listing(items: Iterable[str]) -> str:
    """Up to MAX_LISTED of ``items``, sorted, comma-separated, with the count when cut."""
    names = sorted(items)
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def sha256_of(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_size`` pieces (never whole in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()



def check_file(path: Path, max_bytes: int) -> int:
    """Existence, type, size checks before opening. Returns the size in bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise checkpoint_error(path, "no such file") from None
    except OSError as exc:
        raise checkpoint_error(path, f"cannot access the file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise checkpoint_error(path, "is a directory, not a checkpoint file")
    if not path.is_file():
        raise checkpoint_error(path, "is not a regular file")
    if st.st_size == 0:
        raise checkpoint_error(path, "empty file (0 bytes)")
    if st.st_size > max_bytes:
        raise checkpoint_error(path, f"file is {st.st_size} bytes, larger than the limit of {max_bytes} bytes (max_bytes)")
    return st.st_size


def sniff_format(path: Path, size: int) -> Literal["safetensors", "torch"]:
    """Decide the container format from the first bytes (never from the extension)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise checkpoint_error(path, f"cannot read the file: {exc.strerror or exc}") from None
    if head[:4] == ZIP_MAGIC:
        return "torch"  # torch.save zip container
    if len(head) == 9:
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":
        return "torch"  # legacy (non-zip) torch.save: starts with a pickle protocol opcode
    raise checkpoint_error(
        path,
        f"not a recognised checkpoint: neither a safetensors file nor a torch checkpoint (starts with {head[:8]!r})",
    )


def key_problems(expected: Iterable[str], got: Iterable[str],
                  display: Mapping[str, str] | None = None) -> str:
    """``"missing keys: ...; unexpected keys: ..."`` ('' when the key sets agree);
    ``num_batches_tracked`` buffers may be missing.  *display* renames keys for messages."""
    expected, got, display = set(expected), set(got), display or {}
    missing = expected - got - {k for k in expected if k.endswith("num_batches_tracked")}
    unexpected = got - expected
    problems = []
    if missing:
        problems.append(f"missing keys: {listing(display.get(k, k) for k in missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listing(display.get(k, k) for k in unexpected)}")
    return "; ".join(problems)


def check_and_load(model: torch.nn.Module, state: Mapping[str, Any], path: Path,
                    display: Mapping[str, str]) -> None:
    """Validate ``state`` (our key names) against ``model`` (an MRAN or a part) and copy it in.

    ``display`` maps our key names to the names the file uses, for messages.
    Checks: key sets (``num_batches_tracked`` optional), tensor type, shapes, dtype kind,
    finiteness. Nothing is copied unless everything passes.
    """
    expected = model.state_dict()
    problems = key_problems(expected, state, display)
    if problems:
        raise checkpoint_error(path, problems)

    bad_type, bad_shape, bad_dtype, non_finite = [], [], [], []
    for key, value in state.items():
        name = display.get(key, key)
        want = expected[key]
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided or value.is_quantized:
            bad_type.append(f"{name} ({type(value).__name__})")
            continue
        if tuple(value.shape) != tuple(want.shape):
            bad_shape.append(f"{name}: expected shape {tuple(want.shape)}, got {tuple(value.shape)}")
            continue
        if want.is_floating_point():
            if not value.is_floating_point():
                bad_dtype.append(f"{name}: expected a floating-point tensor, got {value.dtype}")
            elif not bool(torch.isfinite(value).all()):
                non_finite.append(name)
        elif value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            bad_dtype.append(f"{name}: expected an integer tensor, got {value.dtype}")
    if bad_type:
        raise checkpoint_error(path, f"entries that are not plain tensors: {listing(bad_type)}")
    if bad_shape:
        raise checkpoint_error(path, f"tensor shape mismatch: {'; '.join(sorted(bad_shape)[:MAX_LISTED])}"
                               + (f" ({len(bad_shape)} in all)" if len(bad_shape) > MAX_LISTED else ""))
    if bad_dtype:
        raise checkpoint_error(path, f"wrong tensor types: {'; '.join(sorted(bad_dtype)[:MAX_LISTED])}")
    if non_finite:
        raise checkpoint_error(path, f"non-finite values (NaN or Inf) in: {listing(non_finite)}")
    try:
        with torch.no_grad():
            model.load_state_dict(dict(state), strict=False)  # key sets checked above
    except (RuntimeError, ValueError) as exc:  # should not happen after the checks
        raise checkpoint_error(path, f"weights do not fit the model: {exc}") from None

