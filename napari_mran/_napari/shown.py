"""The result the panel controls and its display settings (no Qt).

A :class:`Shown` result comes from a finished run or from the ``.mran.zarr`` reader;
the panel's controls (weighting, colour scale, top X %, opacity, top bags) change its
layers through the functions here.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

from napari.layers import Layer

from ..vocab import LEVELS, Weighting
from . import keys
from . import layers as L
from .colormaps import RAMP_CHOICE, colormap_for
from .frame import SlideFrame
from .hover import install_hover
from .raster import DEFAULT_SCALING, contrast_limits, keep_top_fraction


@dataclass(frozen=True)
class Display:
    """How the attention layers are shown (the panel's display controls)."""

    weighting: str = Weighting.LOCAL
    scaling: str = DEFAULT_SCALING
    top_percent: float = 100.0
    opacity: float = L.DEFAULT_OPACITY
    top_k: int = 10
    colormap: str = RAMP_CHOICE  # the panel's "Colour map" choice (.colormaps)


@dataclass
class Shown:
    """The result the panel controls (from a run or opened with the reader)."""

    result: Any
    layers: dict[str, Any]          # role -> layer
    frame: SlideFrame
    slide_layer: Any = None
    model: Any = None

    def attention_layers(self) -> list[tuple[str, Any]]:
        """(level, layer) of the attention layers still there, bag to cell."""
        return [(lv, self.layers[L.ROLES[lv]]) for lv in LEVELS if L.ROLES[lv] in self.layers]

    def results_path(self) -> str | None:
        """The results store the layers were saved to or opened from, if any."""
        for ly in self.layers.values():
            p = (ly.metadata or {}).get(keys.RESULTS_PATH)
            if p:
                return p
        return None

    def forget(self, layer) -> bool:
        """*layer* was removed from the viewer: drop it; False when no attention layer is
        left (nothing to control any more)."""
        for role, ly in list(self.layers.items()):
            if ly is layer:
                del self.layers[role]
        if self.slide_layer is layer:
            self.slide_layer = None
        return any(r in self.layers for r in L.ROLES.values())


def slide_layers(viewer) -> list:
    """The slide layers of *viewer* (opened by napari-mran's slide reader)."""
    return [ly for ly in viewer.layers if keys.SLIDE in (ly.metadata or {})]


#: the viewers whose scale bar napari-mran has turned on once (never again after that:
#: a user who turns it off keeps it off)
_SCALE_BAR_SET: weakref.WeakSet = weakref.WeakSet()


def show_scale_bar(viewer, slide) -> bool:
    """Turn on *viewer*'s scale bar (in µm: the slide layer's units) the first time a
    slide with a known MPP is shown in it; True when it was turned on now."""
    if viewer is None or getattr(slide, "mpp", None) is None or viewer in _SCALE_BAR_SET:
        return False
    _SCALE_BAR_SET.add(viewer)
    bar = scale_bar_of(viewer)
    if bar.visible:
        return False
    bar.visible = True
    return True


def scale_bar_of(viewer):
    """The viewer's scale-bar overlay (``viewer.canvas.overlays`` since napari 0.9,
    where ``viewer.scale_bar`` is deprecated; that one before)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    bar = overlays.get("scale_bar") if overlays is not None else None
    return bar if bar is not None else viewer.scale_bar


def same_file(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    """Whether *a* and *b* are given and name the same path."""
    if not a or not b:
        return False
    return os.path.abspath(a) == os.path.abspath(b)


def results_in(viewer) -> list:
    """The results whose layers are in *viewer*, in layer order, each once."""
    seen: dict[int, Any] = {}
    for ly in viewer.layers:
        result = (ly.metadata or {}).get(keys.RESULT)
        if result is not None:
            seen[id(result)] = result
    return list(seen.values())


def find_shown(viewer, result) -> Shown | None:
    """The layers of *result* in *viewer* (opened with the reader) and its slide layer
    if open, or None when none of its layers is there."""
    group: dict[str, Any] = {}
    frame = None
    for ly in viewer.layers:
        md = ly.metadata or {}
        if md.get(keys.RESULT) is result and md.get(keys.ROLE):
            group[md[keys.ROLE]] = ly
            frame = frame or md.get(keys.FRAME)
    if not group:
        return None
    path = (result.provenance.get("slide") or {}).get("path")
    slide_layer = None
    for ly in slide_layers(viewer):
        if same_file(ly.metadata[keys.SLIDE].path, path):
            slide_layer = ly
    return Shown(result=result, layers=group, frame=frame or SlideFrame.from_result(result),
                 slide_layer=slide_layer)


def apply_display(shown: Shown, display: Display, refresh_data: bool = True
                  ) -> dict[str, tuple[float, float]]:
    """Weighting, colour scaling and top-X % of the attention layers of *shown*
    (``refresh_data=False``: the layers already show them).  Returns the contrast
    limits of each level shown."""
    limits: dict[str, tuple[float, float]] = {}
    wanted = {keys.WEIGHTING: display.weighting, keys.SCALING: display.scaling,
              keys.TOP_PERCENT: float(display.top_percent)}
    for level, layer in shown.attention_layers():
        apply_colormap(layer, level, display.colormap)
        meta = layer.metadata or {}
        # a layer that already shows this result this way (a result opened by the reader
        # or a cohort row) keeps its data: re-rasterising it stalls the event loop
        current = meta.get(keys.RESULT) is shown.result and all(
            meta.get(k) == v for k, v in wanted.items())
        if refresh_data and not current:
            full = shown.result.heatmap(level, display.weighting).data
            layer.data = keep_top_fraction(full, display.top_percent)
            layer.contrast_limits = contrast_limits(full, display.scaling)
            layer.metadata = {**layer.metadata, **wanted}
        limits[level] = tuple(layer.contrast_limits)
    return limits


def apply_colormap(layer, level: str, choice: str) -> None:
    """The colormap of *choice* on an attention *layer* of *level* (nothing when it
    already has it: setting a colormap rebuilds its texture)."""
    cmap = colormap_for(level, choice)
    if layer.colormap.name != getattr(cmap, "name", cmap):
        layer.colormap = cmap


def apply_opacity(shown: Shown, opacity: float) -> None:
    for _level, layer in shown.attention_layers():
        layer.opacity = opacity


def show_top_bags(shown: Shown, viewer, k: int) -> None:
    """The top-bags layer of *shown* with the top *k* bags (added if it was removed)."""
    result = shown.result
    data, kw, kind = L.top_bags_data(
        result, shown.frame, k, f"{result.slide_name or 'slide'} {L.TOP_ROLE}",
        L.result_metadata(result, L.TOP_ROLE, {keys.FRAME: shown.frame,
                                               keys.RESULTS_PATH: shown.results_path()}))
    layer = shown.layers.get(L.TOP_ROLE)
    if layer is None or layer not in viewer.layers:
        layer = Layer.create(data, kw, kind)
        viewer.layers.append(layer)
        shown.layers[L.TOP_ROLE] = layer
    else:
        L.set_top_bags(layer, data, kw)
    install_hover(layer, shown.frame)


def top_bag_rows(result, k: int) -> tuple[str, list[tuple[int, list[str]]]]:
    """The top-bags table: the probability column's class, and (bag index, cells) per
    row, highest bag attention first."""
    ci = result.n_classes - 1
    rows = [(int(i), [str(r + 1), f"{result.bag_attention[i]:.4f}",
                      f"{result.bag_probs[i, ci]:.3f}",
                      f"{int(result.boxes[i, 0])}, {int(result.boxes[i, 1])}"])
            for r, i in enumerate(result.top_bags(k))]
    return result.class_names[ci], rows


def zoom_to_bag(viewer, shown: Shown, index: int) -> None:
    """Centre the camera on bag *index* of *shown* and fit it."""
    (y0, x0), (y1, x1) = shown.frame.box_to_world(shown.result.boxes[index])
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = ((y0 + y1) / 2.0, (x0 + x1) / 2.0)
    h, w = (float(v) for v in viewer.canvas.size) if hasattr(viewer, "canvas") \
        else (600.0, 800.0)
    side = max(abs(y1 - y0), abs(x1 - x0), 1e-9)
    camera.zoom = 0.8 * min(h, w) / side
