"""Saving and loading MRAN checkpoints: the public ``load_model`` / ``save_model`` API.

Our format ("napari-mran", version 1) is a single ``.safetensors`` file: the
model's ``state_dict`` (our module names) as tensors, and string metadata

* ``format``: ``"napari-mran"``
* ``format_version``: ``"1"``
* ``mran_config``: :meth:`MRANConfig.to_json` text;
* ``stain_reference`` (only for a model trained with stain normalisation): JSON
  ``{"method": "macenko" | "reinhard", "reference": StainReference.to_dict()}``, the
  training cohort's stain reference; loaded as ``model.stain_reference`` (None without).

:func:`load_model` also reads the authors' reference checkpoints (torch pickles, or
reference-named safetensors state dicts), detected from the file's content; see
:mod:`napari_mran.model.reference` (key mapping and import),
:mod:`napari_mran.model._torch_archive` and :mod:`napari_mran.model._unpickler`
(reading torch pickles without running them).  Never with ``weights_only=False``.
The weights are checked (keys, shapes, finiteness) before any is copied
(:mod:`napari_mran.model._checks`).

:func:`init_backbone_from` (:mod:`napari_mran.model.backbone`) loads a
torchvision-layout ResNet-18 state dict into the trunk; it and the other names of
``__all__`` stay importable from here.

Every problem is raised as :class:`napari_mran.errors.CheckpointError` with a message
``"<file>: <reason>"``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

import torch

from napari_mran.errors import CheckpointError, OutputExistsError
from napari_mran.model._checks import (DEFAULT_MAX_BYTES, check_and_load, check_file,
                                       checkpoint_error, listing, reason_of, sha256_of,
                                       sniff_format)
from napari_mran.model._unpickler import PickledObject
from napari_mran.model.backbone import init_backbone_from, torchvision_key
from napari_mran.model.mran import MRAN, MRANConfig
from napari_mran.model.reference import (load_reference_pickle, model_from_reference_state,
                                         reference_key)

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
#: Where ``load_model("demo")`` looks.
DEMO_MODEL_PATH = Path(__file__).resolve().parent.parent / "data" / "demo_model.safetensors"


def _load_safetensors(path: Path) -> MRAN:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except MemoryError:
        raise checkpoint_error(path, "not enough memory to read the checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... of a damaged file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise checkpoint_error(path, f"not a valid safetensors file (truncated or corrupt?): {type(exc).__name__}: "
                               f"{message[:300]}") from None

    if "format" not in metadata and "mran_config" not in metadata:
        # A plain safetensors state dict: accept it if it is a reference-named MRAN state dict.
        provenance = {"imported_from": {"file": path.name, "sha256": sha256_of(path),
                                        "format": "reference state dict (safetensors)", "state_dict": "<top level>"}}
        try:
            return model_from_reference_state(state, path, provenance)
        except CheckpointError as exc:
            raise checkpoint_error(path, f"safetensors file without napari-mran metadata, and not a reference MRAN "
                                   f"state dict either ({reason_of(exc)})") from None

    fmt = metadata.get("format")
    if fmt != FORMAT_NAME:
        raise checkpoint_error(path, f"bad metadata: 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        newer = isinstance(version, str) and version.isdigit() and int(version) > FORMAT_VERSION
        raise checkpoint_error(path, f"bad metadata: format_version {version!r} "
                               + ("is newer than this napari-mran understands (1); please upgrade" if newer
                                  else f"is not supported (expected '{FORMAT_VERSION}')"))
    text = metadata.get("mran_config")
    if text is None:
        raise checkpoint_error(path, "bad metadata: no 'mran_config' entry")
    try:
        config = MRANConfig.from_json(text)
    except ValueError as exc:
        raise checkpoint_error(path, f"bad metadata: invalid mran_config: {exc}") from None
    model = MRAN(config)
    check_and_load(model, state, path, display={})
    # setattr: MRAN does not annotate this attribute (nn.Module's __setattr__ types)
    setattr(model, "stain_reference", _stain_metadata(path, metadata.get("stain_reference")))
    return model


#: the normalisation methods a checkpoint's stain reference may name
_STAIN_METHODS = ("macenko", "reinhard")


def _checked_stain(value: object) -> str | None:
    """Why ``value`` is not a ``{"method", "reference"}`` stain document (None if it is);
    the reference itself is checked where it is used (napari_mran.stain)."""
    if not isinstance(value, dict):
        return f"not a JSON object ({type(value).__name__})"
    if value.get("method") not in _STAIN_METHODS:
        return f"method {value.get('method')!r} is not one of {', '.join(_STAIN_METHODS)}"
    if not isinstance(value.get("reference"), dict):
        return "no 'reference' object"
    if value["reference"].get("method") != value["method"]:
        return "its reference is of another method"
    return None


def _stain_metadata(path: Path, text: str | None) -> dict | None:
    """``model.stain_reference`` from the ``stain_reference`` metadata (None without)."""
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise checkpoint_error(path, f"bad metadata: stain_reference is not JSON: {exc}") from None
    problem = _checked_stain(value)
    if problem:
        raise checkpoint_error(path, f"bad metadata: invalid stain_reference: {problem}")
    return value


def _resolve(path_or_name: str | os.PathLike[str]) -> Path:
    if isinstance(path_or_name, str) and path_or_name == "demo":
        if not DEMO_MODEL_PATH.is_file():
            raise checkpoint_error("demo", f"the demo model is not bundled with this installation (expected {DEMO_MODEL_PATH})")
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
        The model in eval mode on the CPU, with ``checkpoint_path``,
        ``checkpoint_sha256`` and ``stain_reference`` (a dict, or None) attributes. For a reference import the config's
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
    size = check_file(path, max_bytes)
    if sniff_format(path, size) == "safetensors":
        model = _load_safetensors(path)
    else:
        model = load_reference_pickle(path, which)
    # where the weights came from, for the provenance of every result made with them
    model.checkpoint_path = str(path)
    model.checkpoint_sha256 = sha256_of(path)
    model.is_demo = str(path_or_name) == "demo"
    # the training cohort's stain reference ({"method", "reference"}), None without
    setattr(model, "stain_reference", getattr(model, "stain_reference", None))
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
        raise checkpoint_error(path, "is a directory; give a file name to save the model to")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass overwrite=True to replace it")
    folder = path.parent
    if not folder.is_dir():
        raise checkpoint_error(path, f"cannot save: folder {folder} does not exist")

    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    non_finite = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise checkpoint_error(path, f"refusing to save non-finite (NaN/Inf) weights in: {listing(non_finite)}")
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "mran_config": model.config.to_json()}
    stain = getattr(model, "stain_reference", None)
    if stain is not None:
        import json

        problem = _checked_stain(stain)
        if problem:
            raise checkpoint_error(path, f"refusing to save an invalid stain_reference: {problem}")
        metadata["stain_reference"] = json.dumps(stain, sort_keys=True, allow_nan=False)

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise checkpoint_error(path, f"cannot write to {folder}: {exc.strerror or exc}") from None
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
            raise checkpoint_error(path, f"cannot write the checkpoint: {exc.strerror or exc}") from None
        raise
    return path

