"""Exporters of a :class:`~napari_mran.results.SlideResult`.

Every exporter writes atomically (temporary sibling + rename) and refuses to
overwrite an existing path unless ``overwrite=True``.  Formats: docs/formats.md.
"""

from napari_mran.export.geojson import export_geojson
from napari_mran.export.heatmaps import export_ome_tiff, export_ome_zarr
from napari_mran.export.table import csv_safe, export_csv, export_provenance

__all__ = [
    "csv_safe",
    "export_csv",
    "export_geojson",
    "export_ome_tiff",
    "export_ome_zarr",
    "export_provenance",
]
