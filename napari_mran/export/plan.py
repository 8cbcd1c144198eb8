"""Which files an export of a result writes, and writing them.

One plan serves ``napari-mran export``, and the napari panel's *Export…* button, so
both name and fill the files the same way:

=============  ===============================================  =====================
kind           file(s) (``<stem>`` = slide file name, no ext.)  levels (default)
=============  ===============================================  =====================
geojson        ``<stem>.bags.geojson``, ``.patches.geojson``,   bag, patch (cell:
               ``.cells.geojson``                               top 64 bags only)
csv            ``<stem>.bags.csv``, ``.patches.csv``,           bag, patch, cell
               ``.cells.csv``
ome_tiff       ``<stem>.<level>-attention-<weighting>.ome.tif``  bag, patch, cell
ome_zarr       ``<stem>.<level>-attention-<weighting>.ome.zarr`` bag, patch, cell
provenance     ``<stem>.provenance.json``                       (one file)
reviews        ``<stem>.reviews.geojson``, ``.reviews.csv``     (the store's review
                                                                marks; docs/review.md)
=============  ===============================================  =====================

The bag level has one attention (gamma), so its heatmaps are always named ``local``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ResultsError
from ..vocab import LEVELS, WEIGHTINGS, ExportKind, export_kind, file_stem

if TYPE_CHECKING:
    from ..results import SlideResult

__all__ = ["DEFAULT_LEVELS", "ExportJob", "KINDS", "LEVELS", "export_plan", "file_stem",
           "normalise_kind", "write_export"]

#: the kinds a plan writes (vocab.ExportKind but the overview, which the CLI draws),
#: spelled with underscores as in ExportJob.kind
KINDS = tuple(k.value.replace("-", "_") for k in ExportKind if k is not ExportKind.OVERVIEW)
DEFAULT_LEVELS = {"geojson": ("bag", "patch"), "csv": LEVELS, "ome_tiff": LEVELS,
                  "ome_zarr": LEVELS}
_PLURAL = {"bag": "bags", "patch": "patches", "cell": "cells"}


def normalise_kind(kind: str) -> str:
    """``"ome-tiff"`` / ``"OME_TIFF"`` -> ``"ome_tiff"`` (the form of ``ExportJob.kind``);
    a kind the plan does not write is a ResultsError naming the kinds."""
    try:
        k = export_kind(kind).value.replace("-", "_")
    except ValueError:
        k = ""
    if k not in KINDS:
        raise ResultsError(f"unknown export format {kind!r}; choose from "
                           f"{', '.join(k.replace('_', '-') for k in KINDS)}")
    return k


@dataclass(frozen=True)
class ExportJob:
    """One file to write: the exporter ``kind``, its ``path`` and keyword ``options``."""

    kind: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)


def export_plan(result: SlideResult | None, folder: str | os.PathLike, kinds: Iterable[str], *,
                weighting: str = "local", levels: Iterable[str] | None = None,
                stem: str | None = None, gzip_geojson: bool = False,
                store: str | os.PathLike | None = None) -> list[ExportJob]:
    """The files that exporting *kinds* of *result* into *folder* writes.

    ``levels`` restricts the levels of every kind that has levels (default: the
    table above); ``stem`` defaults to the slide's file name without its extension;
    ``gzip_geojson`` writes ``.geojson.gz`` files.  ``result`` may be None when ``stem``
    is given and no cell-level GeoJSON is planned (``analyze`` names its outputs so,
    before the result exists).  ``store``: the results store whose review marks the
    ``reviews`` kind exports (required for it).
    """
    from .geojson import MAX_CELL_BAGS

    if weighting not in WEIGHTINGS:
        raise ResultsError(f"weighting must be 'local' or 'global', not {weighting!r}")
    wanted = None
    if levels is not None:
        wanted = [str(v).strip().lower() for v in levels]
        bad = [v for v in wanted if v not in LEVELS]
        if bad:
            raise ResultsError(f"unknown level(s) {bad}; choose from {', '.join(LEVELS)}")
    if not stem:
        if result is None:
            raise ValueError("export_plan needs the result or the file stem")
        stem = file_stem(result.slide_name or "slide") or "slide"
    folder = Path(folder)
    plan: list[ExportJob] = []
    for kind in dict.fromkeys(normalise_kind(k) for k in kinds):
        if kind == "provenance":
            plan.append(ExportJob("provenance", folder / f"{stem}.provenance.json"))
            continue
        if kind == "reviews":
            plan.extend(_review_jobs(folder, stem, store))
            continue
        chosen = DEFAULT_LEVELS[kind] if wanted is None else [v for v in LEVELS if v in wanted]
        for level in chosen:
            if kind == "geojson":
                opts: dict[str, Any] = {"level": level, "weighting": weighting}
                if level == "cell":  # 1024 polygons per bag: the top bags only
                    if result is None:
                        raise ValueError("cell-level GeoJSON is planned from a result")
                    opts["bags"] = [int(i) for i in result.top_bags(MAX_CELL_BAGS)]
                ext = ".geojson.gz" if gzip_geojson else ".geojson"
                plan.append(ExportJob(kind, folder / f"{stem}.{_PLURAL[level]}{ext}", opts))
            elif kind == "csv":
                plan.append(ExportJob(kind, folder / f"{stem}.{_PLURAL[level]}.csv",
                                      {"level": level}))
            else:
                lw = "local" if level == "bag" else weighting
                ext = ".ome.tif" if kind == "ome_tiff" else ".ome.zarr"
                plan.append(ExportJob(kind, folder / f"{stem}.{level}-attention-{lw}{ext}",
                                      {"level": level, "weighting": lw}))
    return plan


def _review_jobs(folder: Path, stem: str, store: str | os.PathLike | None) -> list[ExportJob]:
    """The two files of the ``reviews`` kind (GeoJSON, CSV) of *store*'s marks."""
    if store is None:
        raise ValueError("the reviews export is planned from a results store")
    return [ExportJob("reviews", folder / f"{stem}.reviews.{fmt}",
                      {"store": str(store), "format": fmt}) for fmt in ("geojson", "csv")]


def write_export(result: SlideResult, job: ExportJob, *, overwrite: bool = False) -> Path:
    """Write one planned file through its exporter (atomic; never replaces a file unless
    ``overwrite``)."""
    from . import export_csv, export_geojson, export_ome_tiff, export_ome_zarr, export_provenance
    from .reviews import export_reviews

    funcs: dict[str, Callable[..., Any]] = {"geojson": export_geojson, "csv": export_csv,
                                            "ome_tiff": export_ome_tiff,
                                            "ome_zarr": export_ome_zarr,
                                            "provenance": export_provenance,
                                            "reviews": export_reviews}
    return Path(funcs[normalise_kind(job.kind)](result, job.path, overwrite=overwrite,
                                                **job.options))
