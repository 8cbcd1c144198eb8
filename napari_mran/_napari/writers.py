"""npe2 writer contributions: MRAN result layers -> QuPath GeoJSON, CSV, OME-TIFF,
OME-Zarr and the provenance record, through the headless exporters.

napari calls a single-layer writer as ``writer(path, data, attributes)``; the layer's
``metadata`` (in ``attributes``) carries the :class:`~napari_mran.results.SlideResult`,
the heatmap level and the weighting shown, so the file holds exactly what the layer
shows.  Writers never overwrite: an existing path raises OutputExistsError (napari
shows the reason); the widget's Export button asks before replacing.
"""

from __future__ import annotations

import os

from ..errors import MRANError, OutputExistsError
from ..vocab import Level, Weighting
from . import keys
from .layers import TOP_ROLE


def _result_and_meta(attributes: dict):
    meta = (attributes or {}).get("metadata") or {}
    result = meta.get(keys.RESULT)
    if result is None:
        name = (attributes or {}).get("name", "this layer")
        raise MRANError(f"{name!r} is not an MRAN result layer (analyse a slide first, or "
                        "open a .mran.zarr results store)")
    return result, meta


def _level(meta: dict, default: str = Level.BAG) -> str:
    return meta.get(keys.LEVEL) or default


def _weighting(meta: dict) -> str:
    return meta.get(keys.WEIGHTING) or Weighting.LOCAL.value


def _refuse_existing(path: str) -> None:
    if os.path.lexists(path):
        raise OutputExistsError(
            f"{path}: already exists; napari-mran writers never overwrite. Choose another "
            "name, or use Export in the 'Analyze slide' panel, which asks before replacing")


def _bags_for(meta: dict, level: str):
    """Bag selection of a GeoJSON export: the top bags of a 'top bags' layer; for cells
    the top bags by attention (cell polygons are exported for at most 64 bags)."""
    if meta.get(keys.ROLE) == TOP_ROLE:
        return meta.get(keys.TOP_INDICES)
    if level == Level.CELL:
        from ..export.geojson import MAX_CELL_BAGS

        result = meta[keys.RESULT]
        return [int(i) for i in result.top_bags(MAX_CELL_BAGS)]
    return None


def write_geojson(path: str, data, attributes: dict) -> list[str]:
    """QuPath GeoJSON (detections with measurements) of the layer's level."""
    from ..export import export_geojson

    result, meta = _result_and_meta(attributes)
    _refuse_existing(path)
    level = _level(meta)
    out = export_geojson(result, path, level=level, weighting=_weighting(meta),
                         bags=_bags_for(meta, level), overwrite=False)
    return [os.fspath(out)]


def write_csv(path: str, data, attributes: dict) -> list[str]:
    """One CSV row per bag/patch/cell of the layer's level."""
    from ..export import export_csv

    result, meta = _result_and_meta(attributes)
    _refuse_existing(path)
    return [os.fspath(export_csv(result, path, level=_level(meta), overwrite=False))]


def write_ome_tiff(path: str, data, attributes: dict) -> list[str]:
    """Pyramidal float32 OME-TIFF of the heatmap the layer shows (level + weighting)."""
    from ..export import export_ome_tiff

    result, meta = _result_and_meta(attributes)
    _refuse_existing(path)
    return [os.fspath(export_ome_tiff(result, path, level=_level(meta, Level.PATCH),
                                      weighting=_weighting(meta), overwrite=False))]


def write_ome_zarr(path: str, data, attributes: dict) -> list[str]:
    """OME-Zarr (NGFF 0.4) multiscale heatmap of the layer (level + weighting)."""
    from ..export import export_ome_zarr

    result, meta = _result_and_meta(attributes)
    _refuse_existing(path)
    return [os.fspath(export_ome_zarr(result, path, level=_level(meta, Level.PATCH),
                                      weighting=_weighting(meta), overwrite=False))]


def write_provenance(path: str, data, attributes: dict) -> list[str]:
    """The provenance record (strict JSON) of the result behind the layer."""
    from ..export import export_provenance

    result, _ = _result_and_meta(attributes)
    _refuse_existing(path)
    return [os.fspath(export_provenance(result, path, overwrite=False))]
