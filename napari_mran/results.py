"""The result of analysing one slide, its on-disk store, and scores -> heatmap rasters.

Geometry (docs/mran-spec.md section 1, generalised to any bag size ``bag_px``):
a bag is a ``bag_px`` square on the grid from the slide's top-left corner; patch
``p = row * 8 + col`` covers ``bag_px / 8`` level-0 px, cell ``c = row * 4 + col``
of a patch covers ``bag_px / 32`` level-0 px.  ``row`` is always vertical.

:meth:`SlideResult.heatmap` is the one function that turns scores into a raster;
the napari layer, the exporters and the CLI all use it.  The store format is
described in docs/formats.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mran._atomic import atomic_dir
from napari_mran.errors import ResultsError

__all__ = [
    "CELLS_PER_PATCH_SIDE",
    "LEVELS",
    "PATCHES_PER_SIDE",
    "RESULTS_FORMAT",
    "RESULTS_VERSION",
    "Heatmap",
    "SlideResult",
    "is_results_store",
    "strict_json",
    "verify_store",
]

LEVELS = ("bag", "patch", "cell")
WEIGHTINGS = ("local", "global")
VALUES = ("attention", "prob")
PATCHES_PER_SIDE = 8  # a bag is 8 x 8 patches
CELLS_PER_PATCH_SIDE = 4  # a patch is 4 x 4 cells
CELLS_PER_SIDE = PATCHES_PER_SIDE * CELLS_PER_PATCH_SIDE  # a bag is 32 x 32 cells
N_PATCHES = PATCHES_PER_SIDE**2
N_CELLS = CELLS_PER_PATCH_SIDE**2
_PIXELS_PER_BAG = {"bag": 1, "patch": PATCHES_PER_SIDE, "cell": CELLS_PER_SIDE}

RESULTS_FORMAT = "napari-mran-results"
RESULTS_VERSION = 1
MARKER_NAME = "COMPLETE.json"
ATTRS_KEY = "napari_mran"
NONFINITE_KEY = "_nonfinite_replaced_by_null"

# name -> (dtype, trailing shape as a function of C); the leading dim is N (or K).
_FLOAT = np.dtype("<f4")
_INT = np.dtype("<i8")
_ARRAYS: dict[str, tuple[np.dtype, Any]] = {
    "boxes": (_INT, lambda c: (4,)),
    "bag_attention": (_FLOAT, lambda c: ()),
    "bag_probs": (_FLOAT, lambda c: (c,)),
    "patch_attention": (_FLOAT, lambda c: (N_PATCHES,)),
    "patch_probs": (_FLOAT, lambda c: (N_PATCHES, c)),
    "cell_attention": (_FLOAT, lambda c: (N_PATCHES, N_CELLS)),
    "cell_probs": (_FLOAT, lambda c: (N_PATCHES, N_CELLS, c)),
    "slide_probs": (_FLOAT, None),  # (C,)
    "failed_boxes": (_INT, lambda c: (4,)),  # leading dim K
}
# Arrays a store may hold or not (older stores and callers without them stay valid).
_OPTIONAL_ARRAYS: dict[str, np.dtype] = {
    "embeddings": _FLOAT,  # (N, E) bag embeddings g of the upstream branch
}


# --------------------------------------------------------------------------- strict JSON


def strict_json(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """Copy *obj* into plain strict-JSON types; NaN/Inf become None.

    Returns ``(clean, replaced)`` where ``replaced`` lists the JSON pointers of the
    values that were non-finite.  numpy scalars/arrays, tuples and paths are
    converted; dict keys must be strings (numbers/bools are converted to strings).
    Anything else raises ResultsError naming the location.
    """
    replaced: list[str] = []

    def conv(value: Any, ptr: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            f = float(value)
            if math.isfinite(f):
                return f
            replaced.append(ptr or "/")
            return None
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, np.ndarray):
            return conv(value.tolist(), ptr)
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if isinstance(k, (bool, int, float, np.integer, np.floating)):
                    k = str(k)
                if not isinstance(k, str):
                    raise ResultsError(
                        f"{where}{ptr}: key {k!r} is not a string; not JSON-serialisable"
                    )
                out[k] = conv(v, f"{ptr}/{_escape_pointer(k)}")
            return out
        if isinstance(value, (list, tuple)):
            return [conv(v, f"{ptr}/{i}") for i, v in enumerate(value)]
        raise ResultsError(
            f"{where}{ptr or '/'}: value of type {type(value).__name__} is not JSON-serialisable"
        )

    return conv(obj, ""), replaced


def _escape_pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, allow_nan=False, ensure_ascii=False, **kwargs)


# --------------------------------------------------------------------------- heatmap


def _nanmean_2x2(data: np.ndarray) -> np.ndarray:
    """Halve a 2-D float raster: mean of each 2 x 2 block ignoring NaN (all-NaN -> NaN)."""
    h, w = data.shape
    hh, ww = (h + 1) // 2, (w + 1) // 2
    padded = np.full((hh * 2, ww * 2), np.nan, dtype=np.float64)
    padded[:h, :w] = data
    blocks = padded.reshape(hh, 2, ww, 2)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(1, 3))
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Heatmap:
    """A 2-D score raster aligned with the slide by a level-0 affine.

    ``data[row, col]`` covers the level-0 box ``x0 = tx + col * sx``,
    ``y0 = ty + row * sy``, ``x1 = x0 + sx``, ``y1 = y0 + sy`` (pixel *corners*,
    level-0 pixels).  NaN marks pixels outside the analysed tissue bags.
    """

    data: np.ndarray  # (rows, cols) float32
    scale: tuple[float, float]  # (sy, sx) level-0 px per heatmap px
    translate: tuple[float, float]  # (ty, tx) level-0 px of the top-left corner of data[0, 0]
    level: str = "bag"
    weighting: str = "local"
    value: str = "attention"
    class_index: int | None = None
    class_name: str | None = None
    mpp: tuple[float, float] | None = None  # (x, y) µm per level-0 px, or None

    @property
    def name(self) -> str:
        """A short human-readable name, e.g. ``"patch attention (global)"``."""
        if self.value == "prob":
            return f"{self.level} P({self.class_name})"
        return f"{self.level} attention ({self.weighting})"

    def pixel_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 box ``(x0, y0, x1, y1)`` covered by ``data[row, col]``."""
        sy, sx = self.scale
        ty, tx = self.translate
        x0, y0 = tx + col * sx, ty + row * sy
        return (x0, y0, x0 + sx, y0 + sy)

    def index_at(self, x0: float, y0: float) -> tuple[int, int] | None:
        """``(row, col)`` of the heatmap pixel holding level-0 point (x0, y0), or None."""
        sy, sx = self.scale
        ty, tx = self.translate
        row, col = math.floor((y0 - ty) / sy), math.floor((x0 - tx) / sx)
        if 0 <= row < self.data.shape[0] and 0 <= col < self.data.shape[1]:
            return row, col
        return None

    @property
    def scale_um(self) -> tuple[float, float] | None:
        """(sy, sx) in µm per heatmap pixel, or None without MPP."""
        if self.mpp is None:
            return None
        return (self.scale[0] * self.mpp[1], self.scale[1] * self.mpp[0])

    @property
    def translate_um(self) -> tuple[float, float] | None:
        """(ty, tx) of the top-left corner in µm, or None without MPP."""
        if self.mpp is None:
            return None
        return (self.translate[0] * self.mpp[1], self.translate[1] * self.mpp[0])

    def layer_transform(
        self, units: str = "px", *, pixel_centres: bool = True
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(scale, translate)`` in (y, x) order for a viewer layer or NGFF metadata.

        ``units="px"``: level-0 pixels; ``"um"``: micrometres (needs MPP).  With
        ``pixel_centres=True`` (napari's and OME-Zarr readers' convention) the world
        coordinate of level-0 pixel ``i`` is its centre ``i`` (or ``i * mpp``), so the
        translate moves to the centre of ``data[0, 0]``: ``t + s / 2 - 0.5`` level-0 px.
        With ``False`` it is the corner convention of :attr:`translate`.
        """
        sy, sx = self.scale
        ty, tx = self.translate
        if pixel_centres:
            ty, tx = ty + sy / 2.0 - 0.5, tx + sx / 2.0 - 0.5
        if units == "px":
            return (sy, sx), (ty, tx)
        if units != "um":
            raise ValueError(f"units must be 'px' or 'um', not {units!r}")
        if self.mpp is None:
            raise ResultsError("heatmap: no MPP is known; cannot express it in µm")
        mx, my = self.mpp
        return (sy * my, sx * mx), (ty * my, tx * mx)

    def downsampled(self) -> Heatmap:
        """Half resolution (NaN-aware 2 x 2 mean); the top-left corner stays put."""
        return Heatmap(
            data=_nanmean_2x2(self.data),
            scale=(self.scale[0] * 2.0, self.scale[1] * 2.0),
            translate=self.translate,
            level=self.level,
            weighting=self.weighting,
            value=self.value,
            class_index=self.class_index,
            class_name=self.class_name,
            mpp=self.mpp,
        )

    def pyramid(self, min_size: int = 256) -> list[Heatmap]:
        """This heatmap and successive halvings until both sides are <= *min_size*."""
        levels = [self]
        while max(levels[-1].data.shape) > min_size and min(levels[-1].data.shape) > 1:
            levels.append(levels[-1].downsampled())
        return levels


# --------------------------------------------------------------------------- zarr I/O
# All zarr calls live in these three functions (zarr 3.x API; results store = zarr v3).


def _zarr_write(folder: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    import zarr

    group = zarr.open_group(str(folder), mode="w", zarr_format=3)
    group.attrs.update(attrs)
    for name, arr in arrays.items():
        row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
        rows = max(1, min(max(arr.shape[0], 1), (8 << 20) // row_bytes))
        chunks = (rows, *arr.shape[1:]) if arr.ndim else ()
        chunks = tuple(max(1, c) for c in chunks)
        zarray = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
        if arr.size:
            zarray[...] = arr


def _zarr_update_attrs(folder: Path, attrs: dict[str, Any]) -> None:
    import zarr

    group = zarr.open_group(str(folder), mode="r+", zarr_format=3)
    group.attrs.update(attrs)


def _zarr_read(folder: Path, names: list[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import zarr

    group = zarr.open_group(str(folder), mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    arrays = {}
    for name in names:
        # open by name: listing the group would warn about COMPLETE.json
        arrays[name] = np.asarray(group[name][...])
    return attrs, arrays


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data).hexdigest()


_CHUNK_KEY = re.compile(r"^c(/\d+)*$")


def _foreign_entries(folder: Path, names: list[str]) -> list[str]:
    """Paths under *folder* that a results store would not contain."""
    foreign = []
    allowed_top = {"zarr.json", MARKER_NAME, *names}
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        parts = rel_root.parts
        for fname in files:
            rel = (rel_root / fname).as_posix()
            if not parts:
                ok = fname in ("zarr.json", MARKER_NAME)
            elif parts[0] in names:
                ok = (len(parts) == 1 and fname == "zarr.json") or (
                    len(parts) >= 2 and _CHUNK_KEY.match("/".join(parts[1:])) and fname.isdigit()
                )
            else:
                ok = False
            if not ok:
                foreign.append(rel)
        if not parts:
            foreign.extend(d + "/" for d in dirs if d not in allowed_top)
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                foreign.append((rel_root / d).as_posix())
                dirs.remove(d)
    return foreign


def _read_store(
    path: Path, verify_checksums: bool = True
) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Verify and read a results store -> (marker, attrs, arrays); ResultsError on any problem."""
    if not path.exists():
        raise ResultsError(f"{path}: does not exist")
    if not path.is_dir():
        raise ResultsError(f"{path}: is not a folder (a results store is a .mran.zarr folder)")
    if not (path / "zarr.json").is_file():
        if (path / ".zgroup").exists():
            raise ResultsError(f"{path}: is a zarr v2 store, not a napari-mran results store")
        raise ResultsError(f"{path}: not a napari-mran results store (no zarr.json)")
    try:
        meta = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: corrupt store metadata (zarr.json: {exc})") from exc
    own = (meta.get("attributes") or {}).get(ATTRS_KEY) if isinstance(meta, dict) else None
    if not isinstance(own, dict) or own.get("format") != RESULTS_FORMAT:
        raise ResultsError(f"{path}: a zarr store that is not a napari-mran results store")
    if own.get("version") != RESULTS_VERSION:
        raise ResultsError(
            f"{path}: results store version {own.get('version')!r} is not supported "
            f"(this napari-mran reads version {RESULTS_VERSION})"
        )
    marker_path = path / MARKER_NAME
    if not marker_path.is_file() or own.get("complete") is not True:
        raise ResultsError(
            f"{path}: incomplete results store (no completion marker): the write was "
            "interrupted or the folder was copied partially; analyse the slide again"
        )
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        marker_arrays = marker["arrays"]
        if marker.get("format") != RESULTS_FORMAT or not isinstance(marker_arrays, dict):
            raise ValueError("unexpected content")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{path}: corrupt completion marker {MARKER_NAME} ({exc})") from exc
    names = list(_ARRAYS) + [n for n in _OPTIONAL_ARRAYS if n in marker_arrays]
    if sorted(marker_arrays) != sorted(names):
        raise ResultsError(
            f"{path}: completion marker lists arrays {sorted(marker_arrays)}, expected "
            f"{sorted(_ARRAYS)} (optionally with {sorted(_OPTIONAL_ARRAYS)})"
        )
    try:
        attrs, arrays = _zarr_read(path, names)
    except KeyError as exc:
        raise ResultsError(f"{path}: array {exc.args[0]!r} is missing") from None
    except Exception as exc:  # zarr/codec errors come in many classes
        raise ResultsError(f"{path}: cannot read the store ({type(exc).__name__}: {exc})") from exc
    for name in names:
        arr, expected = arrays[name], marker_arrays[name]
        try:
            shape, dtype = tuple(expected["shape"]), np.dtype(expected["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"{path}: corrupt completion marker entry for {name!r}") from exc
        if arr.shape != shape or arr.dtype != dtype:
            raise ResultsError(
                f"{path}: array {name!r} is {arr.shape} {arr.dtype}, the completion marker says {shape} {dtype}"
            )
        if verify_checksums and _sha256(arr) != expected.get("sha256"):
            raise ResultsError(
                f"{path}: array {name!r} does not match its checksum (corrupt or modified)"
            )
    return marker, attrs, arrays


def verify_store(path: str | os.PathLike) -> str | None:
    """None when *path* is a complete, verified results store holding nothing else.

    Otherwise the reason (used to decide whether ``save(..., overwrite=True)`` may
    delete it).
    """
    path = Path(path)
    if path.is_symlink():
        return "it is a symbolic link"
    try:
        _read_store(path)
    except ResultsError as exc:
        return str(exc)
    foreign = _foreign_entries(path, [*_ARRAYS, *_OPTIONAL_ARRAYS])
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        return f"it holds files that are not part of a results store ({shown})"
    return None


def is_results_store(path: str | os.PathLike) -> bool:
    """True when *path* is a complete napari-mran results store (checksums not verified)."""
    try:
        _read_store(Path(path), verify_checksums=False)
    except ResultsError:
        return False
    return True


# --------------------------------------------------------------------------- SlideResult


def _mpp_pair(mpp: Any) -> tuple[float, float] | None:
    if mpp is None:
        return None
    try:
        vals = [float(v) for v in np.asarray(mpp, dtype=float).ravel()]
    except (TypeError, ValueError):
        vals = []
    if np.ndim(mpp) == 0:
        vals = vals * 2
    if len(vals) != 2:
        raise ResultsError(f"SlideResult: mpp must be a number or an (x, y) pair, not {mpp!r}")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ResultsError(f"SlideResult: mpp must be positive and finite, not {mpp!r}")
    return (vals[0], vals[1])


def _is_integral(arr: np.ndarray) -> bool:
    if np.issubdtype(arr.dtype, np.integer):
        return True
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.mod(arr, 1) == 0))


def _rank_desc(values: np.ndarray) -> np.ndarray:
    """1-based rank by value, highest first; ties by index; NaN ranks last."""
    values = np.asarray(values, dtype=np.float64)
    key = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((np.arange(values.size), -key))
    # NaN after -inf: push NaN entries behind everything else
    nan_mask = np.isnan(values[order])
    order = np.concatenate([order[~nan_mask], order[nan_mask]])
    ranks = np.empty(values.size, dtype=np.int64)
    ranks[order] = np.arange(1, values.size + 1)
    return ranks


@dataclass(eq=False)
class SlideResult:
    """Scores of one analysed slide at the three levels, with their level-0 geometry.

    Shapes (N bags, C classes, K failed bags); attention/probabilities are float32,
    boxes int64 ``[x0, y0, x1, y1]`` level-0 px on the bag grid.  ``embeddings``
    (N, E) float32, the upstream bag embeddings ``g``, is optional: saved with the
    store when present (it lets the slide-level branch be re-run without re-reading
    the slide), absent from older stores.
    """

    boxes: np.ndarray  # (N, 4) int64
    bag_attention: np.ndarray  # (N,) gamma
    bag_probs: np.ndarray  # (N, C)
    patch_attention: np.ndarray  # (N, 64) alpha, patch p = row * 8 + col
    patch_probs: np.ndarray  # (N, 64, C)
    cell_attention: np.ndarray  # (N, 64, 16) beta, cell c = row * 4 + col
    cell_probs: np.ndarray  # (N, 64, 16, C)
    slide_probs: np.ndarray  # (C,)
    class_names: list[str]
    slide_size: tuple[int, int]  # level-0 (width, height)
    bag_px: int = 2048
    mpp: float | tuple[float, float] | None = None  # µm per level-0 px (x, y)
    failed_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # (K, 4)
    failed_reasons: list[str] = field(default_factory=list)  # (K,)
    provenance: dict[str, Any] = field(default_factory=dict)
    degraded: bool = False
    embeddings: np.ndarray | None = None  # (N, E) float32 bag embeddings, optional
    _index: dict[tuple[int, int], int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    # -- construction ----------------------------------------------------------------

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ResultsError(f"SlideResult: {msg}")

        names = [str(n) for n in self.class_names]
        if not names:
            fail("class_names is empty")
        if len(set(names)) != len(names):
            fail(f"class names are not unique: {names}")
        self.class_names = names
        n_classes = len(names)
        try:
            w, h = (int(v) for v in self.slide_size)
        except (TypeError, ValueError):
            fail(f"slide_size must be (width, height), not {self.slide_size!r}")
        if w <= 0 or h <= 0:
            fail(f"slide_size must be positive, not {(w, h)}")
        self.slide_size = (w, h)
        try:
            self.bag_px = int(self.bag_px)
        except (TypeError, ValueError):
            fail(f"bag_px must be an integer, not {self.bag_px!r}")
        if self.bag_px < CELLS_PER_SIDE:
            fail(f"bag_px must be >= {CELLS_PER_SIDE}, not {self.bag_px}")
        mpp = _mpp_pair(self.mpp)
        if mpp is not None:
            self.mpp = float(mpp[0]) if np.ndim(self.mpp) == 0 else mpp

        # arrays: dtype + shape
        boxes = np.asarray(self.boxes)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        n = boxes.shape[0] if boxes.ndim == 2 else -1
        for name, (dtype, trailing) in _ARRAYS.items():
            arr = np.asarray(boxes if name == "boxes" else getattr(self, name))
            if name == "failed_boxes" and arr.size == 0:
                arr = arr.reshape(0, 4)
            if dtype.kind == "i" and arr.size and not _is_integral(arr):
                fail(f"{name} must hold integer pixel coordinates")
            expected = (
                (n_classes,)
                if trailing is None
                else (
                    (arr.shape[0] if name == "failed_boxes" and arr.ndim == 2 else n),
                    *trailing(n_classes),
                )
            )
            if arr.shape != expected:
                fail(
                    f"{name} has shape {arr.shape}, expected {expected} (N={n} bags, C={n_classes} classes)"
                )
            setattr(self, name, np.ascontiguousarray(arr, dtype=dtype))
        if len(self.failed_reasons) != self.failed_boxes.shape[0]:
            fail(
                f"{self.failed_boxes.shape[0]} failed boxes but {len(self.failed_reasons)} reasons"
            )
        self.failed_reasons = [str(r) for r in self.failed_reasons]

        # geometry: every bag on the grid, inside the slide, no duplicates
        b = self.boxes
        if b.shape[0]:
            bp = self.bag_px
            if np.any(b[:, 2] - b[:, 0] != bp) or np.any(b[:, 3] - b[:, 1] != bp):
                fail(f"every box must be {bp} x {bp} px (bag_px)")
            if np.any(b[:, :2] % bp != 0):
                fail(f"every box must start on the bag grid (x0, y0 multiples of {bp})")
            if np.any(b[:, :2] < 0) or np.any(b[:, 2] > w) or np.any(b[:, 3] > h):
                fail(f"a box lies outside the slide ({w} x {h} px)")
            keys = (b[:, 1] // bp) * (w // bp + 1) + b[:, 0] // bp
            if np.unique(keys).size != keys.size:
                fail("two boxes cover the same bag")

        if not isinstance(self.provenance, dict):
            fail(f"provenance must be a dict, not {type(self.provenance).__name__}")
        clean, replaced = strict_json(self.provenance, "SlideResult.provenance")
        if replaced:
            previous = clean.get(NONFINITE_KEY) or []
            clean[NONFINITE_KEY] = sorted(set(previous) | set(replaced))
        self.provenance = clean
        self.degraded = bool(self.degraded)
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings)
            if emb.ndim != 2 or emb.shape[0] != n or emb.shape[1] < 1:
                fail(f"embeddings has shape {emb.shape}, expected (N={n}, E>=1)")
            if not np.issubdtype(emb.dtype, np.number) or np.iscomplexobj(emb):
                fail(f"embeddings must be real numbers, not {emb.dtype}")
            self.embeddings = np.ascontiguousarray(emb, dtype=_FLOAT)
        self._index = None

    # -- basic geometry --------------------------------------------------------------

    @property
    def n_bags(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the whole bag grid of the slide."""
        w, h = self.slide_size
        return (h // self.bag_px, w // self.bag_px)

    @property
    def bag_rc(self) -> np.ndarray:
        """(N, 2) int64 grid (row, col) of each bag."""
        return np.stack([self.boxes[:, 1], self.boxes[:, 0]], axis=1) // self.bag_px

    @property
    def patch_px(self) -> float:
        return self.bag_px / PATCHES_PER_SIDE

    @property
    def cell_px(self) -> float:
        return self.bag_px / CELLS_PER_SIDE

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """(x, y) µm per level-0 px, or None."""
        return _mpp_pair(self.mpp)

    @property
    def failed_bags(self) -> list[dict[str, Any]]:
        """``[{"box": [x0, y0, x1, y1], "reason": str}, ...]``."""
        return [
            {"box": [int(v) for v in box], "reason": r}
            for box, r in zip(self.failed_boxes, self.failed_reasons)
        ]

    @property
    def slide_name(self) -> str:
        """Slide name from provenance: ``slide.name`` (verbatim), else the file name
        of ``slide.path`` (also accepted: top-level ``slide_name``/``slide_path``), else ""."""
        prov = self.provenance
        slide = prov.get("slide")
        names, paths = [prov.get("slide_name")], [prov.get("slide_path")]
        if isinstance(slide, dict):
            names.insert(0, slide.get("name"))
            paths.insert(0, slide.get("path"))
        elif isinstance(slide, str):
            paths.insert(0, slide)
        for name in names:
            if isinstance(name, str) and name:
                return name
        for p in paths:
            if isinstance(p, str) and p:
                return os.path.basename(p.rstrip("/\\")) or p
        return ""

    def level_boxes(self, level: str) -> np.ndarray:
        """Level-0 boxes of every object: bag (N, 4) int64, patch (N, 64, 4) and cell
        (N, 64, 16, 4) float64 ``[x0, y0, x1, y1]``."""
        _check_choice("level", level, LEVELS)
        if level == "bag":
            return self.boxes.copy()
        origin = self.boxes[:, :2].astype(np.float64)  # (N, 2) x0, y0
        pp = self.patch_px
        p = np.arange(N_PATCHES)
        patch_xy = np.stack([p % PATCHES_PER_SIDE, p // PATCHES_PER_SIDE], axis=1) * pp  # (64, 2)
        if level == "patch":
            xy0 = origin[:, None, :] + patch_xy[None]  # (N, 64, 2)
            return np.concatenate([xy0, xy0 + pp], axis=-1)
        cp = self.cell_px
        c = np.arange(N_CELLS)
        cell_xy = (
            np.stack([c % CELLS_PER_PATCH_SIDE, c // CELLS_PER_PATCH_SIDE], axis=1) * cp
        )  # (16, 2)
        xy0 = (
            origin[:, None, None, :] + patch_xy[None, :, None, :] + cell_xy[None, None]
        )  # (N, 64, 16, 2)
        return np.concatenate([xy0, xy0 + cp], axis=-1)

    # -- scores ------------------------------------------------------------------------

    def _class_index(self, class_index: int | str) -> int:
        if isinstance(class_index, str):
            if class_index not in self.class_names:
                raise ValueError(f"unknown class {class_index!r}; classes are {self.class_names}")
            return self.class_names.index(class_index)
        ci = int(class_index)
        if not 0 <= ci < self.n_classes:
            raise ValueError(f"class_index {ci} out of range for classes {self.class_names}")
        return ci

    def scores(
        self,
        level: str = "bag",
        weighting: str = "local",
        value: str = "attention",
        class_index: int | str = 1,
    ) -> np.ndarray:
        """Per-object scores: bag (N,), patch (N, 64), cell (N, 64, 16) float32.

        ``attention``: local = gamma / alpha / beta; global = gamma, gamma * alpha,
        gamma * alpha * beta.  ``prob``: that level's probability of *class_index*
        (``weighting`` must be local).
        """
        _check_choice("level", level, LEVELS)
        _check_choice("weighting", weighting, WEIGHTINGS)
        _check_choice("value", value, VALUES)
        if value == "prob":
            if weighting != "local":
                raise ValueError(
                    "weighting='global' applies to attention only, not to probabilities"
                )
            ci = self._class_index(class_index)
            probs = {"bag": self.bag_probs, "patch": self.patch_probs, "cell": self.cell_probs}[
                level
            ]
            return np.ascontiguousarray(probs[..., ci])
        if level == "bag":
            return self.bag_attention.copy()
        if level == "patch":
            if weighting == "local":
                return self.patch_attention.copy()
            return self.bag_attention[:, None] * self.patch_attention
        if weighting == "local":
            return self.cell_attention.copy()
        return (
            self.bag_attention[:, None, None] * self.patch_attention[:, :, None]
        ) * self.cell_attention

    def heatmap(
        self,
        level: str = "bag",
        weighting: str = "local",
        value: str = "attention",
        class_index: int | str = 1,
    ) -> Heatmap:
        """Rasterise one level over the slide's whole bag grid.

        One pixel per bag (``level="bag"``), 8 x 8 per bag (patch) or 32 x 32 per bag
        (cell); NaN where no tissue bag was analysed.  ``data[0, 0]``'s top-left
        corner is the slide's level-0 origin.
        """
        vals = self.scores(level, weighting, value, class_index)
        k = _PIXELS_PER_BAG[level]
        rows, cols = self.grid_shape
        rc = self.bag_rc
        if level == "bag":
            data = np.full((rows, cols), np.nan, dtype=np.float32)
            data[rc[:, 0], rc[:, 1]] = vals
        elif level == "patch":
            tiles = np.full(
                (rows, cols, k, k), np.nan, dtype=np.float32
            )  # [bag r, bag c, patch r, patch c]
            tiles[rc[:, 0], rc[:, 1]] = vals.reshape(-1, k, k)
            data = tiles.transpose(0, 2, 1, 3).reshape(rows * k, cols * k)
        else:
            p, c = PATCHES_PER_SIDE, CELLS_PER_PATCH_SIDE
            # [bag r, bag c, patch r, patch c, cell r, cell c]
            tiles = np.full((rows, cols, p, p, c, c), np.nan, dtype=np.float32)
            tiles[rc[:, 0], rc[:, 1]] = vals.reshape(-1, p, p, c, c)
            data = tiles.transpose(0, 2, 4, 1, 3, 5).reshape(rows * k, cols * k)
        step = self.bag_px / k
        ci = None if value == "attention" else self._class_index(class_index)
        return Heatmap(
            data=np.ascontiguousarray(data, dtype=np.float32),
            scale=(float(step), float(step)),
            translate=(0.0, 0.0),
            level=level,
            weighting=weighting,
            value=value,
            class_index=ci,
            class_name=None if ci is None else self.class_names[ci],
            mpp=self.mpp_xy,
        )

    def top_bags(self, k: int | None = None) -> np.ndarray:
        """Indices of the bags by bag attention (gamma), highest first (NaN last)."""
        order = np.argsort(_rank_desc(self.bag_attention), kind="stable")
        return order if k is None else order[: max(0, int(k))]

    def bag_index_at(self, x0: float, y0: float) -> int | None:
        """Index of the analysed bag holding level-0 point (x0, y0), or None."""
        if self._index is None:
            self._index = {(int(r), int(c)): i for i, (r, c) in enumerate(self.bag_rc)}
        if not (math.isfinite(x0) and math.isfinite(y0)) or x0 < 0 or y0 < 0:
            return None
        key = (int(y0 // self.bag_px), int(x0 // self.bag_px))
        return self._index.get(key)

    def value_at(self, x0: float, y0: float) -> dict[str, Any] | None:
        """Scores under level-0 point (x0, y0) at every level (for hover), or None.

        Keys: ``bag_index``, ``patch_index``, ``cell_index`` and their ``*_box``
        (level-0), ``bag_attention``, ``patch_attention`` (+ ``_global``),
        ``cell_attention`` (+ ``_global``), ``bag_probs``/``patch_probs``/``cell_probs``
        and ``slide_probs`` as {class name: probability}.
        """
        i = self.bag_index_at(x0, y0)
        if i is None:
            return None
        bx0, by0 = (int(v) for v in self.boxes[i, :2])
        rr = min(
            int((y0 - by0) * CELLS_PER_SIDE // self.bag_px), CELLS_PER_SIDE - 1
        )  # cell row in bag
        cc = min(int((x0 - bx0) * CELLS_PER_SIDE // self.bag_px), CELLS_PER_SIDE - 1)
        pr, pc = rr // CELLS_PER_PATCH_SIDE, cc // CELLS_PER_PATCH_SIDE
        cr, ccol = rr % CELLS_PER_PATCH_SIDE, cc % CELLS_PER_PATCH_SIDE
        p = pr * PATCHES_PER_SIDE + pc
        c = cr * CELLS_PER_PATCH_SIDE + ccol
        g = float(self.bag_attention[i])
        a = float(self.patch_attention[i, p])
        b = float(self.cell_attention[i, p, c])
        pp, cp = self.patch_px, self.cell_px
        px0, py0 = bx0 + pc * pp, by0 + pr * pp
        cx0, cy0 = px0 + ccol * cp, py0 + cr * cp

        def probs(v: np.ndarray) -> dict[str, float]:
            return {name: float(x) for name, x in zip(self.class_names, v)}

        return {
            "x0": float(x0),
            "y0": float(y0),
            "bag_index": i,
            "bag_box": tuple(int(v) for v in self.boxes[i]),
            "bag_attention": g,
            "bag_probs": probs(self.bag_probs[i]),
            "patch_index": p,
            "patch_row": pr,
            "patch_col": pc,
            "patch_box": (px0, py0, px0 + pp, py0 + pp),
            "patch_attention": a,
            "patch_attention_global": float(np.float32(g) * np.float32(a)),
            "patch_probs": probs(self.patch_probs[i, p]),
            "cell_index": c,
            "cell_row": cr,
            "cell_col": ccol,
            "cell_box": (cx0, cy0, cx0 + cp, cy0 + cp),
            "cell_attention": b,
            "cell_attention_global": float(np.float32(g) * np.float32(a) * np.float32(b)),
            "cell_probs": probs(self.cell_probs[i, p, c]),
            "slide_probs": probs(self.slide_probs),
        }

    def summary(self) -> dict[str, Any]:
        """Strict-JSON summary (no per-bag arrays) for sidecars and logs."""
        mpp = self.mpp_xy
        clean, _ = strict_json(
            {
                "slide_name": self.slide_name,
                "slide_size": list(self.slide_size),
                "mpp": None if mpp is None else list(mpp),
                "bag_px": self.bag_px,
                "grid_shape": list(self.grid_shape),
                "n_bags": self.n_bags,
                "class_names": list(self.class_names),
                "slide_probs": {n: float(p) for n, p in zip(self.class_names, self.slide_probs)},
                "degraded": self.degraded,
                "failed_bags": self.failed_bags,
            }
        )
        return clean

    # -- store -------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        for name in _OPTIONAL_ARRAYS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        return arrays

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a ``.mran.zarr`` results store (zarr v3) atomically; return its path.

        Built in a hidden temporary sibling folder, completed by the marker
        ``COMPLETE.json`` (shapes, dtypes, sha256 of every array) and renamed onto
        *path*.  An existing *path* is never touched unless ``overwrite=True``, and
        then only if it is itself a verified results store holding nothing else.
        """
        final = Path(path)
        arrays = self._arrays()
        mpp = self.mpp_xy
        own = {
            "format": RESULTS_FORMAT,
            "version": RESULTS_VERSION,
            "complete": False,
            "class_names": list(self.class_names),
            "slide_size": list(self.slide_size),
            "bag_px": self.bag_px,
            "mpp": None
            if mpp is None
            else ([mpp[0], mpp[1]] if isinstance(self.mpp, tuple) else mpp[0]),
            "degraded": self.degraded,
            "failed_reasons": list(self.failed_reasons),
            "n_bags": self.n_bags,
        }
        own, _ = strict_json(own)
        marker = {
            "format": RESULTS_FORMAT,
            "version": RESULTS_VERSION,
            "arrays": {
                name: {"shape": list(arr.shape), "dtype": arr.dtype.str, "sha256": _sha256(arr)}
                for name, arr in arrays.items()
            },
        }
        with atomic_dir(final, overwrite=overwrite, replace_check=verify_store) as tmp:
            try:
                _zarr_write(tmp, arrays, {ATTRS_KEY: own, "provenance": self.provenance})
                _mark_complete(tmp, own, marker)
            except OSError:
                raise
            except Exception as exc:
                if isinstance(exc, ResultsError):
                    raise
                raise ResultsError(
                    f"{final}: cannot write the results store ({type(exc).__name__}: {exc})"
                ) from exc
        return final

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify_checksums: bool = True) -> SlideResult:
        """Read a results store written by :meth:`save`; ResultsError if it is
        missing, partial (no completion marker), foreign or corrupt."""
        path = Path(path)
        _, attrs, arrays = _read_store(path, verify_checksums=verify_checksums)
        own = attrs.get(ATTRS_KEY, {})
        try:
            mpp = own.get("mpp")
            result = cls(
                **arrays,
                class_names=list(own["class_names"]),
                slide_size=tuple(own["slide_size"]),
                bag_px=int(own["bag_px"]),
                mpp=tuple(mpp) if isinstance(mpp, list) else mpp,
                failed_reasons=list(own.get("failed_reasons", [])),
                provenance=dict(attrs.get("provenance") or {}),
                degraded=bool(own.get("degraded", False)),
            )
        except ResultsError as exc:
            raise ResultsError(f"{path}: invalid results store: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(
                f"{path}: invalid results store metadata ({type(exc).__name__}: {exc})"
            ) from exc
        return result


def _mark_complete(folder: Path, own: dict[str, Any], marker: dict[str, Any]) -> None:
    """Last writes before the rename: attribute ``complete: true`` then COMPLETE.json."""
    _zarr_update_attrs(folder, {ATTRS_KEY: {**own, "complete": True}})
    _write_json_file(folder / MARKER_NAME, marker)


def _write_json_file(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(_dumps(obj, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, not {value!r}")
