"""Reading ``torch.save`` files without running anything in them.

:func:`torch_load_weights_only` is torch's own weights-only loader (plain data only);
:func:`restricted_load` reads what it refuses with our restricted unpickler.  Both
containers torch writes are read: the zip archive (``data.pkl`` plus one stored
record per tensor storage) and the legacy stream (magic number, protocol version and
system info pickles, the object pickle, the storage key list, then the raw storage
bytes).  Storage references are checked and their bytes read into uint8 tensors that
:mod:`napari_mran.model._unpickler` views as the tensors.
"""

from __future__ import annotations

import builtins
import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_mran.model._checks import ZIP_MAGIC, checkpoint_error
from napari_mran.model._unpickler import Corrupt, Refused, RestrictedUnpickler, Storage, Token

__all__ = ["restricted_load", "torch_load_weights_only"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def torch_load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with only ``builtins.id`` added to the allow-list.

    The reference training script stores the builtin ``id`` (by reference, never called)
    in every checkpoint; allowing that one side-effect-free builtin lets those files
    load. Anything else that is not plain data makes torch raise; we never fall back to
    ``weights_only=False`` (the caller tries :func:`restricted_load` instead).
    """
    with torch.serialization.safe_globals([(builtins.id, "builtins.id")]), warnings.catch_warnings():
        # torch warns about odd pickle protocols of garbage files; we raise a clear error instead
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def _storage_pid(pid: Any) -> tuple[str, torch.dtype, int, Any]:
    """Check a torch storage persistent id; returns (key, dtype, numel, view_metadata)."""
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
        raise Refused(f"an unknown persistent id ({type(pid).__name__})")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
        raise Refused(f"a persistent id of kind {kind!r} (only tensor storages are read)")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, Token) or storage_type.kind != "storage" \
            or storage_type.dtype is None:
        raise Refused(f"a storage of type {storage_type!r}")
    key = key.decode("ascii") if isinstance(key, bytes) else key
    if not isinstance(key, str) or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise Corrupt("a malformed storage reference")
    return key, storage_type.dtype, numel, (pid[5] if len(pid) == 6 else None)


def _read_into(fh: Any, data: torch.Tensor) -> int | None:
    """``fh.readinto`` the bytes of the uint8 tensor ``data``; the count read.

    ``fh`` is an open file or a zip member (typeshed types the latter as IO[bytes],
    which declares no readinto); the tensor's numpy view is the writable buffer."""
    return fh.readinto(data.numpy())


def _restricted_load_zip(path: Path) -> tuple[Any, set[str]]:
    with zipfile.ZipFile(path) as zf:
        pkl_names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise Corrupt("no data.pkl record (not a torch.save checkpoint; a TorchScript archive?)")
        prefix = pkl_names[0][: -len("data.pkl")]
        names = set(zf.namelist())
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise Corrupt("a big-endian checkpoint (not supported)")
        storages: dict[str, Storage] = {}

        def persistent_load(pid: Any) -> Storage:
            key, dtype, numel, _ = _storage_pid(pid)
            if key in storages:
                if storages[key].dtype != dtype:
                    raise Corrupt(f"storage {key} is read with two dtypes")
                return storages[key]
            try:
                info = zf.getinfo(f"{prefix}data/{key}")
            except KeyError:
                raise Corrupt(f"missing tensor data record data/{key}") from None
            nbytes = numel * torch.empty((0,), dtype=dtype).element_size()
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
                raise Corrupt(f"tensor data record data/{key} has {info.file_size} bytes, expected {nbytes}")
            data = torch.empty((nbytes,), dtype=torch.uint8)
            with zf.open(info) as fh:
                if nbytes and _read_into(fh, data) != nbytes:
                    raise Corrupt(f"tensor data record data/{key} is short")
            storages[key] = Storage(key, dtype, numel, data)
            return storages[key]

        info = zf.getinfo(pkl_names[0])
        if info.compress_type != zipfile.ZIP_STORED:
            raise Corrupt("data.pkl is compressed (torch never writes that)")
        unpickler = RestrictedUnpickler(io.BytesIO(zf.read(info)), persistent_load)
        obj = unpickler.load()
    return obj, unpickler.inert_names


def _restricted_load_legacy(path: Path, size: int) -> tuple[Any, set[str]]:
    storages: dict[str, Storage] = {}
    declared = [0]

    def persistent_load(pid: Any) -> Storage:
        key, dtype, numel, view = _storage_pid(pid)
        if view is not None:
            raise Refused("a storage view (not written by torch >= 1.0 for state dicts)")
        if key in storages:
            if storages[key].dtype != dtype:
                raise Corrupt(f"storage {key} is read with two dtypes")
            return storages[key]
        nbytes = numel * torch.empty((0,), dtype=dtype).element_size()
        declared[0] += nbytes
        if declared[0] > size:
            raise Corrupt("the pickle declares more tensor data than the file holds")
        storages[key] = Storage(key, dtype, numel, torch.empty((nbytes,), dtype=torch.uint8))
        return storages[key]

    with open(path, "rb") as fh:
        head = [RestrictedUnpickler(fh).load() for _ in range(3)]
        if type(head[0]) is not int or head[0] != _LEGACY_MAGIC or type(head[1]) is not int \
                or head[1] != 1001 or type(head[2]) is not dict:
            raise Corrupt("not a torch checkpoint (no legacy torch.save header)")
        if head[2].get("little_endian") is not True:
            raise Corrupt("a big-endian checkpoint (not supported)")
        unpickler = RestrictedUnpickler(fh, persistent_load)
        obj = unpickler.load()
        keys = RestrictedUnpickler(fh).load()
        if type(keys) is not list or not all(type(k) is str for k in keys) or sorted(keys) != sorted(storages):
            raise Corrupt("the list of stored tensors does not match the pickle")
        for key in keys:  # each: int64 element count, then the raw little-endian bytes
            storage = storages[key]
            count = fh.read(8)
            if len(count) != 8 or int.from_bytes(count, "little", signed=True) != storage.numel:
                raise Corrupt(f"tensor data of storage {key} is missing or has the wrong size")
            if storage.data.numel() and _read_into(fh, storage.data) != storage.data.numel():
                raise Corrupt(f"tensor data of storage {key} is short")
    return obj, unpickler.inert_names


def restricted_load(path: Path) -> tuple[Any, set[str]]:
    """Read a torch checkpoint with the restricted unpickler (see above).

    Returns the object and the names of the globals that became inert records.
    Raises CheckpointError: refused (with what), or unreadable.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            zipped = fh.read(4) == ZIP_MAGIC
        return _restricted_load_zip(path) if zipped else _restricted_load_legacy(path, size)
    except Refused as exc:
        raise checkpoint_error(path, f"refused to load: {exc}; nothing in the file was run. If you trust the "
                               "file, extract its state dict in a separate trusted environment and save "
                               "it with torch.save or safetensors.") from None
    except MemoryError:
        raise checkpoint_error(path, "not enough memory to read the checkpoint") from None
    except Corrupt as exc:
        raise checkpoint_error(path, f"not a readable torch checkpoint (truncated or corrupt?): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - EOF, bad opcodes, zip errors of a damaged file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise checkpoint_error(path, f"not a readable torch checkpoint (truncated or corrupt?): "
                               f"{type(exc).__name__}: {message[:300]}") from None

