"""Predict many slides: one results store per slide, a predictions table, on dask.distributed.

``predict_cohort(slides, model_path, out_dir, ...)`` is a generator of
:class:`CohortEvent` (one per finished slide) returning a summary dict.  The CLI
(``napari-mran predict``) renders the events; tests drain them.

Output folder (docs/cli.md)::

    <out>/<slide stem>.mran.zarr   one verified results store per slide
    <out>/predictions.csv          one row per slide of this run (strict, formula-safe)
    <out>/mran-cohort.json         what made the stores (model sha256, options, slides)
    <out>/.napari-mran.lock        held while a run uses the folder

Rules (docs/reliability.md rows 11, 15, 16, 17, 20, 22, 24):

- a slide is skipped only when its store is verified complete (:func:`verify_store`:
  completion marker and the checksum of every array) *and* was made by the same
  model file (sha256), the same analysis options and the same slide file; never on
  mere existence.  A store of ours that fails verification is moved aside (renamed
  ``*.invalid-<time>``, never deleted) and the slide analysed again.  A valid store
  made differently is replaced only with ``overwrite=True``.
- anything at an output name that is not ours (a file, a foreign folder, a
  ``predictions.csv`` without our ``mran-cohort.json``) makes the run refuse before
  any computation; it is never deleted.
- a lock file makes a second run on the same folder refuse while the first runs.
- a failing slide is recorded (error class + message) and the others go on.
- every store is written atomically by the worker that computed it, so an
  interrupted run leaves only complete stores (at worst a hidden ``.partial-``
  folder); the next run skips them, giving the same results as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, MRANError, OutputExistsError, ResultsError

__all__ = [
    "CohortError",
    "CohortEvent",
    "OutputLock",
    "SLIDE_EXTENSIONS",
    "analysis_options",
    "expand_slides",
    "find_store",
    "predict_cohort",
    "slide_fingerprint",
    "store_names",
    "store_status",
]

STORE_SUFFIX = ".mran.zarr"
PREDICTIONS_NAME = "predictions.csv"
MANIFEST_NAME = "mran-cohort.json"
MANIFEST_FORMAT = "napari-mran-cohort"
MANIFEST_VERSION = 1
LOCK_NAME = ".napari-mran.lock"
COHORT_KEY = "cohort"  # provenance block written into every store made here

#: File name endings taken from a folder given in the slide list.
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif",
                    ".svslide", ".dcm", ".qptiff", ".btf")

# Analysis options that change the stored numbers (part of the "same options" check).
# Device, batch size, decode threads and compile change them at float tolerance only.
_KEY_OPTIONS = ("bag_px", "bag_um", "tissue_method", "tissue_options", "top_k_patches", "amp",
                "mpp", "edge")


class CohortError(MRANError):
    """The cohort run cannot start (bad slide list, unreachable scheduler, ...)."""


@dataclass
class CohortEvent:
    """One progress event of :func:`predict_cohort`."""

    stage: str                      # "plan" (after checks), "slide" (one finished), "done"
    index: int | None = None        # position of the slide in the run's list
    slide: str | None = None
    status: str | None = None       # "skipped", "done", "failed"
    done: int = 0                   # slides finished so far (any status)
    total: int = 0
    failed: int = 0
    skipped: int = 0
    message: str = ""
    record: dict[str, Any] | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


# --------------------------------------------------------------------------- small helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied or read-only location"
    return exc.strerror or str(exc)


def _json_normal(obj: Any) -> Any:
    from .results import strict_json

    clean, _ = strict_json(obj)
    return json.loads(json.dumps(clean, sort_keys=True, allow_nan=False))


def analysis_options(**options: Any) -> dict[str, Any]:
    """The result-affecting analysis options in a canonical, JSON-comparable form."""
    unknown = sorted(set(options) - set(_KEY_OPTIONS))
    if unknown:
        raise TypeError(f"not result-affecting analysis options: {unknown}")
    base = {"bag_px": None, "bag_um": None, "tissue_method": "reference", "tissue_options": {},
            "top_k_patches": None, "amp": "auto", "mpp": None, "edge": "pad"}
    base.update({k: v for k, v in options.items()})
    if base["tissue_options"] is None:
        base["tissue_options"] = {}
    if isinstance(base["mpp"], (list, tuple)):
        base["mpp"] = [float(v) for v in base["mpp"]]
    return _json_normal(base)


def expand_slides(slides: Iterable[str | os.PathLike]) -> list[str]:
    """Absolute slide paths in order; a folder contributes its slide files (sorted,
    not recursive).  Duplicates are dropped.  CohortError names every missing path."""
    if isinstance(slides, (str, os.PathLike)):
        slides = [slides]
    out: list[str] = []
    missing: list[str] = []
    for item in slides:
        p = Path(item).expanduser()
        if p.is_dir() and p.suffix.lower() not in SLIDE_EXTENSIONS:
            found = sorted(q for q in p.iterdir()
                           if q.is_file() and not q.name.startswith(".")
                           and q.name.lower().endswith(SLIDE_EXTENSIONS))
            if not found:
                raise CohortError(f"{p}: folder holds no slide files "
                                  f"({', '.join(SLIDE_EXTENSIONS)})")
            out.extend(os.path.abspath(q) for q in found)
        elif os.path.lexists(p):
            out.append(os.path.abspath(p))
        else:
            missing.append(str(p))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        shown = ", ".join(missing[:5]) + more
        raise CohortError(f"slide not found: {shown}")
    if not out:
        raise CohortError("no slides were given")
    return list(dict.fromkeys(out))


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/\\"))
    lower = name.lower()
    for double in (".ome.tiff", ".ome.tif"):
        if lower.endswith(double):
            return name[: -len(double)] or "slide"
    stem = os.path.splitext(name)[0]
    return stem or name or "slide"


def store_names(slides: Sequence[str]) -> list[str]:
    """``<stem>.mran.zarr`` per slide; stems shared by several slides (compared
    case-insensitively) get ``-<8 hex of the absolute path's sha1>`` so that the name
    does not depend on the order or on the other slides' names."""
    stems = [_stem(s) for s in slides]
    counts = Counter(s.casefold() for s in stems)
    names = []
    for path, stem in zip(slides, stems):
        if counts[stem.casefold()] > 1:
            digest = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape"))
            stem = f"{stem}-{digest.hexdigest()[:8]}"
        names.append(stem + STORE_SUFFIX)
    return names


def slide_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"name", "bytes", "sha256_first_mb"}`` of a slide file (what analysis records)."""
    from .slide import file_fingerprint

    path = os.fspath(path)
    try:
        size, head = file_fingerprint(path)
    except OSError as exc:
        return {"name": os.path.basename(path), "bytes": None, "sha256_first_mb": None,
                "error": _os_reason(exc)}
    return {"name": os.path.basename(path), "bytes": size, "sha256_first_mb": head}


# --------------------------------------------------------------------------- store checks


def _store_attrs(store: Path) -> dict[str, Any] | None:
    """The attributes of a folder's zarr.json when it claims to be one of our stores."""
    from .results import ATTRS_KEY, RESULTS_FORMAT

    try:
        meta = json.loads((store / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict):
        return None
    own = attrs.get(ATTRS_KEY)
    if not isinstance(own, dict) or own.get("format") != RESULTS_FORMAT:
        return None
    return attrs


def store_status(store: str | os.PathLike, *, model_sha256: str | None,
                 options: dict[str, Any] | None, slide: str | os.PathLike | None
                 ) -> tuple[str, str]:
    """Classify an output name: ``(status, reason)``.

    ``missing``: nothing there.  ``foreign``: something that is not one of our stores
    (never touched).  ``invalid``: one of our stores that fails verification (partial,
    corrupt, modified).  ``different``: a verified store made by another model, with
    other options (when *options* is given) or from another slide file.  ``valid``:
    verified and made the same way (safe to skip).
    """
    from .results import verify_store

    store = Path(store)
    if not os.path.lexists(store):
        return "missing", ""
    if store.is_symlink() or not store.is_dir():
        return "foreign", "exists and is not a results store folder"
    attrs = _store_attrs(store)
    if attrs is None:
        return "foreign", "exists and is not a napari-mran results store"
    reason = verify_store(store)
    if reason is not None:
        return "invalid", reason
    prov = attrs.get("provenance") if isinstance(attrs.get("provenance"), dict) else {}
    block = prov.get(COHORT_KEY)
    model_prov = prov.get("model") if isinstance(prov.get("model"), dict) else {}
    stored_sha = (block or {}).get("model_sha256") or model_prov.get("sha256")
    if model_sha256 is None or stored_sha != model_sha256:
        shown = (stored_sha or "unknown")[:12]
        return "different", f"was made by another model (sha256 {shown}...)"
    if options is not None:
        if not isinstance(block, dict):
            return "different", "was not made by napari-mran predict (its options are not recorded)"
        if block.get("options") != options:
            theirs = block.get("options") or {}
            diff = sorted(k for k in set(theirs) | set(options) if theirs.get(k) != options.get(k))
            return "different", f"was made with other analysis options ({', '.join(diff)})"
    if slide is not None:
        fp = slide_fingerprint(slide)
        sp = prov.get("slide") if isinstance(prov.get("slide"), dict) else {}
        if (fp["bytes"] is None or sp.get("bytes") != fp["bytes"]
                or sp.get("sha256_first_mb") != fp["sha256_first_mb"]):
            return "different", "was made from a different slide file (size or content differ)"
    return "valid", ""


def find_store(results_dir: str | os.PathLike, slide: str | os.PathLike) -> Path | None:
    """The store of *slide* in a folder written by :func:`predict_cohort` (its manifest
    first, then ``<stem>.mran.zarr``), or None.  The store is not verified here."""
    folder = Path(results_dir)
    abspath = os.path.abspath(slide)
    manifest = _read_manifest(folder)
    if manifest is not None:
        for entry in manifest.get("slides", []):
            if isinstance(entry, dict) and entry.get("abspath") == abspath:
                name = entry.get("store")
                if isinstance(name, str) and "/" not in name and "\\" not in name:
                    return folder / name
    candidate = folder / (_stem(abspath) + STORE_SUFFIX)
    return candidate if os.path.lexists(candidate) else None


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """Our manifest, None when absent; CohortError-free: a foreign file gives {}."""
    path = folder / MANIFEST_NAME
    if not os.path.lexists(path):
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return {}
    return data


def _set_aside(store: Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    target = store.with_name(f"{store.name}.invalid-{stamp}-{secrets.token_hex(2)}")
    os.rename(store, target)
    return target


# --------------------------------------------------------------------------- lock


class OutputLock:
    """An exclusive lock on an output folder (``<folder>/.napari-mran.lock``).

    POSIX: ``flock`` on the lock file, so a crashed (even SIGKILLed) run never leaves a
    stale lock; the file is removed on release.  Elsewhere: exclusive creation of the
    file (a stale file after a crash must then be deleted by hand; the message says so).
    Locks may not work across hosts on some network file systems.
    """

    def __init__(self, folder: str | os.PathLike, purpose: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose
        self._fd: int | None = None

    def _info(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": _now(), "purpose": self.purpose})

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return (f"{info.get('purpose', 'run')} pid {info.get('pid')} on "
                    f"{info.get('host')} since {info.get('started')}")
        except (OSError, ValueError, AttributeError):
            return "another process"

    def _refuse(self) -> OutputExistsError:
        return OutputExistsError(
            f"{self.folder}: this output folder is in use by another napari-mran run "
            f"({self._holder()}); wait for it to finish or choose another output folder")

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_exclusive_create()
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ResultsError(f"{self.folder}: cannot write in the output folder: "
                                   f"{_os_reason(exc)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refuse() from None
                raise ResultsError(f"{self.path}: cannot lock: {_os_reason(exc)}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed by its holder meanwhile: try again
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, self._info().encode())
            except OSError as exc:
                os.close(fd)
                raise ResultsError(f"{self.path}: cannot write: {_os_reason(exc)}") from None
            self._fd = fd
            return self
        raise self._refuse()

    def _acquire_exclusive_create(self) -> OutputLock:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            err = self._refuse()
            raise OutputExistsError(f"{err} (if no run is active, delete {self.path})") from None
        except OSError as exc:
            raise ResultsError(f"{self.folder}: cannot write in the output folder: "
                               f"{_os_reason(exc)}") from None
        os.write(fd, self._info().encode())
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding the lock
        with contextlib.suppress(OSError):
            os.close(fd)  # closing releases the flock

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create *out_dir* (and parents) if needed; ResultsError if it cannot be used."""
    out = Path(out_dir).expanduser()
    if os.path.lexists(out) and not out.is_dir():
        raise ResultsError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"{out}: cannot create the output folder: {_os_reason(exc)}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ResultsError(f"{out}: cannot write in the output folder: permission denied "
                           "or read-only location")
    return out.resolve()


# --------------------------------------------------------------------------- the task

_MODEL_CACHE: dict[tuple[str, str], Any] = {}
_MODEL_LOCK = threading.Lock()


def resolve_model_path(model: str | os.PathLike) -> tuple[str, bool]:
    """``(absolute checkpoint path, is the bundled demo model)`` of a ``--model`` value;
    ``"demo"`` names the bundled synthetic demo model.  CheckpointError when missing."""
    from .model import DEMO_MODEL_PATH

    if isinstance(model, str) and model == "demo":
        if not DEMO_MODEL_PATH.is_file():
            raise CheckpointError(f"{DEMO_MODEL_PATH}: the demo model is not bundled with "
                                  "this installation")
        return str(DEMO_MODEL_PATH), True
    path = os.path.abspath(os.fspath(Path(model).expanduser()))
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    return path, os.path.realpath(path) == os.path.realpath(DEMO_MODEL_PATH)


def _cached_model(model_path: str, sha256: str):
    """Load the checkpoint once per process (the worker's cache), checking its sha256."""
    key = (model_path, sha256)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            from .model import load_model, sha256_of

            actual = sha256_of(model_path)
            if actual != sha256:
                raise CheckpointError(f"{model_path}: the model file changed during the run "
                                      f"(sha256 {actual[:12]}..., expected {sha256[:12]}...)")
            model = load_model(model_path)
            model.checkpoint_sha256 = sha256
            model.checkpoint_path = model_path
            model.is_demo = resolve_model_path(model_path)[1]
            _MODEL_CACHE.clear()
            _MODEL_CACHE[key] = model
        return model


def dask_setup(worker: Any = None) -> None:
    """Worker preload hook (``LocalCluster(preload=["napari_mran.cohort"])``): ignore SIGINT.

    A Ctrl-C in a terminal reaches every process of the foreground group, local dask
    workers included; they would die with tracebacks in the middle of a write.  The
    client handles the interrupt (cancels pending tasks, closes the cluster)."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_device(device: str) -> str:
    """On a worker of a multi-GPU machine, spread workers over the GPUs by worker name."""
    if device not in ("auto", "cuda", "gpu"):
        return device
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no CUDA runtime: let the analysis decide
        return device
    if count <= 1:
        return device
    try:
        from distributed import get_worker

        index = int(get_worker().name)
    except Exception:  # noqa: BLE001 - not on a worker, or a non-integer worker name
        return device
    return f"cuda:{index % count}"


def _predict_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Analyse one slide and save its store (runs in a worker process, or in-process).

    Never raises for a slide-level failure: returns a record with ``status`` ``done``
    or ``failed`` (error class + message).  Exceptions of our package are not always
    picklable, so they never cross the process boundary.
    """
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"index": spec["index"], "slide": spec["slide"], "store": spec["store"],
                           "status": "failed", "slide_probs": None, "n_bags": None,
                           "failed_bags": None, "degraded": None, "error": None, "message": None,
                           "seconds": None, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        threads = spec.get("torch_threads")
        if threads:
            import torch

            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        model = _cached_model(spec["model_path"], spec["model_sha256"])
        from .analysis import predict_slide
        from .slide import open_slide

        opts = dict(spec["analysis"])
        opts["device"] = _worker_device(opts.get("device", "auto"))
        mpp = opts.pop("mpp", None)
        with open_slide(spec["slide"], mpp=mpp) as slide:
            result = predict_slide(slide, model, **opts)
        if not spec.get("save_embeddings", True):
            result.embeddings = None
        provenance = dict(result.provenance)
        provenance[COHORT_KEY] = spec["cohort_block"]
        result.provenance = _json_normal(provenance)
        result.save(spec["store_path"], overwrite=bool(spec.get("replace")))
        rec.update(status="done", slide_probs=[float(p) for p in result.slide_probs],
                   n_bags=result.n_bags, failed_bags=int(len(result.failed_boxes)),
                   degraded=bool(result.degraded))
    except MRANError as exc:
        rec.update(error=type(exc).__name__, message=str(exc))
    except MemoryError:
        rec.update(error="MemoryError", message="out of memory while analysing the slide")
    except Exception as exc:  # noqa: BLE001 - one slide's bug must not stop the cohort
        rec.update(error=type(exc).__name__, message=str(exc) or repr(exc),
                   traceback=traceback.format_exc(limit=20))
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


# --------------------------------------------------------------------------- executors


def _run_in_process(specs: list[dict[str, Any]]) -> Generator[dict[str, Any], None, None]:
    for spec in specs:
        yield _predict_task(spec)


def _run_distributed(specs: list[dict[str, Any]], *, workers: int, scheduler: Any,
                     resources: dict[str, float] | None, info: dict[str, Any]
                     ) -> Generator[dict[str, Any], None, None]:
    from distributed import Client, LocalCluster, as_completed

    cluster = client = None
    own_client = True
    futures: dict[Any, dict[str, Any]] = {}
    try:
        if scheduler is None:
            try:
                # preload: workers ignore Ctrl-C (the terminal sends it to the whole process
                # group); the client cancels the work and closes the cluster instead
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR,
                                       preload=["napari_mran.cohort"])
            except Exception as exc:  # noqa: BLE001 - many causes, one message
                cause = exc.__cause__ or exc
                raise CohortError(
                    f"cannot start a local dask cluster of {workers} worker processes "
                    f"({type(cause).__name__}: {cause}); a script that calls predict_cohort "
                    "must guard its top level with `if __name__ == '__main__':` (workers "
                    "are spawned), or use workers=1 to run in this process") from None
            client = Client(cluster)
            info["cluster"] = f"LocalCluster({workers} processes x 1 thread)"
        elif isinstance(scheduler, str):
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise CohortError(f"cannot connect to the dask scheduler {scheduler}: "
                                  f"{type(exc).__name__}: {exc}") from None
            info["cluster"] = f"scheduler {scheduler}"
        else:  # an existing distributed.Client
            client, own_client = scheduler, False
            info["cluster"] = f"client {getattr(scheduler, 'scheduler', scheduler)}"
        token = uuid.uuid4().hex[:8]
        for spec in specs:
            fut = client.submit(_predict_task, spec, key=f"napari-mran-{token}-{spec['index']}",
                                pure=False, resources=resources, retries=0)
            futures[fut] = spec
        for fut in as_completed(list(futures)):
            spec = futures.pop(fut)
            try:
                rec = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, CancelledError, comm errors
                rec = {"index": spec["index"], "slide": spec["slide"], "store": spec["store"],
                       "status": "failed", "slide_probs": None, "n_bags": None,
                       "failed_bags": None, "degraded": None, "error": type(exc).__name__,
                       "message": (str(exc) or repr(exc))
                       + " (the worker died or the task was lost: memory limit, crash?)",
                       "seconds": None}
            yield rec
    finally:
        if client is not None and futures:
            with contextlib.suppress(Exception):
                client.cancel(list(futures), force=True)
        if client is not None and own_client:
            with contextlib.suppress(Exception):
                client.close(timeout=10)
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=10)


def _default_workers(device: str) -> int:
    if device in ("auto", "cuda", "gpu"):
        try:
            import torch

            if torch.cuda.is_available():
                return max(1, torch.cuda.device_count())
        except Exception:  # noqa: BLE001
            pass
    return max(1, min(4, (os.cpu_count() or 1) // 4))


# --------------------------------------------------------------------------- outputs


def _fmt(value: Any) -> str:
    import numpy as np

    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not np.isfinite(value):
            return ""
        return np.format_float_positional(np.float32(value), unique=True, trim="-")
    return str(value)


def write_csv(path: Path, header: list[str], rows: list[list[Any]], *, overwrite: bool) -> None:
    """Atomic CSV; text cells escaped against formula injection, NaN as empty cells."""
    from ._atomic import atomic_file
    from .export.table import csv_safe

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_safe(h) for h in header])
    for row in rows:
        # text is escaped (formula injection); numbers are never altered
        writer.writerow([csv_safe(x) if isinstance(x, str) else _fmt(x) for x in row])
    with atomic_file(path, "w", overwrite=overwrite, newline="") as fh:
        fh.write(buf.getvalue())


def write_json(path: Path, obj: Any, *, overwrite: bool) -> None:
    """Atomic strict JSON (NaN/Inf -> null)."""
    from ._atomic import atomic_file
    from .results import strict_json

    clean, _ = strict_json(obj)
    with atomic_file(path, "w", overwrite=overwrite) as fh:
        fh.write(json.dumps(clean, indent=2, allow_nan=False, ensure_ascii=False) + "\n")


#: the ``model`` column of predictions.csv for results of the bundled demo model
DEMO_MODEL_LABEL = "DEMO model (trained on synthetic slides; not for diagnosis)"


def _write_predictions(path: Path, records: list[dict[str, Any]], class_names: list[str],
                       model_label: str = "") -> None:
    header = ["slide", "store", "status", *[f"prob_{c}" for c in class_names], "predicted",
              "n_bags", "failed_bags", "degraded", "seconds", "error", "message", "model"]
    rows = []
    for r in records:
        probs = r.get("slide_probs")
        predicted = ""
        if probs:
            import numpy as np

            predicted = class_names[int(np.argmax(probs))]
        rows.append([r["slide"], r["store"], r["status"],
                     *(probs if probs else [None] * len(class_names)), predicted,
                     r.get("n_bags"), r.get("failed_bags"), r.get("degraded"), r.get("seconds"),
                     r.get("error") or "", r.get("message") or "", model_label])
    write_csv(path, header, rows, overwrite=True)


def _write_manifest(out: Path, model_path: str, model_sha: str, options: dict[str, Any],
                    slides: list[str], names: list[str], summary: dict[str, Any] | None) -> None:
    previous = _read_manifest(out) or {}
    entries = {e["abspath"]: e for e in previous.get("slides", [])
               if isinstance(e, dict) and isinstance(e.get("abspath"), str)
               and os.path.lexists(out / str(e.get("store", "")))}
    for s, n in zip(slides, names):
        entries[s] = {"abspath": s, "name": os.path.basename(s), "store": n}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "updated": _now(),
        "model": {"path": model_path, "sha256": model_sha},
        "options": options,
        "slides": list(entries.values()),
        "last_run": summary,
    }
    write_json(out / MANIFEST_NAME, manifest, overwrite=True)


def _record_from_store(index: int, slide: str, name: str, store: Path) -> dict[str, Any]:
    from .results import SlideResult

    rec = {"index": index, "slide": slide, "store": name, "status": "skipped",
           "slide_probs": None, "n_bags": None, "failed_bags": None, "degraded": None,
           "error": None, "message": "verified store from an earlier run", "seconds": 0.0}
    try:
        res = SlideResult.load(store, verify_checksums=False)
    except MRANError as exc:  # changed between the check and now
        rec.update(status="failed", error=type(exc).__name__, message=str(exc))
        return rec
    rec.update(slide_probs=[float(p) for p in res.slide_probs], n_bags=res.n_bags,
               failed_bags=int(len(res.failed_boxes)), degraded=bool(res.degraded))
    return rec


# --------------------------------------------------------------------------- the run


def predict_cohort(
    slides: Iterable[str | os.PathLike],
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    scheduler: Any = None,
    resources: dict[str, float] | None = None,
    device: str = "auto",
    batch_size: int | str = "auto",
    num_workers: int | None = None,
    bag_px: int | None = None,
    bag_um: float | None = None,
    tissue_method: str = "reference",
    tissue_options: dict | None = None,
    top_k_patches: int | None = None,
    amp: bool | str = "auto",
    compile: bool | str = "auto",
    max_failed_fraction: float | None = None,
    mpp: float | tuple[float, float] | None = None,
    edge: str = "pad",
    allow_non_brightfield: bool = False,
    save_embeddings: bool = True,
    overwrite: bool = False,
) -> Generator[CohortEvent, None, dict[str, Any]]:
    """Predict every slide into ``<out_dir>``; a generator of events returning a summary.

    Parameters
    ----------
    slides : slide files (or folders: their slide files, not recursive).
    model_path : the checkpoint (``.safetensors`` or reference ``.pth``), or ``"demo"``
        (the bundled synthetic demo model: recorded as such in every output); each
        worker loads it once (cached per process) and checks its sha256.
    out_dir : the output folder (created if missing).
    workers : processes of a local dask cluster (``threads_per_worker=1``: one slide at
        a time per worker, so one GPU task per worker).  0 or 1 runs in this process
        without dask.  None: one per GPU, else ``cpu_count // 4`` (at most 4).
    scheduler : ``"tcp://host:port"`` of a running dask scheduler (or a
        ``distributed.Client``); its workers must see the same paths and should run
        ``--nthreads 1``.  Overrides *workers*.
    resources : dask resources each task needs, e.g. ``{"GPU": 1}`` (workers started
        with ``--resources GPU=1``).
    device, batch_size, num_workers, bag_px, bag_um, tissue_method, tissue_options,
    top_k_patches, amp, compile, max_failed_fraction, mpp, edge, allow_non_brightfield : passed to
        :func:`~napari_mran.analysis.analyze_slide` / ``open_slide``.
    save_embeddings : keep the (N, E) bag embeddings in each store (small; lets
        ``evaluate`` re-run the slide-level branch without re-reading).
    overwrite : replace valid stores made by another model/options/slide file and a
        foreign ``predictions.csv``.  Foreign folders at store names are never replaced.

    Yields :class:`CohortEvent`; returns ``{"out_dir", "predictions_csv", "manifest",
    "model_sha256", "n_slides", "done", "skipped", "failed", "set_aside", "records",
    "cluster", "elapsed_s"}`` (``failed`` lists ``{"slide", "error", "message"}``).

    Raises (before any slide is analysed) CohortError, CheckpointError, ResultsError,
    OutputExistsError for bad input, a busy or unusable output folder.
    """
    from .analysis import DEFAULT_MAX_FAILED_FRACTION
    from .model import load_model, sha256_of

    t0 = time.perf_counter()
    slide_list = expand_slides(slides)
    model_path, is_demo = resolve_model_path(model_path)
    if workers is not None and (isinstance(workers, bool) or int(workers) < 0):
        raise ValueError(f"workers must be >= 0, not {workers!r}")
    model_sha = sha256_of(model_path)
    model = load_model(model_path)  # fail early on a bad checkpoint
    model.checkpoint_sha256, model.checkpoint_path = model_sha, model_path
    model.is_demo = is_demo
    class_names = list(model.config.class_names)
    key_options = analysis_options(bag_px=bag_px, bag_um=bag_um, tissue_method=tissue_method,
                                   tissue_options=tissue_options, top_k_patches=top_k_patches,
                                   amp=amp, mpp=mpp, edge=edge)
    run_options = {"device": device, "batch_size": batch_size, "num_workers": num_workers,
                   "bag_px": bag_px, "bag_um": bag_um, "tissue_method": tissue_method,
                   "tissue_options": tissue_options, "top_k_patches": top_k_patches, "amp": amp,
                   "compile": compile, "mpp": mpp, "edge": edge,
                   "allow_non_brightfield": bool(allow_non_brightfield),
                   "max_failed_fraction": (DEFAULT_MAX_FAILED_FRACTION
                                           if max_failed_fraction is None
                                           else float(max_failed_fraction))}

    out = prepare_out_dir(out_dir)
    names = store_names(slide_list)
    lock = OutputLock(out, "napari-mran predict").acquire()
    try:
        # ---- refuse foreign or unrequested clashes before any work
        manifest = _read_manifest(out)
        problems: list[str] = []
        if manifest == {}:
            problems.append(f"{out / MANIFEST_NAME}: exists and is not a napari-mran "
                            "cohort manifest")
        pred_path = out / PREDICTIONS_NAME
        if os.path.lexists(pred_path):
            if pred_path.is_dir() or pred_path.is_symlink():
                problems.append(f"{pred_path}: exists and is not a file we wrote")
            elif manifest is None and not overwrite:
                problems.append(f"{pred_path}: exists and was not written by napari-mran predict "
                                "(pass overwrite to replace it)")
        statuses = []
        for s, n in zip(slide_list, names):
            st, why = store_status(out / n, model_sha256=model_sha, options=key_options, slide=s)
            statuses.append((st, why))
            if st == "foreign":
                problems.append(f"{out / n}: {why}; it is never replaced (move it away)")
            elif st == "different" and not overwrite:
                problems.append(f"{out / n}: {why} (pass overwrite to replace it)")
        if problems:
            more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
            raise OutputExistsError("refusing to write into the output folder:\n  "
                                    + "\n  ".join(problems[:8]) + more)

        set_aside: list[dict[str, str]] = []
        records: dict[int, dict[str, Any]] = {}
        specs: list[dict[str, Any]] = []
        for i, (s, n, (st, why)) in enumerate(zip(slide_list, names, statuses)):
            if st == "valid":
                records[i] = _record_from_store(i, s, n, out / n)
                continue
            if st == "invalid":
                try:
                    moved = _set_aside(out / n)
                except OSError as exc:
                    raise ResultsError(f"{out / n}: cannot move the invalid store aside: "
                                       f"{_os_reason(exc)}") from None
                set_aside.append({"store": n, "moved_to": moved.name, "reason": why})
            specs.append({
                "index": i, "slide": s, "store": n, "store_path": str(out / n),
                "model_path": model_path, "model_sha256": model_sha,
                "analysis": {k: v for k, v in run_options.items() if v is not None},
                "save_embeddings": bool(save_embeddings), "replace": st == "different",
                "cohort_block": {"model_sha256": model_sha, "options": key_options,
                                 "store": n, "slide_name": os.path.basename(s)},
            })
        _write_manifest(out, model_path, model_sha, key_options, slide_list, names, None)

        total = len(slide_list)
        n_workers = _default_workers(device) if workers is None else int(workers)
        # a local cluster only pays off with two workers and two slides to share
        use_dask = scheduler is not None or min(n_workers, len(specs)) > 1
        info: dict[str, Any] = {"cluster": "in-process" if not use_dask else None}
        yield CohortEvent("plan", total=total,
                          message=f"{total} slides: {len(records)} verified stores skipped, "
                                  f"{len(specs)} to analyse"
                                  + (f", {len(set_aside)} invalid stores moved aside"
                                     if set_aside else ""))
        finished = Counter()
        for i in sorted(records):
            r = records[i]
            finished[r["status"]] += 1
            yield CohortEvent("slide", i, r["slide"], r["status"], done=finished.total(),
                              total=total, failed=finished["failed"],
                              skipped=finished["skipped"],
                              message=f"{r['status']}: {os.path.basename(r['slide'])}", record=r)

        if specs:
            if use_dask:
                n_local = min(n_workers, len(specs))
                if scheduler is None:
                    per = max(1, (os.cpu_count() or 1) // n_local)
                    for spec in specs:
                        spec["torch_threads"] = per
                        spec["analysis"].setdefault("num_workers", min(8, per))
                runner = _run_distributed(specs, workers=n_local, scheduler=scheduler,
                                          resources=resources, info=info)
            else:
                _MODEL_CACHE.clear()
                _MODEL_CACHE[(model_path, model_sha)] = model
                runner = _run_in_process(specs)
            try:
                for rec in runner:
                    records[rec["index"]] = rec
                    counts = Counter(r["status"] for r in records.values())
                    msg = (f"{rec['status']}: {os.path.basename(rec['slide'])}"
                           + (f" ({rec['error']}: {rec['message']})" if rec["status"] == "failed"
                              else ""))
                    yield CohortEvent("slide", rec["index"], rec["slide"], rec["status"],
                                      done=len(records), total=total, failed=counts["failed"],
                                      skipped=counts["skipped"], message=msg, record=rec)
            finally:
                runner.close()  # cancels pending futures and closes the cluster

        ordered = [records[i] for i in range(total)]
        _write_predictions(out / PREDICTIONS_NAME, ordered, class_names,
                           DEMO_MODEL_LABEL if is_demo else os.path.basename(model_path))
        counts = Counter(r["status"] for r in ordered)
        summary = {
            "out_dir": str(out),
            "predictions_csv": str(out / PREDICTIONS_NAME),
            "manifest": str(out / MANIFEST_NAME),
            "model_sha256": model_sha,
            "model_is_demo": is_demo,
            "n_slides": total,
            "done": counts["done"],
            "skipped": counts["skipped"],
            "failed": [{"slide": r["slide"], "error": r["error"], "message": r["message"]}
                       for r in ordered if r["status"] == "failed"],
            "set_aside": set_aside,
            "records": ordered,
            "cluster": info.get("cluster"),
            "elapsed_s": round(time.perf_counter() - t0, 3),
        }
        _write_manifest(out, model_path, model_sha, key_options, slide_list, names,
                        {k: summary[k] for k in ("n_slides", "done", "skipped", "failed",
                                                 "set_aside", "cluster", "elapsed_s")})
        yield CohortEvent("done", total=total, done=total, failed=len(summary["failed"]),
                          skipped=counts["skipped"],
                          message=f"{counts['done']} analysed, {counts['skipped']} skipped, "
                                  f"{len(summary['failed'])} failed")
        return summary
    finally:
        lock.release()


def run_cohort(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Drain :func:`predict_cohort` and return its summary."""
    from ._events import drain

    return drain(predict_cohort(*args, **kwargs))

