"""Turn headless objects into napari layer-data tuples (no napari import needed here).

Slides (:func:`slide_layer_data`), analysis results (:func:`result_layer_data`), the
progressive painting of a running analysis (:func:`paint_batch`) and the status-bar
hover text (:func:`hover_text`, :func:`install_hover`).
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import numpy as np

from ..results import CELLS_PER_PATCH_SIDE, PATCHES_PER_SIDE, Heatmap, SlideResult
from ..slide import Slide


def slide_layer_data(slide: Slide, name: str | None = None) -> tuple:
    """``(data, kwargs, "image")`` for one multiscale RGB layer of ``slide``.

    The layer is in µm when the slide's MPP is known (scale = MPP, units µm),
    else in pixels.  Contrast limits are fixed to 0-255 so napari never
    computes them over the pyramid.
    """
    name = name or os.path.basename(slide.path)
    meta = {
        "mran_slide": slide,  # the open Slide, for the analysis widget
        "mran_slide_path": slide.path,
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


# =========================================================================== results
# Everything below turns a SlideResult (or the per-batch results of a running analysis)
# into napari layer-data tuples and hover text.  Still no napari import: the reader,
# the writer and the widget share it, and it is testable without a display.

#: Heatmap levels, the role (layer-name suffix) of each and its perceptual colormap.
LEVELS = ("bag", "patch", "cell")
ROLES = {"bag": "bag attention", "patch": "patch attention", "cell": "cell attention"}
COLORMAPS = {"bag": "magma", "patch": "viridis", "cell": "inferno"}
PIXELS_PER_BAG = {"bag": 1, "patch": PATCHES_PER_SIDE,
                  "cell": PATCHES_PER_SIDE * CELLS_PER_PATCH_SIDE}
TISSUE_ROLE = "tissue bags"
TOP_ROLE = "top bags"
#: Contrast scaling of the attention layers: per-slide min-max, 1st-99th percentile of
#: the slide's finite values, or a fixed 0-1 (the same mapping for every slide).
SCALINGS = ("minmax", "percentile", "fixed")
PERCENTILES = (1.0, 99.0)
DEFAULT_OPACITY = 0.6

#: Tissue-bag outline colours (RGBA) by state.
BAG_PENDING = (0.75, 0.75, 0.75, 0.8)
BAG_DONE = (0.0, 0.9, 1.0, 1.0)
BAG_FAILED = (1.0, 0.2, 0.2, 1.0)

META_RESULT = "mran_result"        # the SlideResult (set when the analysis is complete)
META_ROLE = "mran_role"            # "bag attention", ..., "tissue bags", "top bags"


@dataclass(frozen=True)
class SlideFrame:
    """How level-0 pixels map to the viewer's world coordinates.

    ``scale`` (sy, sx) world units per level-0 pixel and ``translate`` (ty, tx) the world
    position of the *centre* of level-0 pixel (0, 0) (napari's convention): the slide
    layer's own scale/translate, µm when the MPP is known.  ``units`` is ``"um"`` or None.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)
    units: str | None = None

    @classmethod
    def from_slide(cls, slide) -> SlideFrame:
        if slide.mpp is None:
            return cls()
        return cls((float(slide.mpp[1]), float(slide.mpp[0])), (0.0, 0.0), "um")

    @classmethod
    def from_result(cls, result: SlideResult) -> SlideFrame:
        """The slide's frame rebuilt from the result alone (slide file not at hand)."""
        mpp = result.mpp_xy
        if mpp is None:
            return cls()
        return cls((float(mpp[1]), float(mpp[0])), (0.0, 0.0), "um")

    @classmethod
    def from_layer(cls, layer) -> SlideFrame:
        """The frame of a slide layer (its last two axes)."""
        scale = tuple(float(v) for v in layer.scale[-2:])
        translate = tuple(float(v) for v in layer.translate[-2:])
        units = "um" if (layer.metadata or {}).get("mpp") is not None else None
        return cls(scale, translate, units)  # type: ignore[arg-type]

    def to_level0(self, world_yx) -> tuple[float, float]:
        """World (y, x) -> level-0 ``(x0, y0)`` where pixel i covers [i, i + 1)."""
        y, x = (float(v) for v in list(world_yx)[-2:])
        return ((x - self.translate[1]) / self.scale[1] + 0.5,
                (y - self.translate[0]) / self.scale[0] + 0.5)

    def to_world(self, x0: float, y0: float) -> tuple[float, float]:
        """Level-0 point ``(x0, y0)`` (pixel corners at integers) -> world (y, x)."""
        return ((y0 - 0.5) * self.scale[0] + self.translate[0],
                (x0 - 0.5) * self.scale[1] + self.translate[1])

    def box_to_world(self, box) -> tuple[tuple[float, float], tuple[float, float]]:
        """Level-0 box ``x0, y0, x1, y1`` -> world corners ((y0, x0), (y1, x1))."""
        x0, y0, x1, y1 = (float(v) for v in box)
        return self.to_world(x0, y0), self.to_world(x1, y1)

    def heatmap_transform(self, heatmap: Heatmap) -> tuple[tuple[float, float], tuple[float, float]]:
        """napari ``(scale, translate)`` of *heatmap* in this frame.

        The heatmap's own pixel-centre transform in level-0 pixels
        (:meth:`Heatmap.layer_transform`) composed with the slide layer's scale and
        translate, so a heatmap pixel covers exactly its bag/patch/cell of the slide.
        """
        (sy, sx), (ty, tx) = heatmap.layer_transform("px", pixel_centres=True)
        return ((sy * self.scale[0], sx * self.scale[1]),
                (ty * self.scale[0] + self.translate[0], tx * self.scale[1] + self.translate[1]))

    def layer_units(self) -> dict:
        return {"units": ("um", "um")} if self.units == "um" else {}


def grid_shape(slide_size: tuple[int, int], bag_px: int) -> tuple[int, int]:
    """(rows, cols) of the bag grid, as :attr:`SlideResult.grid_shape`."""
    w, h = (int(v) for v in slide_size)
    return (-(-h // int(bag_px)), -(-w // int(bag_px)))


def level_geometry(level: str, bag_px: int) -> Heatmap:
    """An empty Heatmap carrying only the geometry of *level* (for transforms)."""
    step = bag_px / PIXELS_PER_BAG[level]
    return Heatmap(data=np.zeros((0, 0), np.float32), scale=(float(step), float(step)),
                   translate=(0.0, 0.0), level=level)


def empty_raster(level: str, slide_size: tuple[int, int], bag_px: int) -> np.ndarray:
    """All-NaN raster of *level* over the whole bag grid (NaN = not analysed yet)."""
    rows, cols = grid_shape(slide_size, bag_px)
    k = PIXELS_PER_BAG[level]
    return np.full((rows * k, cols * k), np.nan, dtype=np.float32)


def paint_batch(rasters: dict[str, np.ndarray], bag_px: int, boxes: np.ndarray,
                patch_attention: np.ndarray, cell_attention: np.ndarray) -> None:
    """Paint the local patch (alpha) and cell (beta) attention of finished bags in place.

    ``boxes`` (n, 4) level-0; ``patch_attention`` (n, 64); ``cell_attention`` (n, 64, 16).
    The layout is that of :meth:`SlideResult.heatmap` (tested to be identical).
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    if not len(boxes):
        return
    rc = np.stack([boxes[:, 1], boxes[:, 0]], axis=1) // int(bag_px)  # (n, 2) bag row, col
    p, c = PATCHES_PER_SIDE, CELLS_PER_PATCH_SIDE
    if "patch" in rasters:
        tiles = np.asarray(patch_attention, np.float32).reshape(-1, p, p)  # (n, 8, 8)
        out = rasters["patch"]
        for (r, col), t in zip(rc, tiles):
            out[r * p:(r + 1) * p, col * p:(col + 1) * p] = t
    if "cell" in rasters:
        k = p * c
        # (n, patch r, patch c, cell r, cell c) -> (n, patch r, cell r, patch c, cell c)
        tiles = (np.asarray(cell_attention, np.float32).reshape(-1, p, p, c, c)
                 .transpose(0, 1, 3, 2, 4).reshape(-1, k, k))  # (n, 32, 32)
        out = rasters["cell"]
        for (r, col), t in zip(rc, tiles):
            out[r * k:(r + 1) * k, col * k:(col + 1) * k] = t


def contrast_limits(data: np.ndarray, scaling: str = "minmax") -> tuple[float, float]:
    """Contrast limits of an attention raster for *scaling* (NaN ignored)."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, not {scaling!r}")
    if scaling == "fixed":
        return (0.0, 1.0)
    finite = np.asarray(data)[np.isfinite(data)]
    if finite.size == 0:
        return (0.0, 1.0)
    if scaling == "percentile":
        lo, hi = (float(v) for v in np.percentile(finite, PERCENTILES))
    else:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    return (lo, hi)


def keep_top_fraction(data: np.ndarray, percent: float) -> np.ndarray:
    """Copy of *data* where only the highest *percent* % of the finite values remain.

    100 (or more) keeps everything; the rest becomes NaN (transparent).
    """
    if percent >= 100:
        return data
    out = np.array(data, dtype=np.float32, copy=True)
    finite = np.isfinite(out)
    if not finite.any():
        return out
    cut = float(np.percentile(out[finite], 100.0 - max(0.0, float(percent))))
    out[finite & (out < cut)] = np.nan
    return out


#: appended to the layer names of results made with the bundled demo model
DEMO_TAG = "[DEMO model]"


def result_is_demo(result: SlideResult) -> bool:
    """Whether *result* was computed with the bundled synthetic demo model."""
    model = (result.provenance or {}).get("model") or {}
    return bool(model.get("demo")) if isinstance(model, dict) else False


def result_metadata(result: SlideResult, role: str, **extra) -> dict:
    """Layer metadata shared by every result layer (the writers read it back)."""
    meta = {
        META_RESULT: result,
        META_ROLE: role,
        "mran_slide_name": result.slide_name,
        "mran_slide_path": (result.provenance.get("slide") or {}).get("path"),
        "mran_slide_probs": {n: float(p) for n, p in zip(result.class_names, result.slide_probs)},
        "mran_class_names": list(result.class_names),
        "mran_bag_px": int(result.bag_px),
        "mran_degraded": bool(result.degraded),
    }
    meta.update(extra)
    return meta


def heatmap_layer_data(data: np.ndarray, level: str, bag_px: int, frame: SlideFrame,
                       name: str, metadata: dict, *, scaling: str = "minmax",
                       opacity: float = DEFAULT_OPACITY, visible: bool = True,
                       contrast_from: np.ndarray | None = None) -> tuple:
    """``(data, kwargs, "image")`` of one attention raster aligned with the slide.

    The contrast limits come from *contrast_from* when given (the unthresholded raster,
    so "show only top X %" does not change the colours), else from *data*.
    """
    scale, translate = frame.heatmap_transform(level_geometry(level, bag_px))
    kwargs = {
        "name": name,
        "scale": scale,
        "translate": translate,
        "colormap": COLORMAPS[level],
        "contrast_limits": list(contrast_limits(data if contrast_from is None
                                                else contrast_from, scaling)),
        "opacity": float(opacity),
        "blending": "translucent",
        "interpolation2d": "nearest",
        "visible": visible,
        "metadata": {**metadata, "mran_level": level, "mran_scaling": scaling},
        **frame.layer_units(),
    }
    return (data, kwargs, "image")


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
    meta = {**metadata, "mran_top_k": int(k), "mran_top_indices": [int(i) for i in order]}
    return (rects, _top_kwargs(frame, result.bag_px, name, meta, features), "shapes")


def result_layer_data(result: SlideResult, frame: SlideFrame | None = None, *,
                      slide_name: str | None = None, weighting: str = "local",
                      scaling: str = "minmax", top_k: int = 10, top_percent: float = 100.0,
                      opacity: float = DEFAULT_OPACITY, extra_metadata: dict | None = None
                      ) -> list[tuple]:
    """Every layer of a finished analysis, bottom to top: tissue bags, bag / patch / cell
    attention, top bags.  Names are ``"<slide> <role>"``."""
    frame = frame or SlideFrame.from_result(result)
    name = slide_name or result.slide_name or "slide"
    if result_is_demo(result) and DEMO_TAG not in name:
        name += f" {DEMO_TAG}"
    extra = {"mran_frame": frame, **(extra_metadata or {})}
    out = []
    boxes = np.concatenate([result.boxes, result.failed_boxes]).reshape(-1, 4)
    colors = np.array([BAG_DONE] * result.n_bags + [BAG_FAILED] * len(result.failed_boxes),
                      np.float32).reshape(-1, 4)
    if len(boxes):
        out.append(tissue_points_data(boxes, frame, f"{name} {TISSUE_ROLE}",
                                      result_metadata(result, TISSUE_ROLE, **extra), colors))
    for level in LEVELS:
        full = result.heatmap(level, weighting).data
        meta = result_metadata(result, ROLES[level], mran_weighting=weighting,
                               mran_scaling=scaling, mran_top_percent=float(top_percent),
                               **extra)
        out.append(heatmap_layer_data(keep_top_fraction(full, top_percent), level,
                                      result.bag_px, frame, f"{name} {ROLES[level]}", meta,
                                      scaling=scaling, opacity=opacity, contrast_from=full,
                                      visible=level == "patch"))
    if result.n_bags and top_k > 0:
        out.append(top_bags_data(result, frame, top_k, f"{name} {TOP_ROLE}",
                                 result_metadata(result, TOP_ROLE, **extra)))
    return out


# ---------------------------------------------------------------------- hover text

def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e-3 else f"{v:.3f}"


def hover_text(result: SlideResult, x0: float, y0: float) -> str | None:
    """One status-bar line with the scores under level-0 point (x0, y0), or None."""
    v = result.value_at(x0, y0)
    if v is None:
        return None
    cls = result.class_names[-1] if result.n_classes == 2 else None

    def probs(d: dict) -> str:
        if cls is not None:
            return f"P({cls}) {_fmt(d[cls])}"
        best = max(d, key=d.get)
        return f"{best} {_fmt(d[best])}"

    return (f"bag #{v['bag_index']} γ {_fmt(v['bag_attention'])} {probs(v['bag_probs'])} | "
            f"patch α {_fmt(v['patch_attention'])} (γα {_fmt(v['patch_attention_global'])}) "
            f"{probs(v['patch_probs'])} | "
            f"cell β {_fmt(v['cell_attention'])} (γαβ {_fmt(v['cell_attention_global'])}) "
            f"{probs(v['cell_probs'])} | slide: "
            + ", ".join(f"{k} {_fmt(p)}" for k, p in v["slide_probs"].items()))


class _ResultStatus:
    """Replacement ``get_status`` of a layer: napari's status plus the MRAN scores.

    napari computes the status bar text in a background thread from the active
    layer's ``get_status``; this adds ``hover_text`` at the cursor (read-only numpy).
    """

    def __init__(self, layer, original, frame: SlideFrame, result=None):
        self._layer_ref = layer
        self._original = original
        self.frame = frame
        self.result = result  # None: the layer's metadata; else a callable -> result | None

    def __call__(self, position=None, **kwargs):
        status = self._original(position, **kwargs)
        if self.result is not None:
            result = self.result()
        else:
            result = (self._layer_ref.metadata or {}).get(META_RESULT)
        if position is None or result is None or not kwargs.get("world", False):
            return status
        try:
            x0, y0 = self.frame.to_level0(position)
            text = hover_text(result, x0, y0)
        except Exception:  # noqa: BLE001 - the status bar must never raise
            text = None
        if text and isinstance(status, dict):
            status = dict(status)
            status["coordinates"] = f"{status.get('coords', '')}: {text}"
            status["value"] = text
        elif text and isinstance(status, str):
            status = f"{status} {text}"
        return status


def install_hover(layer, frame: SlideFrame | None = None, result=None) -> None:
    """Make *layer*'s status-bar text include the MRAN scores under the cursor.

    The result is the layer's ``metadata["mran_result"]``, or ``result()`` when a
    callable is given (the slide layer: whatever result is shown for it).
    """
    if frame is None:
        frame = (layer.metadata or {}).get("mran_frame")
    if frame is None:
        return
    current = layer.__dict__.get("get_status")
    if isinstance(current, _ResultStatus):
        current.frame = frame
        current.result = result
        return
    layer.get_status = _ResultStatus(layer, layer.get_status, frame, result)


_WATCHED: dict[int, weakref.ref] = {}


def watch_viewer(viewer) -> None:
    """Install the hover on every result layer of *viewer*, now and when added (once)."""
    ref = _WATCHED.get(id(viewer))
    if ref is not None and ref() is viewer:
        return

    def on_insert(event):
        layer = event.value
        if META_RESULT in (layer.metadata or {}):
            install_hover(layer)

    for layer in list(viewer.layers):
        if META_RESULT in (layer.metadata or {}):
            install_hover(layer)
    viewer.layers.events.inserted.connect(on_insert)
    _WATCHED[id(viewer)] = weakref.ref(viewer)
