"""The results store on disk (docs/formats.md, "Results store"): written atomically and
completed by a marker with the checksums of every array and attribute; read back only
when all of it verifies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_dir
from ..errors import ResultsError
from .marker import legacy_marker, mark_complete, marker_body, verify_marker
from .schema import (ALL_ARRAYS, ARRAYS, ATTRS_KEY, CHECKSUMS_KEY, LEGACY_VERSIONS, MARKER_NAME,
                     OPTIONAL_ARRAYS, RESULTS_FORMAT, RESULTS_VERSION)
from .strict import strict_loads
from .validation import consistency_problems
from .zarr_io import (REVIEWS_GROUP, array_sha256, chunk_files, foreign_entries,
                      read_subgroup_attrs, zarr_read, zarr_write)

__all__ = ["REVIEWS_GROUP", "REVIEWS_KEY", "is_results_store", "read_bag_boxes", "read_store",
           "read_verified_attrs", "review_record", "save_store", "store_checksum", "verify_store"]

#: attribute of the ``reviews/`` sub-group holding the review marks (docs/review.md)
REVIEWS_KEY = "napari_mran_reviews"

#: one marker entry: (shape, dtype, sha256 or None)
_Entry = tuple[tuple[int, ...], np.dtype, Any]


# --------------------------------------------------------------------------- write


def save_store(final: Path, arrays: dict[str, np.ndarray], own: dict[str, Any],
               provenance: dict[str, Any], *, overwrite: bool) -> Path:
    """Write the store atomically (see :meth:`SlideResult.save`); return *final*."""
    problems = consistency_problems(own, provenance, arrays)
    if problems:
        raise ResultsError(f"{final}: cannot save this result: " + "; ".join(problems))
    with atomic_dir(final, overwrite=overwrite, replace_check=_replace_check,
                    stale_check=_partial_store_check) as tmp:
        try:
            zarr_write(tmp, arrays, {ATTRS_KEY: own, "provenance": provenance})
            table = {
                name: {"shape": list(arr.shape), "dtype": arr.dtype.str,
                       "sha256": array_sha256(arr), "chunk_files": chunk_files(tmp, name)}
                for name, arr in arrays.items()
            }
            mark_complete(tmp, own, marker_body(table, own, provenance))
        except (OSError, ResultsError):
            raise
        except Exception as exc:
            raise ResultsError(
                f"{final}: cannot write the results store ({type(exc).__name__}: {exc})"
            ) from exc
    return final


# --------------------------------------------------------------------------- read


def read_store(
    path: Path, verify_checksums: bool = True, *, allow_legacy: bool = False
) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Verify and read a results store -> (marker arrays table, attrs, arrays).

    ResultsError on any problem: not a store, incomplete, an attribute or array that
    does not match its checksum, or attributes inconsistent with the arrays.
    ``allow_legacy`` (replace checks only) accepts a complete version-1 store,
    whose attributes are not checksummed.
    """
    attrs = _read_attrs(path)
    own = attrs[ATTRS_KEY]
    legacy = _check_version(path, own.get("version"), allow_legacy)
    table = legacy_marker(path, own) if legacy else verify_marker(path, attrs)
    names = list(ARRAYS) + [n for n in OPTIONAL_ARRAYS if n in table]
    if sorted(table) != sorted(names):
        raise ResultsError(
            f"{path}: completion marker lists arrays {sorted(table)}, expected "
            f"{sorted(ARRAYS)} (optionally with {sorted(OPTIONAL_ARRAYS)})"
        )
    entries = {name: _marker_entry(path, name, table[name], legacy) for name in names}
    arrays = _read_arrays(path, entries, verify_checksums)
    if not legacy:
        problems = consistency_problems(own, attrs.get("provenance"), arrays)
        if problems:
            raise ResultsError(
                f"{path}: inconsistent results store: {problems[0]}"
                + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")
            )
    return table, attrs, arrays


def _read_attrs(path: Path) -> dict[str, Any]:
    """The group attributes of a folder that claims to be one of our stores."""
    if not path.exists():
        raise ResultsError(f"{path}: does not exist")
    if not path.is_dir():
        raise ResultsError(f"{path}: is not a folder (a results store is a .mran.zarr folder)")
    if not (path / "zarr.json").is_file():
        if (path / ".zgroup").exists():
            raise ResultsError(f"{path}: is a zarr v2 store, not a napari-mran results store")
        raise ResultsError(f"{path}: not a napari-mran results store (no zarr.json)")
    try:
        meta = strict_loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: corrupt store metadata (zarr.json: {exc})") from exc
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    own = attrs.get(ATTRS_KEY) if isinstance(attrs, dict) else None
    if not isinstance(attrs, dict) or not isinstance(own, dict) \
            or own.get("format") != RESULTS_FORMAT:
        raise ResultsError(f"{path}: a zarr store that is not a napari-mran results store")
    return attrs


def _check_version(path: Path, version: Any, allow_legacy: bool) -> bool:
    """True for a (permitted) version-1 store; ResultsError for an unsupported one."""
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
    return legacy


def _marker_entry(path: Path, name: str, entry: Any, legacy: bool) -> _Entry:
    """(shape, dtype, sha256) of array *name* in the marker; its chunk files counted."""
    expected = ARRAYS[name][0] if name in ARRAYS else OPTIONAL_ARRAYS[name]
    try:
        shape, dtype = tuple(int(v) for v in entry["shape"]), np.dtype(entry["dtype"])
        n_chunks = None if legacy else int(entry["chunk_files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{path}: corrupt completion marker entry for {name!r}") from exc
    if dtype != expected:
        raise ResultsError(
            f"{path}: array {name!r} is recorded as {dtype}, a results store holds {expected}"
        )
    if n_chunks is not None:
        found = chunk_files(path, name)
        if found != n_chunks:
            raise ResultsError(
                f"{path}: array {name!r} does not match its checksum record: {found} "
                f"chunk files, {n_chunks} written (chunks lost or added: a partial copy?)"
            )
    return shape, dtype, entry.get("sha256")


def _read_arrays(path: Path, entries: dict[str, _Entry], verify_checksums: bool
                 ) -> dict[str, np.ndarray]:
    """The arrays, each checked against its marker entry."""
    try:
        arrays = zarr_read(path, list(entries))
    except KeyError as exc:
        raise ResultsError(f"{path}: array {exc.args[0]!r} is missing") from None
    except Exception as exc:  # zarr/codec errors come in many classes
        raise ResultsError(f"{path}: cannot read the store ({type(exc).__name__}: {exc})") from exc
    for name, (shape, dtype, sha) in entries.items():
        arr = arrays[name]
        if arr.shape != shape or arr.dtype != dtype:
            raise ResultsError(
                f"{path}: array {name!r} is {arr.shape} {arr.dtype}, the completion marker "
                f"says {shape} {dtype}"
            )
        if verify_checksums and array_sha256(arr) != sha:
            raise ResultsError(
                f"{path}: array {name!r} does not match its checksum (corrupt or modified)"
            )
    return arrays


# --------------------------------------------------------------------------- checks


def _whole_store_reason(path: Path, *, legacy: bool) -> str | None:
    """None when *path* is a verified store (a complete version-1 store too with
    *legacy*) holding nothing else; otherwise the reason."""
    if path.is_symlink():
        return "it is a symbolic link"
    try:
        read_store(path, allow_legacy=legacy)
    except ResultsError as exc:
        return str(exc)
    foreign = foreign_entries(path, list(ALL_ARRAYS),
                              marker_file=legacy and (path / MARKER_NAME).is_file())
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        return f"it holds files that are not part of a results store ({shown})"
    return None


def verify_store(path: str | os.PathLike) -> str | None:
    """None when *path* is a complete, verified results store holding nothing else.

    Otherwise the reason (used to decide whether a store may be skipped or replaced).
    """
    return _whole_store_reason(Path(path), legacy=False)


def _replace_check(path: Path) -> str | None:
    """``save(overwrite=True)``: None when *path* may be replaced -- a verified store
    of this version, or a complete version-1 store (arrays verified against its
    COMPLETE.json), holding nothing else and no review marks."""
    return _whole_store_reason(Path(path), legacy=True) or reviews_reason(Path(path))


def reviews_reason(path: str | os.PathLike) -> str | None:
    """Why the store at *path* must not be replaced because of its review marks (None:
    it holds none): a pathologist's marks are never deleted by a re-analysis."""
    path = Path(path)
    try:
        record = review_record(path)
    except ResultsError as exc:
        return f"it holds review marks that cannot be read ({exc})"
    marks = record.get("marks") if record else None
    if not marks:
        return None
    names = sorted({str(m.get("reviewer")) for m in marks if isinstance(m, dict)})
    return (f"it holds {len(marks)} review mark(s) by {', '.join(names) or 'unknown'}; export "
            "them with `napari-mran export --format reviews` or move the store")


def review_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The raw review record (attribute ``napari_mran_reviews`` of the ``reviews/``
    sub-group) of the store at *path*; None when it has none.  Its content is checked by
    :mod:`napari_mran.review`; here only that it is a JSON object (ResultsError if not)."""
    path = Path(path)
    try:
        attrs = read_subgroup_attrs(path, REVIEWS_GROUP)
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: corrupt review marks ({REVIEWS_GROUP}/zarr.json: {exc})"
                           ) from exc
    if attrs is None:
        return None
    record = attrs.get(REVIEWS_KEY)
    if not isinstance(record, dict):
        raise ResultsError(f"{path}: corrupt review marks ({REVIEWS_GROUP}/zarr.json has no "
                           f"{REVIEWS_KEY} object)")
    return record


def read_verified_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The group attributes of a store of this version, verified against its completion
    marker (no array is read); ResultsError when they do not verify."""
    path = Path(path)
    attrs = _read_attrs(path)
    _check_version(path, attrs[ATTRS_KEY].get("version"), False)
    verify_marker(path, attrs)
    return attrs


def store_checksum(attrs: dict[str, Any]) -> str:
    """The sha256 of a verified store's completion marker (from its attributes): it
    changes whenever the store is written again."""
    return str(attrs[CHECKSUMS_KEY]["sha256"])


def read_bag_boxes(path: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray]:
    """(group attributes, bag boxes) of a store, attributes and the ``boxes`` array
    verified against the completion marker -- without reading the other arrays."""
    path = Path(path)
    attrs = _read_attrs(path)
    _check_version(path, attrs[ATTRS_KEY].get("version"), False)
    table = verify_marker(path, attrs)
    if "boxes" not in table:
        raise ResultsError(f"{path}: completion marker lists no 'boxes' array")
    entry = _marker_entry(path, "boxes", table["boxes"], False)
    return attrs, _read_arrays(path, {"boxes": entry}, True)["boxes"]


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
    foreign = foreign_entries(path, list(ALL_ARRAYS), zarr_temp=True)
    if foreign:
        return "it holds files a results store does not (" + ", ".join(foreign[:5]) + ")"
    return None


def is_results_store(path: str | os.PathLike) -> bool:
    """True when *path* is a complete napari-mran results store of this version
    (attributes, chunk counts and consistency verified; array checksums not)."""
    try:
        read_store(Path(path), verify_checksums=False)
    except ResultsError:
        return False
    return True
