"""The region of interest of each slide of a cohort: ``<slide stem>.geojson`` (or
``.json``) in a folder (docs/roi.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..roi import Region, RoiError, read_geojson
from ..vocab import file_stem

__all__ = ["ROI_SUFFIXES", "regions_from_dir"]

ROI_SUFFIXES = (".geojson", ".json")


def _region_file(folder: Path, slide: str) -> Path | None:
    stem = file_stem(slide)
    for suffix in ROI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def regions_from_dir(folder: str | os.PathLike, slides: Sequence[str],
                     classes: Iterable[str] = (), *, missing: str = "error"
                     ) -> dict[str, Region]:
    """{slide: Region} from ``folder/<slide stem>.geojson`` (or ``.json``).  A slide
    without one is an error listing every such slide, unless ``missing="whole"``
    (those slides are analysed whole).  Every file is read (and checked) here."""
    if missing not in ("error", "whole"):
        raise ValueError(f"missing must be 'error' or 'whole', not {missing!r}")
    root = Path(folder)
    if not root.is_dir():
        raise RoiError(f"{root}: the region folder does not exist or is not a folder")
    classes = list(classes)
    found = {s: _region_file(root, s) for s in slides}
    without = [os.path.basename(s) for s, f in found.items() if f is None]
    if without and missing == "error":
        more = f" and {len(without) - 5} more" if len(without) > 5 else ""
        raise RoiError(f"{root}: no region file (<slide stem>.geojson or .json) for "
                       f"{len(without)} slide(s): {', '.join(without[:5])}{more}; add them, "
                       "or analyse those slides whole with --roi-missing whole")
    return {s: read_geojson(f, classes) for s, f in found.items() if f is not None}
