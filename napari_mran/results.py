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
    "DEMO_MODEL_NOTE",
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
RESULTS_VERSION = 2
#: Store versions this napari-mran recognises but refuses to load (see docs/formats.md).
LEGACY_VERSIONS = (1,)
#: Version-1 stores only: the completion marker file (version 2 keeps it in the
#: group attributes, where zarr does not warn about a non-zarr file).
MARKER_NAME = "COMPLETE.json"
ATTRS_KEY = "napari_mran"
#: Group attribute written last: the completion marker and the checksums of every
#: array and of the attributes (docs/formats.md, "Results store").
CHECKSUMS_KEY = "napari_mran_checksums"
NONFINITE_KEY = "_nonfinite_replaced_by_null"
#: Said by every output of a result computed with the bundled demo model.
DEMO_MODEL_NOTE = (
    "computed with the napari-mran demo model (trained on synthetic slides): "
    "a demonstration, not for diagnosis"
)
#: No slide format holds more than 2**32 - 1 pixels per side (TIFF, DICOM: 32-bit sizes).
MAX_SLIDE_SIDE = 2**32 - 1
#: Largest heatmap raster made (pixels; 8 GiB of float32).
MAX_HEATMAP_PIXELS = 2**31

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
# The completion marker is a group attribute: a file at the top of the store would make
# zarr warn ("not recognized as a component of a Zarr hierarchy") whenever it is listed.


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


def _zarr_read(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    import zarr

    group = zarr.open_group(str(folder), mode="r", zarr_format=3)
    # open by name: only what the completion marker lists is read
    return {name: np.asarray(group[name][...]) for name in names}


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data).hexdigest()


def _canonical_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON text of *obj* (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_CHUNK_KEY = re.compile(r"^c(/\d+)*$")
# zarr's LocalStore writes <key>.<uuid4 hex>.partial and renames it: a killed writer
# may leave one behind (only ever inside a hidden .partial- folder).
_ZARR_TEMP = re.compile(r"^(?P<base>.+?)\.[0-9a-f]{32}\.partial$")


def _chunk_files(folder: Path, name: str) -> int:
    """Number of chunk files of array *name* (zarr v3 default chunk keys)."""
    n = 0
    for root, _dirs, files in os.walk(folder / name / "c"):
        n += sum(1 for f in files if f.isdigit())
    return n


def _foreign_entries(
    folder: Path, names: list[str], *, marker_file: bool = False, zarr_temp: bool = False
) -> list[str]:
    """Paths under *folder* that a results store would not contain.

    ``marker_file``: ``COMPLETE.json`` is allowed at the top (version-1 stores);
    ``zarr_temp``: zarr's own temporary files are allowed (a partial store).
    """
    foreign = []
    top_files = {"zarr.json", MARKER_NAME} if marker_file else {"zarr.json"}
    allowed_top = {*top_files, *names}

    def temp_of(fname: str, allowed: set[str]) -> bool:
        m = _ZARR_TEMP.match(fname) if zarr_temp else None
        return bool(m) and (m["base"] in allowed or m["base"] + ".json" in allowed)

    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        parts = rel_root.parts
        for fname in files:
            rel = (rel_root / fname).as_posix()
            if not parts:
                ok = fname in top_files or temp_of(fname, {"zarr.json"})
            elif parts[0] in names:
                if len(parts) == 1:
                    ok = fname == "zarr.json" or temp_of(fname, {"zarr.json"})
                else:
                    ok = bool(_CHUNK_KEY.match("/".join(parts[1:]))) and (
                        fname.isdigit() or (temp_of(fname, {fname.split(".")[0]})
                                            and fname.split(".")[0].isdigit()))
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


def _strict_loads(text: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"non-finite number {constant} (not strict JSON)")

    return json.loads(text, parse_constant=reject)


def _marker_body(arrays: dict[str, dict[str, Any]], own: dict[str, Any],
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """The completion marker of a version-2 store (without its own ``sha256``)."""
    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "arrays": arrays,
        "attributes": {
            ATTRS_KEY: {k: _canonical_sha256(v) for k, v in own.items() if k != "complete"},
            "provenance": _canonical_sha256(provenance),
        },
    }


def _verify_marker(path: Path, attrs: dict[str, Any]) -> dict[str, Any]:
    """Check the version-2 completion marker and that it covers every attribute as
    written; return its ``arrays`` table."""
    own = attrs[ATTRS_KEY]
    marker = attrs.get(CHECKSUMS_KEY)
    if marker is None or own.get("complete") is not True:
        raise ResultsError(
            f"{path}: incomplete results store (no completion marker): the write was "
            "interrupted or the folder was copied partially; analyse the slide again"
        )
    try:
        table = marker["arrays"]
        hashes = marker["attributes"]
        if (marker.get("format") != RESULTS_FORMAT or marker.get("version") != RESULTS_VERSION
                or not isinstance(table, dict) or not isinstance(hashes, dict)
                or not isinstance(hashes.get(ATTRS_KEY), dict)):
            raise ValueError("unexpected content")
        body = {k: marker[k] for k in ("format", "version", "arrays", "attributes")}
        ok = _canonical_sha256(body) == marker.get("sha256")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResultsError(
            f"{path}: corrupt completion marker (attribute {CHECKSUMS_KEY}: {exc})"
        ) from None
    if not ok:
        raise ResultsError(
            f"{path}: the completion marker does not match its own checksum (attribute "
            f"{CHECKSUMS_KEY} was edited or is corrupt)"
        )
    extra = sorted(set(attrs) - {ATTRS_KEY, "provenance", CHECKSUMS_KEY})
    if extra:
        raise ResultsError(
            f"{path}: group attribute(s) {extra} were added after the store was written "
            "(not covered by its checksums)"
        )
    own_hashes = hashes[ATTRS_KEY]
    for key in sorted(set(own) | set(own_hashes)):
        if key == "complete":
            continue
        if key not in own_hashes:
            raise ResultsError(
                f"{path}: attribute {ATTRS_KEY}.{key} was added after the store was written "
                "(not covered by its checksums)"
            )
        if key not in own:
            raise ResultsError(f"{path}: attribute {ATTRS_KEY}.{key} is missing")
        if _canonical_sha256(own[key]) != own_hashes[key]:
            raise ResultsError(
                f"{path}: attribute {ATTRS_KEY}.{key} does not match the store's checksum "
                f"(edited or corrupt: {_short(own[key])}); run the analysis again"
            )
    if "provenance" not in attrs or _canonical_sha256(attrs["provenance"]) != hashes.get(
        "provenance"
    ):
        raise ResultsError(
            f"{path}: attribute provenance does not match the store's checksum (edited or "
            "corrupt); run the analysis again"
        )
    return table


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _legacy_marker(path: Path, own: dict[str, Any]) -> dict[str, Any]:
    """The ``arrays`` table of a version-1 store's COMPLETE.json."""
    marker_path = path / MARKER_NAME
    if not marker_path.is_file() or own.get("complete") is not True:
        raise ResultsError(f"{path}: incomplete version-1 results store (no {MARKER_NAME})")
    try:
        marker = _strict_loads(marker_path.read_text(encoding="utf-8"))
        table = marker["arrays"]
        if marker.get("format") != RESULTS_FORMAT or not isinstance(table, dict):
            raise ValueError("unexpected content")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{path}: corrupt completion marker {MARKER_NAME} ({exc})") from exc
    return table


def _read_store(
    path: Path, verify_checksums: bool = True, *, allow_legacy: bool = False
) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """Verify and read a results store -> (marker arrays table, attrs, arrays).

    ResultsError on any problem: not a store, incomplete, an attribute or array that
    does not match its checksum, or attributes inconsistent with the arrays.
    ``allow_legacy`` (replace checks only) accepts a complete version-1 store,
    whose attributes are not checksummed.
    """
    if not path.exists():
        raise ResultsError(f"{path}: does not exist")
    if not path.is_dir():
        raise ResultsError(f"{path}: is not a folder (a results store is a .mran.zarr folder)")
    if not (path / "zarr.json").is_file():
        if (path / ".zgroup").exists():
            raise ResultsError(f"{path}: is a zarr v2 store, not a napari-mran results store")
        raise ResultsError(f"{path}: not a napari-mran results store (no zarr.json)")
    try:
        meta = _strict_loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: corrupt store metadata (zarr.json: {exc})") from exc
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    own = attrs.get(ATTRS_KEY) if isinstance(attrs, dict) else None
    if not isinstance(own, dict) or own.get("format") != RESULTS_FORMAT:
        raise ResultsError(f"{path}: a zarr store that is not a napari-mran results store")
    version = own.get("version")
    legacy = version in LEGACY_VERSIONS and not isinstance(version, bool)
    if legacy and not allow_legacy:
        raise ResultsError(
            f"{path}: written by an older napari-mran (results store version {version}), "
            "whose attributes are not covered by checksums, so it cannot be verified; "
            "run `napari-mran analyze` again to re-create it (with --overwrite to replace it)"
        )
    if not legacy and (version != RESULTS_VERSION or isinstance(version, bool)):
        raise ResultsError(
            f"{path}: results store version {version!r} is not supported "
            f"(this napari-mran reads version {RESULTS_VERSION})"
        )
    table = _legacy_marker(path, own) if legacy else _verify_marker(path, attrs)
    names = list(_ARRAYS) + [n for n in _OPTIONAL_ARRAYS if n in table]
    if sorted(table) != sorted(names):
        raise ResultsError(
            f"{path}: completion marker lists arrays {sorted(table)}, expected "
            f"{sorted(_ARRAYS)} (optionally with {sorted(_OPTIONAL_ARRAYS)})"
        )
    expected_dtype = {**{n: d for n, (d, _) in _ARRAYS.items()}, **_OPTIONAL_ARRAYS}
    entries = {}
    for name in names:
        entry = table[name]
        try:
            shape, dtype = tuple(int(v) for v in entry["shape"]), np.dtype(entry["dtype"])
            chunk_files = None if legacy else int(entry["chunk_files"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"{path}: corrupt completion marker entry for {name!r}") from exc
        if dtype != expected_dtype[name]:
            raise ResultsError(
                f"{path}: array {name!r} is recorded as {dtype}, a results store holds "
                f"{expected_dtype[name]}"
            )
        if chunk_files is not None:
            found = _chunk_files(path, name)
            if found != chunk_files:
                raise ResultsError(
                    f"{path}: array {name!r} does not match its checksum record: {found} "
                    f"chunk files, {chunk_files} written (chunks lost or added: a partial "
                    "copy?)"
                )
        entries[name] = (shape, dtype, entry.get("sha256"))
    try:
        arrays = _zarr_read(path, names)
    except KeyError as exc:
        raise ResultsError(f"{path}: array {exc.args[0]!r} is missing") from None
    except Exception as exc:  # zarr/codec errors come in many classes
        raise ResultsError(f"{path}: cannot read the store ({type(exc).__name__}: {exc})") from exc
    for name in names:
        arr, (shape, dtype, sha) = arrays[name], entries[name]
        if arr.shape != shape or arr.dtype != dtype:
            raise ResultsError(
                f"{path}: array {name!r} is {arr.shape} {arr.dtype}, the completion marker "
                f"says {shape} {dtype}"
            )
        if verify_checksums and _sha256(arr) != sha:
            raise ResultsError(
                f"{path}: array {name!r} does not match its checksum (corrupt or modified)"
            )
    if not legacy:
        problems = _consistency_problems(own, attrs.get("provenance"), arrays)
        if problems:
            raise ResultsError(
                f"{path}: inconsistent results store: {problems[0]}"
                + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")
            )
    return table, attrs, arrays


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def _consistency_problems(
    own: dict[str, Any], provenance: Any, arrays: dict[str, np.ndarray]
) -> list[str]:
    """What is wrong with a store's attributes, alone and against its arrays ([] if
    nothing).  Checked before saving and after loading: a store that ``save`` writes
    always loads."""
    from napari_mran.slide._metadata import MPP_MAX, MPP_MIN

    problems: list[str] = []
    names = own.get("class_names")
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names)):
        problems.append(f"class_names must be a non-empty list of distinct names, not "
                        f"{_short(names)}")
        names = None
    size = own.get("slide_size")
    if (not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size)
            or not all(1 <= v <= MAX_SLIDE_SIDE for v in size)):
        problems.append(f"slide_size must be [width, height] in whole pixels, 1 to "
                        f"{MAX_SLIDE_SIDE} each, not {_short(size)}")
        size = None
    bag_px = own.get("bag_px")
    if not _is_int(bag_px) or not CELLS_PER_SIDE <= bag_px <= MAX_SLIDE_SIDE:
        problems.append(f"bag_px must be a whole number of pixels >= {CELLS_PER_SIDE}, not "
                        f"{_short(bag_px)}")
        bag_px = None
    mpp = own.get("mpp")
    if mpp is not None:
        vals = mpp if isinstance(mpp, list) and len(mpp) == 2 else [mpp]
        if (isinstance(mpp, list) and len(mpp) != 2) or not all(
                _is_number(v) and math.isfinite(v) and MPP_MIN <= v <= MPP_MAX for v in vals):
            problems.append(f"mpp must be null, a number or an [x, y] pair within the "
                            f"plausible {MPP_MIN}-{MPP_MAX} µm/px, not {_short(mpp)}")
    if not isinstance(own.get("degraded"), bool):
        problems.append(f"degraded must be true or false, not {_short(own.get('degraded'))}")
    reasons = own.get("failed_reasons")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        problems.append("failed_reasons must be a list of strings")
        reasons = None
    if not isinstance(provenance, dict):
        problems.append("the provenance attribute must be a JSON object")
    else:
        model = provenance.get("model")
        demo = isinstance(model, dict) and model.get("demo") is True
        if own.get("model_is_demo") is not demo:
            problems.append(f"model_is_demo is {_short(own.get('model_is_demo'))} but the "
                            f"provenance says the model is {'' if demo else 'not '}the demo model")

    # shapes: N bags, C classes, K failed bags
    boxes = arrays.get("boxes")
    if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 4:
        problems.append(f"boxes must be (N, 4), not {None if boxes is None else boxes.shape}")
        return problems
    n = boxes.shape[0]
    if own.get("n_bags") != n or not _is_int(own.get("n_bags")):
        problems.append(f"n_bags is {_short(own.get('n_bags'))} but boxes holds {n} bags")
    c = len(names) if names is not None else None
    for name, (_dtype, trailing) in _ARRAYS.items():
        arr = arrays.get(name)
        if arr is None or c is None or name == "boxes":
            continue
        if name == "slide_probs":
            expected: tuple[int, ...] = (c,)
        elif name == "failed_boxes":
            expected = (arr.shape[0] if arr.ndim == 2 else -1, 4)
        else:
            expected = (n, *trailing(c))
        if arr.shape != expected:
            problems.append(f"{name} is {arr.shape}, expected {expected} for {n} bags and "
                            f"{c} classes {names}")
    emb = arrays.get("embeddings")
    if emb is not None and (emb.ndim != 2 or emb.shape[0] != n or emb.shape[1] < 1):
        problems.append(f"embeddings is {emb.shape}, expected ({n}, E)")
    failed = arrays.get("failed_boxes")
    if failed is not None and reasons is not None and failed.ndim == 2 \
            and failed.shape[0] != len(reasons):
        problems.append(f"{failed.shape[0]} failed boxes but {len(reasons)} failure reasons")

    # geometry: every box a bag_px square on the grid that starts inside the slide
    if size is not None and bag_px is not None:
        w, h = size
        keys: list[np.ndarray] = []
        for name in ("boxes", "failed_boxes"):
            b = arrays.get(name)
            if b is None or b.ndim != 2 or b.shape[1] != 4 or not b.shape[0]:
                continue
            b = b.astype(np.int64)
            bad = ((b[:, 2] - b[:, 0] != bag_px) | (b[:, 3] - b[:, 1] != bag_px)
                   | (b[:, 0] % bag_px != 0) | (b[:, 1] % bag_px != 0)
                   | (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 0] >= w) | (b[:, 1] >= h))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                problems.append(
                    f"{name}[{i}] = {b[i].tolist()} is not a {bag_px} px bag of the grid of "
                    f"a {w} x {h} px slide ({int(bad.sum())} such box(es))")
                continue
            keys.append((b[:, 1] // bag_px) * (w // bag_px + 1) + b[:, 0] // bag_px)
        if keys:
            allk = np.concatenate(keys)
            if np.unique(allk).size != allk.size:
                problems.append("two boxes (analysed or failed) cover the same bag")
    return problems


def verify_store(path: str | os.PathLike) -> str | None:
    """None when *path* is a complete, verified results store holding nothing else.

    Otherwise the reason (used to decide whether a store may be skipped or replaced).
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


def _replace_check(path: Path) -> str | None:
    """``save(overwrite=True)``: None when *path* may be replaced -- a verified store
    of this version, or a complete version-1 store (arrays verified against its
    COMPLETE.json), holding nothing else."""
    path = Path(path)
    if path.is_symlink():
        return "it is a symbolic link"
    try:
        _read_store(path, allow_legacy=True)
    except ResultsError as exc:
        return str(exc)
    foreign = _foreign_entries(path, [*_ARRAYS, *_OPTIONAL_ARRAYS],
                               marker_file=(path / MARKER_NAME).is_file())
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        return f"it holds files that are not part of a results store ({shown})"
    return None


def _partial_store_check(path: Path) -> str | None:
    """None when *path* (a stale ``.partial-`` folder of a killed save) holds only what
    :meth:`SlideResult.save` writes, so it may be deleted."""
    if path.is_symlink() or not path.is_dir():
        return "it is not a folder"
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            own = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})[ATTRS_KEY]
            if own.get("format") != RESULTS_FORMAT:
                raise ValueError("foreign")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "its zarr.json is not that of a napari-mran results store"
    foreign = _foreign_entries(path, [*_ARRAYS, *_OPTIONAL_ARRAYS], zarr_temp=True)
    if foreign:
        return "it holds files a results store does not (" + ", ".join(foreign[:5]) + ")"
    return None


def is_results_store(path: str | os.PathLike) -> bool:
    """True when *path* is a complete napari-mran results store of this version
    (attributes, chunk counts and consistency verified; array checksums not)."""
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
            # partial edge bags (edge policy "pad") reach past the right/bottom edge
            if np.any(b[:, :2] < 0) or np.any(b[:, 0] >= w) or np.any(b[:, 1] >= h):
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
        """(rows, cols) of the bag grid covering the whole slide (partial edge bags
        included, as analysed with edge policy "pad"; NaN where nothing was analysed)."""
        w, h = self.slide_size
        return (-(-h // self.bag_px), -(-w // self.bag_px))

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
    def model_is_demo(self) -> bool:
        """True when the result was computed with the bundled synthetic demo model
        (``provenance["model"]["demo"] is True``): every export then says so."""
        model = self.provenance.get("model")
        return isinstance(model, dict) and model.get("demo") is True

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

    def slide_boxes(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`level_boxes` clipped to the slide, and a mask of the objects that
        overlap the slide at all.  Partial edge bags (edge policy ``"pad"``) reach past
        the right/bottom edge; exports report only what lies on the slide."""
        boxes = self.level_boxes(level)
        w, h = self.slide_size
        clipped = np.minimum(boxes, np.array([w, h, w, h], dtype=boxes.dtype))
        inside = (clipped[..., 2] > clipped[..., 0]) & (clipped[..., 3] > clipped[..., 1])
        return clipped, inside

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
        (cell); NaN where no tissue bag was analysed and where a pixel lies wholly past
        the slide's edge (the padding of partial edge bags).  ``data[0, 0]``'s top-left
        corner is the slide's level-0 origin.
        """
        vals = self.scores(level, weighting, value, class_index)
        k = _PIXELS_PER_BAG[level]
        rows, cols = self.grid_shape
        if rows * k * cols * k > MAX_HEATMAP_PIXELS:
            raise ResultsError(
                f"the {level} heatmap of a {self.slide_size[0]} x {self.slide_size[1]} px "
                f"slide with {self.bag_px} px bags would be {rows * k} x {cols * k} px, "
                f"more than {MAX_HEATMAP_PIXELS} pixels"
            )
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
        # pixels wholly past the slide's edge (padded edge bags): nothing is there
        w, h = self.slide_size
        data[np.arange(data.shape[0]) * step >= h, :] = np.nan
        data[:, np.arange(data.shape[1]) * step >= w] = np.nan
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
                "model_is_demo": self.model_is_demo,
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

        Built in a hidden temporary sibling folder, completed by the marker attribute
        ``napari_mran_checksums`` (sha256 of every array and of every attribute,
        chunk-file counts) and renamed onto *path*.  An existing *path* is never
        touched unless ``overwrite=True``, and then only if it is itself a verified
        results store holding nothing else.  Stale ``.partial-`` folders of this
        store name left by a killed save are removed first (rule: docs/formats.md).
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
            "model_is_demo": self.model_is_demo,
        }
        own, _ = strict_json(own)
        problems = _consistency_problems(own, self.provenance, arrays)
        if problems:
            raise ResultsError(f"{final}: cannot save this result: " + "; ".join(problems))
        with atomic_dir(final, overwrite=overwrite, replace_check=_replace_check,
                        stale_check=_partial_store_check) as tmp:
            try:
                _zarr_write(tmp, arrays, {ATTRS_KEY: own, "provenance": self.provenance})
                table = {
                    name: {"shape": list(arr.shape), "dtype": arr.dtype.str,
                           "sha256": _sha256(arr), "chunk_files": _chunk_files(tmp, name)}
                    for name, arr in arrays.items()
                }
                _mark_complete(tmp, own, _marker_body(table, own, self.provenance))
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
        """Read a results store written by :meth:`save`.

        ResultsError naming the store and the reason if it is missing, partial (no
        completion marker), foreign, corrupt, edited (an array or attribute that does
        not match its checksum), inconsistent (attributes that do not fit the arrays,
        implausible MPP or slide size) or of an older version (re-run the analysis).
        ``verify_checksums=False`` skips only the array checksums (large stores).
        """
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
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ResultsError(
                f"{path}: invalid results store metadata ({type(exc).__name__}: {exc})"
            ) from exc
        return result


def _mark_complete(folder: Path, own: dict[str, Any], marker: dict[str, Any]) -> None:
    """The last write before the rename: attribute ``complete: true`` and the
    completion marker (with the checksum of its own canonical JSON), in one update of
    the group's zarr.json."""
    marker = {**marker, "sha256": _canonical_sha256(marker)}
    _zarr_update_attrs(folder, {ATTRS_KEY: {**own, "complete": True}, CHECKSUMS_KEY: marker})


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, not {value!r}")
