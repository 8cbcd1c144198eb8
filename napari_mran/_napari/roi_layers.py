"""Regions of interest and napari Shapes layers, both ways (no Qt): the polygons,
rectangles and ellipses of a Shapes layer as a :class:`~napari_mran.roi.Region` in
level-0 pixels of a slide, and a Region as Shapes layer data (docs/roi.md)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..roi import Region, RoiError, make_region
from . import keys
from .frame import SlideFrame

__all__ = ["AREA_SHAPES", "ELLIPSE_POINTS", "recorded_region_data", "region_from_shapes",
           "region_layer_data", "shapes_source"]

#: shape types that are areas (paths and lines are not)
AREA_SHAPES = ("polygon", "rectangle", "ellipse")
#: an ellipse becomes a polygon of this many points
ELLIPSE_POINTS = 64


def shapes_source(name: str) -> str:
    """The ``source`` a region drawn in a Shapes layer records."""
    return f"napari shapes layer {name!r}"


def _ellipse(corners: np.ndarray) -> np.ndarray:
    """The 64-gon of the ellipse inscribed in napari's four bounding-box corners."""
    c = corners.mean(axis=0)
    u, v = (corners[1] - corners[0]) / 2.0, (corners[3] - corners[0]) / 2.0
    t = np.linspace(0.0, 2.0 * np.pi, ELLIPSE_POINTS, endpoint=False)[:, None]
    return c + np.cos(t) * u + np.sin(t) * v


def _to_world(layer: Any, data: np.ndarray) -> np.ndarray:
    """Layer data coordinates (last two axes: y, x) -> world (y, x)."""
    scale = np.asarray(layer.scale, dtype=np.float64)[-2:]
    translate = np.asarray(layer.translate, dtype=np.float64)[-2:]
    return np.asarray(data, dtype=np.float64)[:, -2:] * scale + translate


def _check_plain_transform(layer: Any) -> None:
    affine = getattr(layer, "affine", None)
    matrix = getattr(affine, "affine_matrix", None)
    if matrix is not None and not np.allclose(np.asarray(matrix)[-3:, -3:], np.eye(3)):
        raise RoiError(f"{shapes_source(layer.name)}: a rotated, sheared or affine-"
                       "transformed Shapes layer is not supported; draw in a plain layer")
    rotate = getattr(layer, "rotate", None)
    if rotate is not None and not np.allclose(np.asarray(rotate)[-2:, -2:], np.eye(2)):
        raise RoiError(f"{shapes_source(layer.name)}: a rotated Shapes layer is not supported")


def region_from_shapes(layer: Any, frame: SlideFrame,
                       slide_size: tuple[int, int] | None = None) -> Region:
    """The areas of a Shapes layer (polygons, rectangles, ellipses as 64-gons) as a Region
    in level-0 px of the slide whose layer has *frame*; checked against ``slide_size``
    (width, height) when given.  RoiError naming the layer and the reason."""
    source = shapes_source(layer.name)
    _check_plain_transform(layer)
    polys, labels, skipped = [], [], 0
    for k, (data, kind) in enumerate(zip(layer.data, layer.shape_type)):
        if kind not in AREA_SHAPES:
            skipped += 1
            continue
        world = _to_world(layer, data)
        if kind == "ellipse":
            world = _ellipse(world)
        level0 = np.array([frame.to_level0(p) for p in world], dtype=np.float64)
        polys.append([level0])
        labels.append(f"shape {k + 1} ({kind})")
    if not polys:
        raise RoiError(f"{source}: holds no polygon, rectangle or ellipse"
                       + (f" ({skipped} path(s)/line(s) are not areas)" if skipped else ""))
    notes = [f"ignored {skipped} path(s)/line(s) (not areas)"] if skipped else []
    region = make_region(polys, source, (), notes, labels)
    if slide_size is not None:
        region = region.check_slide(*slide_size)
    return region


def region_layer_data(region: Region, frame: SlideFrame) -> tuple[list[np.ndarray], dict]:
    """Shapes layer data showing a region's outline on the slide: world (y, x) polygons
    (holes as polygons of their own) and the layer keyword arguments."""
    data = []
    for poly in region.polygons:
        for ring in poly:
            data.append(np.array([frame.to_world(x, y) for x, y in ring], dtype=np.float64))
    kwargs = {"shape_type": "polygon", "edge_color": "yellow", "face_color": "transparent",
              "edge_width": max(1.0, 4.0 * float(frame.scale[0])),
              "name": f"region ({region.source})", "metadata": {"mran_region": region.sha256}}
    return data, kwargs


def shapes_layer_names(layers: Any) -> list[str]:
    """Names of the Shapes layers of a layer list (the "Analyse inside" choices), but
    not the plugin's own result layers (the top bags)."""
    from napari.layers import Shapes

    return [ly.name for ly in layers
            if isinstance(ly, Shapes) and keys.ROLE not in (ly.metadata or {})]


def with_region(options: Any, layers: Any, name: str | None, slide_layer: Any) -> Any:
    """``options`` with the region of the Shapes layer *name* on the slide of
    *slide_layer* (unchanged when *name* is None); RoiError when it cannot be used."""
    if name is None:
        return options
    if name not in layers:
        raise RoiError(f"{shapes_source(name)}: the layer is gone")
    slide = (slide_layer.metadata or {}).get(keys.SLIDE)
    size = None if slide is None else tuple(slide.dimensions)
    region = region_from_shapes(layers[name], SlideFrame.from_layer(slide_layer), size)
    return options.replace(roi=region)


def recorded_region_data(result: Any, frame: SlideFrame | None) -> tuple | None:
    """``(data, kwargs, "shapes")``: the outline of the region a result was analysed
    inside, from its provenance (None without one, or when its geometry was too large
    to be recorded)."""
    rec = (result.provenance or {}).get("region")
    polys = rec.get("polygons") if isinstance(rec, dict) else None
    if not polys:
        return None
    frame = frame or SlideFrame.from_result(result)
    region = Region(polygons=tuple(tuple(np.asarray(r, np.float64) for r in poly)
                                   for poly in polys),
                    source=str(rec.get("source") or "region"))
    data, kwargs = region_layer_data(region, frame)
    name = result.slide_name or "slide"
    kwargs = {**kwargs, "name": f"{name} region ({os.path.basename(region.source)})",
              **frame.layer_units()}
    return data, kwargs, "shapes"
