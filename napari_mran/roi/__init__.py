"""Regions of interest: analyse only the bags that intersect a region (QuPath GeoJSON
annotations or a napari Shapes layer), in level-0 pixels (docs/roi.md)."""
