"""Saving and loading MRAN checkpoints.

Our format ("napari-mran", version 1) is a single ``.safetensors`` file: the
model's ``state_dict`` (our module names) as tensors, and string metadata

* ``format``: ``"napari-mran"``
* ``format_version``: ``"1"``
* ``mran_config``: :meth:`MRANConfig.to_json` text.

Reference checkpoints (the authors' training code) are torch pickles holding a dict
with ``model_state_dict`` and/or ``best_pth`` (spec section 6); they are opened with
``torch.load(..., weights_only=True)`` only, mapped key by key onto our modules, and
checked (keys, shapes, finiteness) before any weight is copied.

Every problem is raised as :class:`napari_mran.errors.CheckpointError` with a message
``"<file>: <reason>"``.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from napari_mran.errors import CheckpointError, OutputExistsError
from napari_mran.model.mran import MRAN, MRANConfig

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DEFAULT_MAX_BYTES",
    "DEMO_MODEL_PATH",
    "save_model",
    "load_model",
    "sha256_of",
    "reference_key",
]

FORMAT_NAME = "napari-mran"
FORMAT_VERSION = 1
#: Refuse checkpoint files larger than this (bytes) unless the caller raises the cap.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: Where ``load_model("demo")`` looks.
DEMO_MODEL_PATH = Path(__file__).resolve().parent.parent / "data" / "demo_model.safetensors"

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_LISTED = 5  # how many offending keys an error message lists


def _error(path: str | os.PathLike[str], reason: str) -> CheckpointError:
    """A CheckpointError ``"<path>: <reason>"`` with ``.path`` and ``.reason`` attributes."""
    err = CheckpointError(f"{os.fspath(path)}: {reason}")
    err.path = os.fspath(path)  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _listing(items: Iterable[str]) -> str:
    items = sorted(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def sha256_of(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_size`` pieces (never whole in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------
# Reference key names
# ----------------------------------------------------------------------------------------
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
            raise _error(path, f"state dict has a non-string key {key!r}")
        name = key[len("module."):] if key.startswith("module.") else key
        for branch in ("upstream.", "downstream."):
            if name.startswith(branch + "module."):
                name = branch + name[len(branch) + len("module."):]
        if name in out:
            raise _error(path, f"state dict holds {name!r} twice (with and without a 'module.' prefix)")
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------
# Shared checks
# ----------------------------------------------------------------------------------------
def _check_file(path: Path, max_bytes: int) -> int:
    """Existence, type, size checks before opening. Returns the size in bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _error(path, "no such file") from None
    except OSError as exc:
        raise _error(path, f"cannot access the file: {exc.strerror or exc}") from None
    if path.is_dir():
        raise _error(path, "is a directory, not a checkpoint file")
    if not path.is_file():
        raise _error(path, "is not a regular file")
    if st.st_size == 0:
        raise _error(path, "empty file (0 bytes)")
    if st.st_size > max_bytes:
        raise _error(path, f"file is {st.st_size} bytes, larger than the limit of {max_bytes} bytes (max_bytes)")
    return st.st_size


def _sniff(path: Path, size: int) -> Literal["safetensors", "torch"]:
    """Decide the container format from the first bytes (never from the extension)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise _error(path, f"cannot read the file: {exc.strerror or exc}") from None
    if head[:4] == _ZIP_MAGIC:
        return "torch"  # torch.save zip container
    if len(head) == 9:
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":
        return "torch"  # legacy (non-zip) torch.save: starts with a pickle protocol opcode
    raise _error(
        path,
        f"not a recognised checkpoint: neither a safetensors file nor a torch checkpoint (starts with {head[:8]!r})",
    )


def _key_problems(expected: Iterable[str], got: Iterable[str],
                  display: Mapping[str, str] | None = None) -> str:
    """``"missing keys: ...; unexpected keys: ..."`` ('' when the key sets agree);
    ``num_batches_tracked`` buffers may be missing.  *display* renames keys for messages."""
    expected, got, display = set(expected), set(got), display or {}
    missing = expected - got - {k for k in expected if k.endswith("num_batches_tracked")}
    unexpected = got - expected
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(display.get(k, k) for k in missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(display.get(k, k) for k in unexpected)}")
    return "; ".join(problems)


def _check_and_load(model: MRAN, state: Mapping[str, Any], path: Path, display: Mapping[str, str]) -> None:
    """Validate ``state`` (our key names) against ``model`` and copy it in.

    ``display`` maps our key names to the names the file uses, for messages.
    Checks: key sets (``num_batches_tracked`` optional), tensor type, shapes, dtype kind,
    finiteness. Nothing is copied unless everything passes.
    """
    expected = model.state_dict()
    problems = _key_problems(expected, state, display)
    if problems:
        raise _error(path, problems)

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
        raise _error(path, f"entries that are not plain tensors: {_listing(bad_type)}")
    if bad_shape:
        raise _error(path, f"tensor shape mismatch: {'; '.join(sorted(bad_shape)[:_MAX_LISTED])}"
                     + (f" ({len(bad_shape)} in all)" if len(bad_shape) > _MAX_LISTED else ""))
    if bad_dtype:
        raise _error(path, f"wrong tensor types: {'; '.join(sorted(bad_dtype)[:_MAX_LISTED])}")
    if non_finite:
        raise _error(path, f"non-finite values (NaN or Inf) in: {_listing(non_finite)}")
    try:
        with torch.no_grad():
            model.load_state_dict(dict(state), strict=False)  # key sets checked above
    except (RuntimeError, ValueError) as exc:  # should not happen after the checks
        raise _error(path, f"weights do not fit the model: {exc}") from None


# ----------------------------------------------------------------------------------------
# Reference checkpoints
# ----------------------------------------------------------------------------------------
def _shape_of(state: Mapping[str, Any], key: str, ndim: int, path: Path) -> tuple[int, ...]:
    value = state.get(key)
    if not isinstance(value, torch.Tensor):
        raise _error(path, f"missing keys: {key} (needed to infer the model size)")
    if value.ndim != ndim:
        raise _error(path, f"tensor shape mismatch: {key}: expected {ndim} dimensions, got shape {tuple(value.shape)}")
    return tuple(value.shape)


def _model_from_reference_state(state: Mapping[str, Any], path: Path, provenance: dict[str, Any]) -> MRAN:
    """Infer the config from tensor shapes, build the model, check and load the weights."""
    state = _strip_parallel_prefixes(state, str(path))
    names = _reference_names()  # reference name -> our name
    problems = _key_problems(names, state)
    if problems:
        raise _error(path, "not an MRAN reference state dict: " + problems)

    stem = _shape_of(state, "upstream.conv1.weight", 4, path)
    n_classes = _shape_of(state, "upstream.linear.weight", 2, path)[0]
    hidden = _shape_of(state, "downstream.linear0.weight", 2, path)[0]
    try:
        config = MRANConfig(n_classes=n_classes, width=stem[0] / 64, hidden=hidden, provenance=provenance)
    except ValueError as exc:
        raise _error(path, f"implausible model size in the checkpoint: {exc}") from None
    model = MRAN(config)
    ours = {names[k]: v for k, v in state.items()}
    _check_and_load(model, ours, path, display={v: k for k, v in names.items()})
    return model


# Phrases of torch's weights-only unpickler that mean "this pickle wants to build or call
# something that is not plain data" (as opposed to "these bytes are garbage").
_UNSAFE_MARKERS = ("Unsupported global", "is blocked", "Can only create new object", "Can only build",
                   "Unsupported class", "Only persistent_load", "call reduce for unrecognized")


def _weights_only_detail(exc: BaseException) -> str:
    """The specific reason inside torch's long, generic weights-only error text."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif "\n\n" in text:
        text = text.split("\n\n", 1)[1]
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1)", "(2)")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    # first sentence only: torch goes on to suggest allow-listing the offending global
    return lines[0].split(". ", 1)[0].rstrip(".") if lines else type(exc).__name__


def _torch_load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with only ``builtins.id`` added to the allow-list.

    The reference training script stores the builtin ``id`` (by reference, never called)
    in every checkpoint; allowing that one side-effect-free builtin lets those files
    load. Anything else that is not plain data is refused; we never fall back to
    ``weights_only=False``.
    """
    try:
        with torch.serialization.safe_globals([(builtins.id, "builtins.id")]), warnings.catch_warnings():
            # torch warns about odd pickle protocols of garbage files; we raise a clear error instead
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _weights_only_detail(exc)
        if not any(marker in str(exc) for marker in _UNSAFE_MARKERS):
            raise _error(path, f"not a readable torch checkpoint (truncated or corrupt?): {detail[:300]}") from None
        unsafe = ""
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))  # static scan, runs nothing
            found = [name for name in found if name != "builtins.id"]
            if found:
                unsafe = f" Non-data objects referenced: {_listing(found)}."
        except Exception:  # noqa: BLE001 - best-effort diagnostics only
            pass
        raise _error(
            path,
            "refused to load: the pickle references objects other than tensors and plain containers, "
            "which could run code when unpickled (only weights_only=True loading is allowed). "
            f"{detail[:300]}.{unsafe} If you trust the file, extract its state dict in a separate "
            "trusted environment and save it with torch.save or safetensors.",
        ) from None
    except MemoryError:
        raise _error(path, "not enough memory to read the checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/runtime errors of a damaged file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _error(
            path, f"not a readable torch checkpoint (truncated or corrupt?): {type(exc).__name__}: {message[:300]}"
        ) from None


def _pick_state_dict(obj: Any, path: Path, which: str) -> tuple[Mapping[str, Any], str]:
    """Choose the state dict inside a reference checkpoint. Returns (state, entry name)."""
    if not isinstance(obj, Mapping):
        raise _error(path, f"expected a dict with 'model_state_dict' / 'best_pth', got {type(obj).__name__}")
    has_best = isinstance(obj.get("best_pth"), Mapping)
    has_last = isinstance(obj.get("model_state_dict"), Mapping)
    if which == "best" and has_best:
        return obj["best_pth"], "best_pth"
    if has_last:
        if which == "best" and "best_pth" in obj:
            warnings.warn(f"{path}: 'best_pth' is not a state dict; using 'model_state_dict'", stacklevel=4)
        return obj["model_state_dict"], "model_state_dict"
    if has_best:  # which == "last"
        raise _error(path, "which='last' needs a 'model_state_dict' entry, and the checkpoint has none")
    keys = [str(k) for k in obj]
    if keys and all(k.startswith(("upstream.", "downstream.", "module.")) for k in keys):
        return obj, "<top level>"  # a bare state dict
    raise _error(path, f"no 'model_state_dict' or 'best_pth' state dict in the checkpoint (top-level keys: "
                       f"{_listing(keys) or 'none'})")


def _load_reference_pickle(path: Path, which: str) -> MRAN:
    obj = _torch_load_weights_only(path)
    state, entry = _pick_state_dict(obj, path, which)
    provenance: dict[str, Any] = {
        "imported_from": {
            "file": path.name,
            "sha256": sha256_of(path),
            "format": "reference torch checkpoint",
            "state_dict": entry,
        }
    }
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        provenance["imported_from"]["epoch"] = epoch
    return _model_from_reference_state(state, path, provenance)


# ----------------------------------------------------------------------------------------
# Our format
# ----------------------------------------------------------------------------------------
def _load_safetensors(path: Path) -> MRAN:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except MemoryError:
        raise _error(path, "not enough memory to read the checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... of a damaged file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _error(path, f"not a valid safetensors file (truncated or corrupt?): {type(exc).__name__}: "
                           f"{message[:300]}") from None

    if "format" not in metadata and "mran_config" not in metadata:
        # A plain safetensors state dict: accept it if it is a reference-named MRAN state dict.
        provenance = {"imported_from": {"file": path.name, "sha256": sha256_of(path),
                                        "format": "reference state dict (safetensors)", "state_dict": "<top level>"}}
        try:
            return _model_from_reference_state(state, path, provenance)
        except CheckpointError as exc:
            raise _error(path, f"safetensors file without napari-mran metadata, and not a reference MRAN "
                               f"state dict either ({exc.reason})") from None  # type: ignore[attr-defined]

    fmt = metadata.get("format")
    if fmt != FORMAT_NAME:
        raise _error(path, f"bad metadata: 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        newer = isinstance(version, str) and version.isdigit() and int(version) > FORMAT_VERSION
        raise _error(path, f"bad metadata: format_version {version!r} "
                           + ("is newer than this napari-mran understands (1); please upgrade" if newer
                              else f"is not supported (expected '{FORMAT_VERSION}')"))
    text = metadata.get("mran_config")
    if text is None:
        raise _error(path, "bad metadata: no 'mran_config' entry")
    try:
        config = MRANConfig.from_json(text)
    except ValueError as exc:
        raise _error(path, f"bad metadata: invalid mran_config: {exc}") from None
    model = MRAN(config)
    _check_and_load(model, state, path, display={})
    return model


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------
def _resolve(path_or_name: str | os.PathLike[str]) -> Path:
    if isinstance(path_or_name, str) and path_or_name == "demo":
        if not DEMO_MODEL_PATH.is_file():
            raise _error("demo", f"the demo model is not bundled with this installation (expected {DEMO_MODEL_PATH})")
        return DEMO_MODEL_PATH
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"load_model expects a path or 'demo', got {type(path_or_name).__name__}")
    return Path(path_or_name).expanduser()


def load_model(
    path_or_name: str | os.PathLike[str],
    *,
    which: Literal["best", "last"] = "best",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> MRAN:
    """Load an MRAN from our ``.safetensors`` format or a reference torch checkpoint.

    The format is detected from the file's content, not its extension.

    Args:
        path_or_name: a file path, or ``"demo"`` for the bundled demo model.
        which: for reference checkpoints holding both, ``"best"`` (``best_pth``, the
            default, falling back to ``model_state_dict``) or ``"last"`` (``model_state_dict``).
        max_bytes: refuse files larger than this many bytes (default 2 GiB).

    Returns:
        The model in eval mode on the CPU, with ``checkpoint_path`` and
        ``checkpoint_sha256`` attributes. For a reference import the config's
        ``provenance["imported_from"]`` records the file name, SHA-256 and entry used.

    Raises:
        CheckpointError: missing/unreadable/oversized/corrupt file, refused pickle,
            wrong/missing/unexpected keys, shape or dtype mismatch, NaN/Inf weights,
            bad metadata. Nothing of the model is returned in these cases.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    path = _resolve(path_or_name)
    size = _check_file(path, max_bytes)
    if _sniff(path, size) == "safetensors":
        model = _load_safetensors(path)
    else:
        model = _load_reference_pickle(path, which)
    # where the weights came from, for the provenance of every result made with them
    model.checkpoint_path = str(path)
    model.checkpoint_sha256 = sha256_of(path)
    model.is_demo = str(path_or_name) == "demo"
    return model.eval()


def save_model(model: MRAN, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` in our format (one ``.safetensors`` file, config in the metadata).

    The file is written to a temporary name in the same folder and then renamed over
    ``path``, so ``path`` never holds a partial file.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        CheckpointError: ``path`` is a folder, its folder is missing, the weights are not
            finite, or the write fails.
    """
    from safetensors.torch import save_file

    if not isinstance(model, MRAN):
        raise TypeError(f"save_model expects an MRAN, got {type(model).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise _error(path, "is a directory; give a file name to save the model to")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise _error(path, f"cannot save: folder {folder} does not exist")

    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    non_finite = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise _error(path, f"refusing to save non-finite (NaN/Inf) weights in: {_listing(non_finite)}")
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "mran_config": model.config.to_json()}

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise _error(path, f"cannot write to {folder}: {exc.strerror or exc}") from None
    try:
        save_file(tensors, tmp_name, metadata=metadata)
        with open(tmp_name, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        if path.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(f"{path}: already exists; pass overwrite=True to replace it")
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _error(path, f"cannot write the checkpoint: {exc.strerror or exc}") from None
        raise
    return path

