"""Regions of interest: analyse only the bags that intersect a region (QuPath GeoJSON
annotations or a napari Shapes layer), in level-0 pixels (docs/roi.md)."""

from .geojson import read_geojson, region_from_geojson
from .region import MAX_RECORDED_POINTS, Region, RoiError, make_region

__all__ = ["MAX_RECORDED_POINTS", "Region", "RoiError", "make_region", "read_geojson",
           "region_from_geojson"]
