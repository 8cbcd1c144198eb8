"""The restricted unpickler for the authors' full training checkpoints.

Their main.py saves the optimiser and scheduler state dicts next to the weights. Under
the torch they used (1.12), OneCycleLR's state dict holds ``anneal_func``, a bound
method, which pickles as getattr(<OneCycleLR object>, '_annealing_cos') and takes the
whole scheduler and its Adam optimiser (with parameters) into the file. torch's
weights-only loader refuses that. This unpickler reads such files without executing
anything: a fixed table maps the few globals those objects need to tokens; tensors are
rebuilt by our own code from validated arguments; optimiser/scheduler objects, getattr
calls and `id` become inert :class:`PickledObject` records; any other global, and any
attempt to call, build or extend something that is not one of those, is refused.

The container formats (zip and legacy ``torch.save`` files) are read by
:mod:`napari_mran.model._torch_archive`, which feeds the pickles to this unpickler.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
from collections.abc import Callable
from typing import Any, ClassVar

import torch

__all__ = ["Corrupt", "PickledObject", "Refused", "RestrictedUnpickler", "Storage", "Token"]


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


class Token:
    """What ``find_class`` returns for an allowed global (never the real object)."""

    __slots__ = ("dtype", "kind", "name")

    def __init__(self, name: str, kind: str, dtype: torch.dtype | None = None) -> None:
        self.name, self.kind, self.dtype = name, kind, dtype

    def __repr__(self) -> str:
        return f"<global {self.name}>"


class Refused(Exception):
    """The pickle asks for something outside the allow-list (message: what)."""


class Corrupt(Exception):
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


def _allowed_token(module: str, name: str) -> Token:
    dotted = f"{module}.{name}"
    if dotted in _INERT_GLOBALS:
        return Token(dotted, "inert")
    if dotted in _CONTAINER_GLOBALS:
        return Token(dotted, _CONTAINER_GLOBALS[dotted])
    if dotted in _REBUILD_GLOBALS:
        return Token(dotted, _REBUILD_GLOBALS[dotted])
    if module == "torch" and name in _STORAGE_DTYPES:
        return Token(dotted, "storage", _STORAGE_DTYPES[name])
    raise Refused(f"the pickle references {dotted}, which is not a tensor, a plain container "
                   "or a known optimiser/scheduler object")


class Storage:
    """Bytes of one stored tensor storage (a uint8 tensor), filled now or later."""

    __slots__ = ("data", "dtype", "key", "numel")

    def __init__(self, key: str, dtype: torch.dtype, numel: int, data: torch.Tensor) -> None:
        self.key, self.dtype, self.numel, self.data = key, dtype, numel, data


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > _MAX_DIMS or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise Refused(f"a tensor rebuild with an invalid {what} ({type(value).__name__})")
    return value


def _rebuild_tensor(args: tuple) -> torch.Tensor:
    """Our version of torch._utils._rebuild_tensor(_v2): checks every argument, then views
    the storage's bytes as the tensor (no torch or pickle code path is called with file data)."""
    extra: list[Any] = []
    if len(args) == 4:
        storage, offset, size, stride = args
    elif 6 <= len(args) <= 7:
        storage, offset, size, stride, requires_grad, hooks, *extra = args
        if not isinstance(requires_grad, bool):
            raise Refused("a tensor rebuild with a non-boolean requires_grad")
        if type(hooks) not in (dict, collections.OrderedDict) or hooks:
            raise Refused("a tensor rebuild with backward hooks")
        if extra and not (extra[0] is None or (type(extra[0]) in (dict, collections.OrderedDict)
                                                and not extra[0])):
            raise Refused("a tensor rebuild with extra metadata")
    else:
        raise Refused(f"a tensor rebuild with {len(args)} arguments")
    if not isinstance(storage, Storage):
        raise Refused(f"a tensor rebuild whose storage is a {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise Refused("a tensor rebuild with an invalid storage offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise Refused("a tensor rebuild whose size and stride differ in length")
    needed = 0 if 0 in size else offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > storage.numel:
        raise Corrupt(f"a tensor of shape {size} needs {needed} elements of a storage of {storage.numel}")
    tensor = torch.empty((0,), dtype=storage.dtype)
    return tensor.set_(storage.data.untyped_storage(), offset, size, stride)


def _rebuild_parameter(args: tuple) -> torch.Tensor:
    if len(args) != 3:
        raise Refused(f"a parameter rebuild with {len(args)} arguments")
    data, requires_grad, hooks = args
    if not isinstance(data, torch.Tensor) or not isinstance(requires_grad, bool):
        raise Refused("a parameter rebuild whose data is not a tensor")
    if type(hooks) not in (dict, collections.OrderedDict) or hooks:
        raise Refused("a parameter rebuild with backward hooks")
    return data  # the values are all we need; no Parameter is made


_U = pickle._Unpickler  # the pure-Python unpickler: every opcode is ours to check


class RestrictedUnpickler(_U):
    """Unpickler whose globals, calls, object builds and container updates are restricted
    as described above. ``persistent_load`` is supplied per container format."""

    dispatch: ClassVar[dict[int, Any]] = dict(_U.dispatch)
    # attributes of pickle._Unpickler that typeshed does not declare (annotations only)
    proto: int
    stack: list[Any]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, file: Any, persistent_load: Any = None) -> None:
        super().__init__(file, encoding="utf-8")
        self.inert_names: set[str] = set()
        self._persistent_load = persistent_load

    # -- globals
    def find_class(self, module: str, name: str) -> Token:
        if not isinstance(module, str) or not isinstance(name, str):
            raise Refused("a global whose name is not text")
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
            raise Refused("a persistent id outside a torch checkpoint")
        return self._persistent_load(pid)

    def _refuse_extension(self) -> None:
        raise Refused("the pickle uses an extension code (copyreg registry)")

    dispatch[pickle.EXT1[0]] = dispatch[pickle.EXT2[0]] = dispatch[pickle.EXT4[0]] = _refuse_extension

    # -- calls
    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, Token):
            raise Refused(f"the pickle calls {func!r}, which is not a known global")
        if not isinstance(args, tuple):
            raise Refused(f"a call of {func.name} without an argument tuple")
        kind = func.kind
        if kind == "inert":
            return PickledObject(func.name, args)
        if kind == "ordered_dict" or kind == "defaultdict":
            if kind == "ordered_dict" and args:
                raise Refused(f"{func.name} called with arguments")
            if kind == "defaultdict":  # the default factory is dropped: a plain dict
                if len(args) > 1 or (args and not isinstance(args[0], (Token, type(None)))):
                    raise Refused(f"{func.name} called with unexpected arguments")
                return {}
            return collections.OrderedDict()
        if kind == "counter":
            if len(args) != 1 or type(args[0]) is not dict:
                raise Refused(f"{func.name} called with unexpected arguments")
            return dict(args[0])
        if kind == "rebuild_tensor":
            return _rebuild_tensor(args)
        if kind == "rebuild_parameter":
            return _rebuild_parameter(args)
        raise Refused(f"the pickle calls {func.name}")

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        stack[-1] = self._call(stack[-1], args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    # -- object creation (NEWOBJ, NEWOBJ_EX, OBJ, INST): inert records of known classes only
    def _new(self, cls: Any, args: Any) -> PickledObject:
        if not isinstance(cls, Token) or cls.kind != "inert":
            raise Refused(f"the pickle creates an object of {cls!r}")
        if not isinstance(args, tuple):
            raise Refused(f"{cls.name} created without an argument tuple")
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
            raise Refused("an object created with keyword arguments")
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
            raise Refused(f"the pickle sets the state of a {type(inst).__name__}")

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
            raise Corrupt("SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target(set, "adds to").update(items)

    def _target(self, kinds: Any, verb: str) -> Any:
        obj = self.stack[-1]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if type(obj) not in kinds:
            raise Refused(f"the pickle {verb} a {type(obj).__name__}")
        return obj

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.ADDITEMS[0]] = load_additems

