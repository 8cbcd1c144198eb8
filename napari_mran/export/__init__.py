"""Exporters of a :class:`~napari_mran.results.SlideResult`.

Every exporter writes atomically (temporary sibling + rename) and refuses to
overwrite an existing path unless ``overwrite=True``.  Formats: docs/formats.md.
"""

from napari_mran.export.geojson import export_geojson
from napari_mran.export.heatmaps import export_ome_tiff, export_ome_zarr
from napari_mran.export.table import csv_safe, export_csv, export_provenance
from napari_mran.export.plan import ExportJob, export_plan, file_stem, write_export

__all__ = [
    "ExportJob",
    "csv_safe",
    "export_csv",
    "export_geojson",
    "export_ome_tiff",
    "export_ome_zarr",
    "export_plan",
    "export_provenance",
    "file_stem",
    "write_export",
]
