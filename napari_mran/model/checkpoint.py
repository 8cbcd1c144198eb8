"""Saving and loading MRAN checkpoints.

Our format ("napari-mran", version 1) is a single ``.safetensors`` file: the
model's ``state_dict`` (our module names) as tensors, and string metadata

* ``format``: ``"napari-mran"``
* ``format_version``: ``"1"``
* ``mran_config``: :meth:`MRANConfig.to_json` text.

Reference checkpoints (the authors' training code) are torch pickles holding a dict
with ``model_state_dict`` and/or ``best_pth`` (spec section 6); they are opened with
``torch.load(..., weights_only=True)``, or, when that refuses them (the authors' full
training checkpoints also hold optimiser and scheduler objects), with our restricted
unpickler, which executes nothing (see "Restricted unpickler" below). Never with
``weights_only=False``. The weights are mapped key by key onto our modules and checked
(keys, shapes, finiteness) before any weight is copied.

:func:`init_backbone_from` loads a torchvision-layout ResNet-18 state dict into the trunk.

Every problem is raised as :class:`napari_mran.errors.CheckpointError` with a message
``"<file>: <reason>"``.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import hashlib
import io
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from napari_mran.errors import CheckpointError, OutputExistsError
from napari_mran.model.mran import MRAN, MRANConfig, UpstreamBranch
from napari_mran.model.resnet import ResNetTrunk

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DEFAULT_MAX_BYTES",
    "DEMO_MODEL_PATH",
    "save_model",
    "load_model",
    "sha256_of",
    "reference_key",
    "torchvision_key",
    "init_backbone_from",
    "PickledObject",
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


def _check_and_load(model: torch.nn.Module, state: Mapping[str, Any], path: Path,
                    display: Mapping[str, str]) -> None:
    """Validate ``state`` (our key names) against ``model`` (an MRAN or a part) and copy it in.

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


def _torch_load_weights_only(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with only ``builtins.id`` added to the allow-list.

    The reference training script stores the builtin ``id`` (by reference, never called)
    in every checkpoint; allowing that one side-effect-free builtin lets those files
    load. Anything else that is not plain data makes torch raise; we never fall back to
    ``weights_only=False`` (the caller tries the restricted unpickler below instead).
    """
    with torch.serialization.safe_globals([(builtins.id, "builtins.id")]), warnings.catch_warnings():
        # torch warns about odd pickle protocols of garbage files; we raise a clear error instead
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------
# Restricted unpickler: the authors' full training checkpoints
# ----------------------------------------------------------------------------------------
# Their main.py saves the optimiser and scheduler state dicts next to the weights. Under
# the torch they used (1.12), OneCycleLR's state dict holds ``anneal_func``, a bound
# method, which pickles as getattr(<OneCycleLR object>, '_annealing_cos') and takes the
# whole scheduler and its Adam optimiser (with parameters) into the file. torch's
# weights-only loader refuses that. This unpickler reads such files without executing
# anything: a fixed table maps the few globals those objects need to tokens; tensors are
# rebuilt by our own code from validated arguments; optimiser/scheduler objects, getattr
# calls and `id` become inert :class:`PickledObject` records; any other global, and any
# attempt to call, build or extend something that is not one of those, is refused.

class PickledObject:
    """Inert stand-in for an object a checkpoint's pickle asked for (an optimiser, a
    scheduler, a bound method reduced as ``getattr(obj, name)``, ...).

    It records the global's dotted ``name``, the ``args`` it would have been called with
    and the ``state`` the pickle set on it. Nothing is imported or called to make it.
    """

    __slots__ = ("args", "name", "state")

    def __init__(self, name: str, args: tuple = (), state: Any = None) -> None:
        self.name, self.args, self.state = name, args, state

    def __repr__(self) -> str:
        return f"<not restored: {self.name}>"


class _Token:
    """What ``find_class`` returns for an allowed global (never the real object)."""

    __slots__ = ("dtype", "kind", "name")

    def __init__(self, name: str, kind: str, dtype: torch.dtype | None = None) -> None:
        self.name, self.kind, self.dtype = name, kind, dtype

    def __repr__(self) -> str:
        return f"<global {self.name}>"


class _Refused(Exception):
    """The pickle asks for something outside the allow-list (message: what)."""


class _Corrupt(Exception):
    """The bytes are not a consistent checkpoint (message: why)."""


#: Objects of the authors' optimisers and schedulers (and the builtins their pickles
#: use): recorded as :class:`PickledObject`, never created.
_INERT_GLOBALS = frozenset({
    "builtins.getattr",        # a bound method pickles as getattr(obj, name)
    "builtins.id",             # main.py stores the builtin id in every checkpoint
    "builtins.dict",           # the default factory of an optimiser's state defaultdict
    "torch.optim.adam.Adam",
    "torch.optim.sgd.SGD",
    "torch.optim.lr_scheduler.OneCycleLR",
    "torch.optim.lr_scheduler.MultiStepLR",
})
#: Plain containers, made as empty builtin dicts that the pickle then fills.
_CONTAINER_GLOBALS = {
    "collections.OrderedDict": "ordered_dict",
    "collections.defaultdict": "defaultdict",
    "collections.Counter": "counter",
}
#: Tensor rebuild functions, replaced by our own validated rebuild.
_REBUILD_GLOBALS = {
    "torch._utils._rebuild_tensor": "rebuild_tensor",
    "torch._utils._rebuild_tensor_v2": "rebuild_tensor",
    "torch._utils._rebuild_parameter": "rebuild_parameter",
}
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MAX_DIMS = 64


def _allowed_token(module: str, name: str) -> _Token:
    dotted = f"{module}.{name}"
    if dotted in _INERT_GLOBALS:
        return _Token(dotted, "inert")
    if dotted in _CONTAINER_GLOBALS:
        return _Token(dotted, _CONTAINER_GLOBALS[dotted])
    if dotted in _REBUILD_GLOBALS:
        return _Token(dotted, _REBUILD_GLOBALS[dotted])
    if module == "torch" and name in _STORAGE_DTYPES:
        return _Token(dotted, "storage", _STORAGE_DTYPES[name])
    raise _Refused(f"the pickle references {dotted}, which is not a tensor, a plain container "
                   "or a known optimiser/scheduler object")


class _Storage:
    """Bytes of one stored tensor storage (a uint8 tensor), filled now or later."""

    __slots__ = ("data", "dtype", "key", "numel")

    def __init__(self, key: str, dtype: torch.dtype, numel: int, data: torch.Tensor) -> None:
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, data


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > _MAX_DIMS or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise _Refused(f"a tensor rebuild with an invalid {what} ({type(value).__name__})")
    return value


def _rebuild_tensor(args: tuple) -> torch.Tensor:
    """Our version of torch._utils._rebuild_tensor(_v2): checks every argument, then views
    the storage's bytes as the tensor (no torch or pickle code path is called with file data)."""
    if len(args) == 4:
        storage, offset, size, stride = args
        extra: tuple = ()
    elif 6 <= len(args) <= 7:
        storage, offset, size, stride, requires_grad, hooks, *extra = args
        if not isinstance(requires_grad, bool):
            raise _Refused("a tensor rebuild with a non-boolean requires_grad")
        if type(hooks) not in (dict, collections.OrderedDict) or hooks:
            raise _Refused("a tensor rebuild with backward hooks")
        if extra and not (extra[0] is None or (type(extra[0]) in (dict, collections.OrderedDict)
                                                and not extra[0])):
            raise _Refused("a tensor rebuild with extra metadata")
    else:
        raise _Refused(f"a tensor rebuild with {len(args)} arguments")
    if not isinstance(storage, _Storage):
        raise _Refused(f"a tensor rebuild whose storage is a {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _Refused("a tensor rebuild with an invalid storage offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise _Refused("a tensor rebuild whose size and stride differ in length")
    needed = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > storage.numel:
        raise _Corrupt(f"a tensor of shape {size} needs {needed} elements of a storage of {storage.numel}")
    tensor = torch.empty((0,), dtype=storage.dtype)
    return tensor.set_(storage.data.untyped_storage(), offset, size, stride)


def _rebuild_parameter(args: tuple) -> torch.Tensor:
    if len(args) != 3:
        raise _Refused(f"a parameter rebuild with {len(args)} arguments")
    data, requires_grad, hooks = args
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise _Refused("a parameter rebuild whose data is not a tensor")
    if type(hooks) not in (dict, collections.OrderedDict) or hooks:
        raise _Refused("a parameter rebuild with backward hooks")
    return data  # the values are all we need; no Parameter is made


_U = pickle._Unpickler  # the pure-Python unpickler: every opcode is ours to check


class _RestrictedUnpickler(_U):
    """Unpickler whose globals, calls, object builds and container updates are restricted
    as described above. ``persistent_load`` is supplied per container format."""

    dispatch: ClassVar[dict[int, Any]] = dict(_U.dispatch)

    def __init__(self, file: Any, persistent_load: Any = None) -> None:
        super().__init__(file, encoding="utf-8")
        self.inert_names: set[str] = set()
        self._persistent_load = persistent_load

    # -- globals
    def find_class(self, module: str, name: str) -> _Token:
        if not isinstance(module, str) or not isinstance(name, str):
            raise _Refused("a global whose name is not text")
        if self.proto < 3:  # protocol 2 pickles name Python 3 builtins '__builtin__'
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        token = _allowed_token(module, name)
        if token.kind == "inert":
            self.inert_names.add(token.name)
        return token

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise _Refused("a persistent id outside a torch checkpoint")
        return self._persistent_load(pid)

    def _refuse_extension(self) -> None:
        raise _Refused("the pickle uses an extension code (copyreg registry)")

    dispatch[pickle.EXT1[0]] = dispatch[pickle.EXT2[0]] = dispatch[pickle.EXT4[0]] = _refuse_extension

    # -- calls
    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Token):
            raise _Refused(f"the pickle calls {func!r}, which is not a known global")
        if not isinstance(args, tuple):
            raise _Refused(f"a call of {func.name} without an argument tuple")
        kind = func.kind
        if kind == "inert":
            return PickledObject(func.name, args)
        if kind == "ordered_dict" or kind == "defaultdict":
            if kind == "ordered_dict" and args:
                raise _Refused(f"{func.name} called with arguments")
            if kind == "defaultdict":  # the default factory is dropped: a plain dict
                if len(args) > 1 or (args and not isinstance(args[0], (_Token, type(None)))):
                    raise _Refused(f"{func.name} called with unexpected arguments")
                return {}
            return collections.OrderedDict()
        if kind == "counter":
            if len(args) != 1 or type(args[0]) is not dict:
                raise _Refused(f"{func.name} called with unexpected arguments")
            return dict(args[0])
        if kind == "rebuild_tensor":
            return _rebuild_tensor(args)
        if kind == "rebuild_parameter":
            return _rebuild_parameter(args)
        raise _Refused(f"the pickle calls {func.name}")

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        stack[-1] = self._call(stack[-1], args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    # -- object creation (NEWOBJ, NEWOBJ_EX, OBJ, INST): inert records of known classes only
    def _new(self, cls: Any, args: Any) -> PickledObject:
        if not isinstance(cls, _Token) or cls.kind != "inert":
            raise _Refused(f"the pickle creates an object of {cls!r}")
        if not isinstance(args, tuple):
            raise _Refused(f"{cls.name} created without an argument tuple")
        return PickledObject(cls.name, args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if kwargs:
            raise _Refused("an object created with keyword arguments")
        self.append(self._new(cls, args))

    def _instantiate(self, klass: Any, args: list) -> None:
        self.append(self._new(klass, tuple(args)))

    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    # -- state and container updates: only on records and builtin containers
    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickledObject):
            inst.state = state
        elif type(inst) is collections.OrderedDict and isinstance(state, (dict, tuple)):
            pass  # a state dict's `_metadata` (module versions): not needed
        else:
            raise _Refused(f"the pickle sets the state of a {type(inst).__name__}")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target(list, "appends to").append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target(list, "appends to").extend(items)

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target((dict, collections.OrderedDict), "sets items of")[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict), "sets items of")
        if len(items) % 2:
            raise _Corrupt("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target(set, "adds to").update(items)

    def _target(self, kinds: Any, verb: str) -> Any:
        obj = self.stack[-1]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if type(obj) not in kinds:
            raise _Refused(f"the pickle {verb} a {type(obj).__name__}")
        return obj

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems


def _storage_pid(pid: Any) -> tuple[str, torch.dtype, int, Any]:
    """Check a torch storage persistent id; returns (key, dtype, numel, view_metadata)."""
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
        raise _Refused(f"an unknown persistent id ({type(pid).__name__})")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
        raise _Refused(f"a persistent id of kind {kind!r} (only tensor storages are read)")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _Token) or storage_type.kind != "storage":
        raise _Refused(f"a storage of type {storage_type!r}")
    key = key.decode("ascii") if isinstance(key, bytes) else key
    if not isinstance(key, str) or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise _Corrupt("a malformed storage reference")
    return key, storage_type.dtype, numel, (pid[5] if len(pid) == 6 else None)


def _restricted_load_zip(path: Path) -> tuple[Any, set[str]]:
    with zipfile.ZipFile(path) as zf:
        pkl_names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise _Corrupt("no data.pkl record (not a torch.save checkpoint; a TorchScript archive?)")
        prefix = pkl_names[0][: -len("data.pkl")]
        names = set(zf.namelist())
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise _Corrupt("a big-endian checkpoint (not supported)")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            key, dtype, numel, _ = _storage_pid(pid)
            if key in storages:
                if storages[key].dtype != dtype:
                    raise _Corrupt(f"storage {key} is read with two dtypes")
                return storages[key]
            try:
                info = zf.getinfo(f"{prefix}data/{key}")
            except KeyError:
                raise _Corrupt(f"missing tensor data record data/{key}") from None
            nbytes = numel * torch.empty((0,), dtype=dtype).element_size()
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
                raise _Corrupt(f"tensor data record data/{key} has {info.file_size} bytes, expected {nbytes}")
            data = torch.empty((nbytes,), dtype=torch.uint8)
            with zf.open(info) as fh:
                if nbytes and fh.readinto(data.numpy()) != nbytes:
                    raise _Corrupt(f"tensor data record data/{key} is short")
            storages[key] = _Storage(key, dtype, numel, data)
            return storages[key]

        info = zf.getinfo(pkl_names[0])
        if info.compress_type != zipfile.ZIP_STORED:
            raise _Corrupt("data.pkl is compressed (torch never writes that)")
        unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(info)), persistent_load)
        obj = unpickler.load()
    return obj, unpickler.inert_names


def _restricted_load_legacy(path: Path, size: int) -> tuple[Any, set[str]]:
    storages: dict[str, _Storage] = {}
    declared = [0]

    def persistent_load(pid: Any) -> _Storage:
        key, dtype, numel, view = _storage_pid(pid)
        if view is not None:
            raise _Refused("a storage view (not written by torch >= 1.0 for state dicts)")
        if key in storages:
            if storages[key].dtype != dtype:
                raise _Corrupt(f"storage {key} is read with two dtypes")
            return storages[key]
        nbytes = numel * torch.empty((0,), dtype=dtype).element_size()
        declared[0] += nbytes
        if declared[0] > size:
            raise _Corrupt("the pickle declares more tensor data than the file holds")
        storages[key] = _Storage(key, dtype, numel, torch.empty((nbytes,), dtype=torch.uint8))
        return storages[key]

    with open(path, "rb") as fh:
        head = [_RestrictedUnpickler(fh).load() for _ in range(3)]
        if type(head[0]) is not int or head[0] != _LEGACY_MAGIC or type(head[1]) is not int \
                or head[1] != 1001 or type(head[2]) is not dict:
            raise _Corrupt("not a torch checkpoint (no legacy torch.save header)")
        if head[2].get("little_endian") is not True:
            raise _Corrupt("a big-endian checkpoint (not supported)")
        unpickler = _RestrictedUnpickler(fh, persistent_load)
        obj = unpickler.load()
        keys = _RestrictedUnpickler(fh).load()
        if type(keys) is not list or not all(type(k) is str for k in keys) or sorted(keys) != sorted(storages):
            raise _Corrupt("the list of stored tensors does not match the pickle")
        for key in keys:  # each: int64 element count, then the raw little-endian bytes
            storage = storages[key]
            count = fh.read(8)
            if len(count) != 8 or int.from_bytes(count, "little", signed=True) != storage.numel:
                raise _Corrupt(f"tensor data of storage {key} is missing or has the wrong size")
            if storage.data.numel() and fh.readinto(storage.data.numpy()) != storage.data.numel():
                raise _Corrupt(f"tensor data of storage {key} is short")
    return obj, unpickler.inert_names


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _restricted_load(path: Path) -> tuple[Any, set[str]]:
    """Read a torch checkpoint with the restricted unpickler (see above).

    Returns the object and the names of the globals that became inert records.
    Raises CheckpointError: refused (with what), or unreadable.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            zipped = fh.read(4) == _ZIP_MAGIC
        return _restricted_load_zip(path) if zipped else _restricted_load_legacy(path, size)
    except _Refused as exc:
        raise _error(path, f"refused to load: {exc}; nothing in the file was run. If you trust the "
                           "file, extract its state dict in a separate trusted environment and save "
                           "it with torch.save or safetensors.") from None
    except MemoryError:
        raise _error(path, "not enough memory to read the checkpoint") from None
    except _Corrupt as exc:
        raise _error(path, f"not a readable torch checkpoint (truncated or corrupt?): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - EOF, bad opcodes, zip errors of a damaged file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _error(path, f"not a readable torch checkpoint (truncated or corrupt?): "
                           f"{type(exc).__name__}: {message[:300]}") from None


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
    not_restored: set[str] = set()
    try:
        obj = _torch_load_weights_only(path)
    except MemoryError:
        raise _error(path, "not enough memory to read the checkpoint") from None
    except Exception:  # noqa: BLE001 - refused or unreadable: the restricted reader decides
        # The authors' full checkpoints (optimiser and scheduler objects next to the
        # weights) are refused by torch; read them with the restricted unpickler, whose
        # verdict (refused, naming the global, or unreadable) is the one reported.
        obj, not_restored = _restricted_load(path)
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
# Backbone initialisation from a torchvision-layout ResNet-18 state dict
# ----------------------------------------------------------------------------------------
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
    size = _check_file(path, max_bytes)
    if _sniff(path, size) == "safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except MemoryError:
            raise _error(path, "not enough memory to read the file") from None
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError of a damaged file
            raise _error(path, f"not a valid safetensors file (truncated or corrupt?): "
                               f"{type(exc).__name__}: {str(exc)[:300]}") from None
    else:
        try:
            obj = _torch_load_weights_only(path)
        except MemoryError:
            raise _error(path, "not enough memory to read the file") from None
        except Exception as exc:  # noqa: BLE001 - refused (non-data objects) or unreadable
            detail = str(exc).strip().splitlines()
            unsafe = next((line.strip() for line in detail if "GLOBAL" in line or "global" in line), "")
            raise _error(path, "refused or unreadable: a backbone file must be a plain state dict that "
                               "torch.load(weights_only=True) reads (or a safetensors file)"
                               + (f" ({unsafe[:200]})" if unsafe else f" ({type(exc).__name__})")) from None
    if isinstance(obj, Mapping) and "conv1.weight" not in obj and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise _error(path, f"expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    if any(not isinstance(k, str) for k in obj):
        raise _error(path, "the state dict has non-string keys")
    names = {torchvision_key(k): k for k in trunk.state_dict()}  # torchvision name -> ours
    state = {k: v for k, v in obj.items() if not k.startswith("fc.")}
    problems = _key_problems(names, state)
    if problems:
        if any(k.startswith(("stem_conv.", "stages.")) for k in state):
            problems += " (these are napari-mran's trunk names; rename them with torchvision_key)"
        raise _error(path, f"not a torchvision-layout ResNet-18 state dict for this trunk: {problems}")
    ours = {names[k]: v for k, v in state.items()}
    try:
        _check_and_load(trunk, ours, path, display={v: k for k, v in names.items()})
    except CheckpointError as exc:
        reason = exc.reason  # type: ignore[attr-defined]
        if "shape mismatch" in reason:
            width = trunk.widths[0] / 64
            reason += (f" (this model has width {width:g}, stage widths {trunk.widths}; "
                       "ResNet-18 weights fit width 1 only)")
        raise _error(path, reason) from None
    return sha256_of(path)


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

