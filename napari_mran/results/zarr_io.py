"""The zarr side of a results store: every zarr call (zarr 3.x API, zarr v3 stores),
array checksums, chunk counts and what a store folder may contain.

The completion marker is a group attribute: a file at the top of the store would make
zarr warn ("not recognized as a component of a Zarr hierarchy") whenever it is listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_file
from .schema import MARKER_NAME
from .strict import strict_loads

__all__ = ["REVIEWS_GROUP", "array_sha256", "chunk_files", "foreign_entries",
           "read_subgroup_attrs", "write_subgroup_attrs", "zarr_read", "zarr_update_attrs",
           "zarr_write"]

#: the one sub-group a results store may hold besides its arrays: the review marks
#: (docs/review.md), outside the store's checksums; only its ``zarr.json`` is allowed
REVIEWS_GROUP = "reviews"
#: the name an atomic save of the marks writes first (napari_mran._atomic)
_REVIEWS_PARTIAL = re.compile(r"^\.zarr\.json\.partial-\d+-[0-9a-f]{8}$")


def zarr_write(folder: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """A new zarr v3 group at *folder*: *attrs*, then every array in chunks of <= 8 MiB."""
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


def zarr_update_attrs(folder: Path, attrs: dict[str, Any]) -> None:
    """Add or replace group attributes (one write of the group's zarr.json)."""
    import zarr

    group = zarr.open_group(str(folder), mode="r+", zarr_format=3)
    group.attrs.update(attrs)


def zarr_read(folder: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays *names* of the group at *folder*; KeyError names a missing one."""
    import zarr

    group = zarr.open_group(str(folder), mode="r", zarr_format=3)
    out = {}
    for name in names:  # open by name: only what the completion marker lists is read
        node = group[name]
        if not isinstance(node, zarr.Array):
            raise KeyError(name)
        out[name] = np.asarray(node[...])
    return out


def read_subgroup_attrs(folder: Path, name: str) -> dict[str, Any] | None:
    """The attributes of the zarr v3 sub-group *name* of *folder* (its ``zarr.json``
    only, no zarr call); None when it has none.  ValueError/OSError when unreadable."""
    meta_path = folder / name / "zarr.json"
    if not meta_path.is_file():
        return None
    meta = strict_loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3 \
            or meta.get("node_type") != "group" or not isinstance(meta.get("attributes"), dict):
        raise ValueError(f"{name}/zarr.json is not the metadata of a zarr v3 group")
    return meta["attributes"]


def write_subgroup_attrs(folder: Path, name: str, attrs: dict[str, Any]) -> Path:
    """Write (atomically: temporary sibling + rename) the ``zarr.json`` of the zarr v3
    sub-group *name* of *folder*, creating the sub-group; return that file."""
    sub = folder / name
    if not sub.is_dir():
        sub.mkdir()
    meta = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    text = json.dumps(meta, sort_keys=True, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":"))
    with atomic_file(sub / "zarr.json", overwrite=True) as fh:
        fh.write(text + "\n")
    return sub / "zarr.json"


def array_sha256(arr: np.ndarray) -> str:
    """sha256 of the array's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data).hexdigest()


_CHUNK_KEY = re.compile(r"^c(/\d+)*$")
# zarr's LocalStore writes <key>.<uuid4 hex>.partial and renames it: a killed writer
# may leave one behind (only ever inside a hidden .partial- folder).
_ZARR_TEMP = re.compile(r"^(?P<base>.+?)\.[0-9a-f]{32}\.partial$")


def chunk_files(folder: Path, name: str) -> int:
    """Number of chunk files of array *name* (zarr v3 default chunk keys)."""
    n = 0
    for root, _dirs, files in os.walk(folder / name / "c"):
        n += sum(1 for f in files if f.isdigit())
    return n


def foreign_entries(
    folder: Path, names: list[str], *, marker_file: bool = False, zarr_temp: bool = False
) -> list[str]:
    """Paths under *folder* that a results store would not contain.

    ``marker_file``: ``COMPLETE.json`` is allowed at the top (version-1 stores);
    ``zarr_temp``: zarr's own temporary files are allowed (a partial store).
    """
    foreign: list[str] = []
    top_files = {"zarr.json", MARKER_NAME} if marker_file else {"zarr.json"}
    allowed_top = {*top_files, *names, REVIEWS_GROUP}

    def temp_of(fname: str, allowed: set[str]) -> bool:
        m = _ZARR_TEMP.match(fname) if zarr_temp else None
        return m is not None and (m["base"] in allowed or m["base"] + ".json" in allowed)

    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        parts = rel_root.parts
        for fname in files:
            rel = (rel_root / fname).as_posix()
            if not parts:
                ok = fname in top_files or temp_of(fname, {"zarr.json"})
            elif parts[0] == REVIEWS_GROUP and parts[0] not in names:
                # the marks, or the hidden leftover of a killed save of them (removed by
                # the next load or save of the marks)
                ok = len(parts) == 1 and (fname == "zarr.json"
                                          or bool(_REVIEWS_PARTIAL.match(fname)))
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
