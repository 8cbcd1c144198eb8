"""Turn headless objects into napari layer-data tuples.

Slides (:func:`slide_layer_data`) and analysis results (:func:`result_layer_data`: the
tissue bags, the bag / patch / cell attention and the top bags), shared by the readers,
the writers and the widget and testable without a display.  Where the layers sit is
:mod:`.frame`, the rasters and their colour scaling :mod:`.raster`, the status-bar text
:mod:`.hover`, the metadata keys :mod:`.keys`.
"""

from __future__ import annotations

import os

import numpy as np

from ..results import Heatmap, SlideResult
from ..slide import Slide
from ..vocab import LEVELS, Level, Weighting
from . import keys
from .colormaps import RAMP_CHOICE, RAMP_OPACITY, colormap_for
from .frame import SlideFrame, level_geometry
from .raster import DEFAULT_SCALING, contrast_limits, keep_top_fraction

#: The role (layer-name suffix) of each heatmap level and the name of its default
#: colormap: a translucent ramp (transparent low end; :mod:`.colormaps`).
ROLES: dict[str, str] = {Level.BAG: "bag attention", Level.PATCH: "patch attention",
                         Level.CELL: "cell attention"}
COLORMAPS: dict[str, str] = {lv: colormap_for(lv).name for lv in ROLES}
TISSUE_ROLE = "tissue bags"
TOP_ROLE = "top bags"
#: every role, bottom to top (the order of the layers of a result)
ROLE_ORDER = (TISSUE_ROLE, *ROLES.values(), TOP_ROLE)
#: layer opacity: 1.0, the ramp's own alpha fades low values (0.6 with an opaque map)
DEFAULT_OPACITY = RAMP_OPACITY

#: Tissue-bag outline colours (RGBA) by state.
BAG_PENDING = (0.75, 0.75, 0.75, 0.8)
BAG_DONE = (0.0, 0.9, 1.0, 1.0)
BAG_FAILED = (1.0, 0.2, 0.2, 1.0)


def slide_layer_data(slide: Slide, name: str | None = None) -> tuple:
    """``(data, kwargs, "image")`` for one multiscale RGB layer of ``slide``.

    The layer is in µm when the slide's MPP is known (scale = MPP, units µm),
    else in pixels.  Contrast limits are fixed to 0-255 so napari never
    computes them over the pyramid.
    """
    name = name or os.path.basename(slide.path)
    meta = {
        keys.SLIDE: slide,  # the open Slide, for the analysis widget
        keys.SLIDE_PATH: slide.path,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "vendor": slide.vendor,
        "level_dimensions": slide.level_dimensions,
        "properties": dict(slide.properties),
    }
    kwargs = {
        "name": name,
        "multiscale": True,
        "rgb": True,
        "contrast_limits": [0, 255],
        "metadata": meta,
    }
    if slide.mpp is not None:
        kwargs["scale"] = (slide.mpp[1], slide.mpp[0])
        kwargs["units"] = ("um", "um")
    return (slide.display_levels, kwargs, "image")


#: appended to the layer names of results made with the bundled demo model
DEMO_TAG = "[DEMO model]"


def result_metadata(result: SlideResult, role: str, extra: dict | None = None) -> dict:
    """Layer metadata shared by every result layer (the writers read it back), updated
    with *extra*."""
    meta = {
        keys.RESULT: result,
        keys.ROLE: role,
        keys.SLIDE_NAME: result.slide_name,
        keys.SLIDE_PATH: (result.provenance.get("slide") or {}).get("path"),
        keys.SLIDE_PROBS: {n: float(p) for n, p in zip(result.class_names,
                                                       result.slide_probs)},
        keys.CLASS_NAMES: list(result.class_names),
        keys.BAG_PX: int(result.bag_px),
        keys.DEGRADED: bool(result.degraded),
    }
    meta.update(extra or {})
    return meta


def attention_kwargs(geometry: Heatmap, frame: SlideFrame, name: str, limits, metadata: dict,
                     *, opacity: float = DEFAULT_OPACITY, visible: bool = True,
                     colormap: str = RAMP_CHOICE) -> dict:
    """napari image kwargs of an attention heatmap with *geometry* (its level, scale and
    translate in level-0 pixels) placed in *frame*: the level's colormap for the
    panel's *colormap* choice (default: its translucent ramp), nearest-neighbour,
    *limits* as contrast limits."""
    scale, translate = frame.heatmap_transform(geometry)
    return {
        "name": name,
        "scale": scale,
        "translate": translate,
        "colormap": colormap_for(geometry.level, colormap),
        "contrast_limits": list(limits),
        "opacity": float(opacity),
        "blending": "translucent",
        "interpolation2d": "nearest",
        "visible": visible,
        "metadata": metadata,
        **frame.layer_units(),
    }


def heatmap_layer_data(data: np.ndarray, level: str, bag_px: int, frame: SlideFrame,
                       name: str, metadata: dict, *, scaling: str = DEFAULT_SCALING,
                       opacity: float = DEFAULT_OPACITY, visible: bool = True,
                       contrast_from: np.ndarray | None = None,
                       colormap: str = RAMP_CHOICE) -> tuple:
    """``(data, kwargs, "image")`` of one attention raster aligned with the slide.

    The contrast limits come from *contrast_from* when given (the unthresholded raster,
    so "show only top X %" does not change the colours), else from *data*.
    """
    limits = contrast_limits(data if contrast_from is None else contrast_from, scaling)
    return (data, attention_kwargs(level_geometry(level, bag_px), frame, name, limits,
                                   {**metadata, keys.LEVEL: level, keys.SCALING: scaling},
                                   opacity=opacity, visible=visible, colormap=colormap),
            "image")


def tissue_points_data(boxes: np.ndarray, frame: SlideFrame, name: str, metadata: dict,
                       colors: np.ndarray | None = None, size: float | None = None) -> tuple:
    """``(data, kwargs, "points")``: one square outline per tissue bag.

    A Points layer of square markers (size = bag side) instead of a Shapes layer: it
    is built in milliseconds for thousands of bags (Shapes triangulates each one).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0
    # marker centre in world = centre of the box (box corners at x0 - 0.5 ... x1 - 0.5)
    yx = np.stack([(cy - 0.5) * frame.scale[0] + frame.translate[0],
                   (cx - 0.5) * frame.scale[1] + frame.translate[1]], axis=1)
    if size is not None:
        side = float(size)
    else:
        side = float((boxes[0, 2] - boxes[0, 0]) * frame.scale[1]) if len(boxes) else 1.0
    if colors is None or len(boxes) == 0:
        colors = (np.tile(np.asarray(BAG_PENDING, np.float32), (len(boxes), 1))
                  if len(boxes) else list(BAG_PENDING))
    kwargs = {
        "name": name,
        "symbol": "square",
        "size": side,
        "face_color": "transparent",
        "border_color": colors,
        "border_width": 0.025,
        "border_width_is_relative": True,
        "canvas_size_limits": (0, 1e6),
        "metadata": metadata,
        "ndim": 2,
        **frame.layer_units(),
    }
    return (yx, kwargs, "points")


TOP_TEXT = {"string": "#{rank} γ={score:.3f}", "size": 10, "color": "white",
            "anchor": "upper_left", "translation": [0, 0]}
TOP_EDGE_COLOR = "#ff00ff"


def _top_kwargs(frame: SlideFrame, bag_px: int, name: str, metadata: dict,
                features: dict) -> dict:
    return {
        "name": name,
        "shape_type": "rectangle",
        "edge_color": TOP_EDGE_COLOR,
        "face_color": "transparent",
        "edge_width": float(bag_px * frame.scale[1] / 96.0),
        "features": features,
        "text": dict(TOP_TEXT),
        "metadata": metadata,
        "ndim": 2,
        **frame.layer_units(),
    }


def empty_top_bags_data(frame: SlideFrame, bag_px: int, name: str, metadata: dict) -> tuple:
    """The top-bags Shapes layer before the result is known (no shapes yet)."""
    features = {"rank": np.zeros(0, np.int64), "score": np.zeros(0), "bag_index":
                np.zeros(0, np.int64), "prob": np.zeros(0)}
    return ([], _top_kwargs(frame, bag_px, name, metadata, features), "shapes")


def top_bags_data(result: SlideResult, frame: SlideFrame, k: int, name: str,
                  metadata: dict, class_index: int | None = None) -> tuple:
    """``(data, kwargs, "shapes")``: the top-k bags by bag attention as labelled rectangles."""
    order = result.top_bags(k)
    ci = (result.n_classes - 1) if class_index is None else int(class_index)
    rects, ranks, scores, probs = [], [], [], []
    for rank, i in enumerate(order, start=1):
        (wy0, wx0), (wy1, wx1) = frame.box_to_world(result.boxes[i])
        rects.append(np.array([[wy0, wx0], [wy1, wx1]], dtype=np.float64))
        ranks.append(rank)
        scores.append(float(result.bag_attention[i]))
        probs.append(float(result.bag_probs[i, ci]))
    features = {"rank": np.asarray(ranks, np.int64), "score": np.asarray(scores, np.float64),
                "bag_index": np.asarray(order, np.int64), "prob": np.asarray(probs, np.float64)}
    meta = {**metadata, keys.TOP_K: int(k), keys.TOP_INDICES: [int(i) for i in order]}
    return (rects, _top_kwargs(frame, result.bag_px, name, meta, features), "shapes")


def result_layer_data(result: SlideResult, frame: SlideFrame | None = None, *,
                      slide_name: str | None = None, weighting: str = Weighting.LOCAL,
                      scaling: str = DEFAULT_SCALING, top_k: int = 10, top_percent: float = 100.0,
                      opacity: float = DEFAULT_OPACITY, extra_metadata: dict | None = None,
                      colormap: str = RAMP_CHOICE) -> list[tuple]:
    """Every layer of a finished analysis, bottom to top: tissue bags, bag / patch / cell
    attention, top bags.  Names are ``"<slide> <role>"``."""
    frame = frame or SlideFrame.from_result(result)
    name = slide_name or result.slide_name or "slide"
    if result.model_is_demo and DEMO_TAG not in name:
        name += f" {DEMO_TAG}"
    extra = {keys.FRAME: frame, **(extra_metadata or {})}
    out = []
    boxes = np.concatenate([result.boxes, result.failed_boxes]).reshape(-1, 4)
    colors = np.array([BAG_DONE] * result.n_bags + [BAG_FAILED] * len(result.failed_boxes),
                      np.float32).reshape(-1, 4)
    if len(boxes):
        out.append(tissue_points_data(boxes, frame, f"{name} {TISSUE_ROLE}",
                                      result_metadata(result, TISSUE_ROLE, extra), colors))
    for level in LEVELS:
        full = result.heatmap(level, weighting).data
        meta = result_metadata(result, ROLES[level], {
            **extra, keys.WEIGHTING: weighting, keys.SCALING: scaling,
            keys.TOP_PERCENT: float(top_percent)})
        out.append(heatmap_layer_data(keep_top_fraction(full, top_percent), level,
                                      result.bag_px, frame, f"{name} {ROLES[level]}", meta,
                                      scaling=scaling, opacity=opacity, contrast_from=full,
                                      visible=level == Level.PATCH, colormap=colormap))
    if result.n_bags and top_k > 0:
        out.append(top_bags_data(result, frame, top_k, f"{name} {TOP_ROLE}",
                                 result_metadata(result, TOP_ROLE, extra)))
    return out


def set_top_bags(layer, rects: list, kw: dict, show_text: bool = True) -> None:
    """Replace the rectangles, features and metadata of a top-bags Shapes layer in place
    (*rects*, *kw*: of :func:`top_bags_data`).

    ``show_text=False`` leaves the labels hidden (the first draw of text costs ~0.1 s:
    the caller shows them in a later event-loop turn).
    """
    layer.text.visible = False
    if len(layer.data):
        layer.data = []
    if rects:
        layer.add_rectangles(rects, edge_color=kw["edge_color"], face_color=kw["face_color"],
                             edge_width=kw["edge_width"])
    layer.features = kw["features"]
    layer.metadata = kw["metadata"]
    layer.refresh_text()
    layer.text.visible = show_text


#: the role of a slide layer in :func:`layer_role` (result layers use their ROLE key)
SLIDE_ROLE = "slide"


def layer_role(metadata: dict | None) -> str | None:
    """What a layer is in a shown slide: :data:`SLIDE_ROLE` for a slide layer, the
    result role (tissue bags, patch attention, ...) for a result layer, else None."""
    metadata = metadata or {}
    return SLIDE_ROLE if keys.SLIDE in metadata else metadata.get(keys.ROLE)


def reusable(layer, kind: str, kw: dict) -> bool:
    """Whether *layer* can show the layer-data tuple ``(_, kw, kind)`` by updating it in
    place (:func:`update_layer`): the same layer type, and for an image the same
    multiscale / RGB form (napari fixes those at creation)."""
    if type(layer).__name__.lower() != kind:
        return False
    if kind == "image":
        return (bool(layer.multiscale) == bool(kw.get("multiscale", False))
                and bool(layer.rgb) == bool(kw.get("rgb", False)))
    return True


def update_layer(layer, data, kw: dict, kind: str) -> None:
    """Show the layer-data tuple ``(data, kw, kind)`` in the existing *layer*
    (:func:`reusable`): data, placement, contrast limits, metadata and name.  What the
    user set on the layer (visibility, opacity, colour map, blending) stays.

    Reusing a layer costs a data upload; a new one costs napari's layer controls and a
    shader program, ~0.1 s each on the event loop (docs/performance.md)."""
    layer.metadata = kw["metadata"]
    if kind == "shapes":
        set_top_bags(layer, data, kw)
    else:
        layer.data = data
    if kind == "image":
        layer.contrast_limits = kw["contrast_limits"]
    elif kind == "points":
        layer.size = kw["size"]
        layer.border_color = kw["border_color"]
    layer.scale = kw.get("scale", (1.0, 1.0))
    layer.translate = kw.get("translate", (0.0, 0.0))
    layer.units = kw.get("units", ("pixel", "pixel"))
    layer.name = kw["name"]
