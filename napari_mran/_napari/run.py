"""One analysis run of the widget, without Qt: its state, its data and its layers.

The Qt side (:mod:`._qt.run_panel`) starts the worker and feeds the worker's events
here on the main thread; :class:`Run` keeps the run's layers, paints the finished bags
into the attention rasters (progressive painting), and builds the final layers or
removes them.  A run goes RUNNING -> (CANCELLING ->) ENDING -> OVER and never back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
from napari.layers import Layer

from ..inference import AnalysisOptions
from ..vocab import LEVELS, Level, Weighting
from . import keys
from . import layers as L
from .frame import SlideFrame, level_geometry
from .hover import install_hover
from .raster import contrast_limits, empty_raster, paint_batch
from .shown import Display, Shown, same_file
from .swap import insert_inactive

#: the levels painted while a run goes (bag attention exists only at the end)
PAINTED_LEVELS = (Level.PATCH, Level.CELL)


class RunState(Enum):
    RUNNING = "running"        # the layers are prepared, then the worker analyses
    CANCELLING = "cancelling"  # cancel asked: the worker stops after the current batch
    ENDING = "ending"          # the outcome is being shown, or the layers removed
    OVER = "over"              # ended: nothing of the run changes the viewer any more

    @property
    def live(self) -> bool:
        """The worker may still send events that count."""
        return self in (RunState.RUNNING, RunState.CANCELLING)


def remove_layers(viewer, layers) -> None:
    """Remove those of *layers* still in the viewer (hidden first, so a partly removed
    set is never shown)."""
    pending = [ly for ly in layers if ly in viewer.layers]
    for ly in pending:
        ly.visible = False
    for ly in pending:
        if ly in viewer.layers:
            viewer.layers.remove(ly)


class Run:
    """An analysis of one slide layer with one model (main-thread state)."""

    def __init__(self, viewer, slide_layer, model, options: AnalysisOptions,
                 worker: Any = None):
        self.viewer = viewer
        self.slide_layer = slide_layer
        self.slide = slide_layer.metadata[keys.SLIDE]
        self.model = model
        self.options = options
        self.worker = worker                     # the worker thread's handle (Qt side)
        self.cancel_event = threading.Event()   # the worker checks it after every batch
        self.state = RunState.RUNNING
        self.t_start = time.perf_counter()
        self.slide_name = os.path.basename(self.slide.path)
        if getattr(model, "is_demo", False):  # the layer names say so
            self.slide_name += f" {L.DEMO_TAG}"
        self.frame = SlideFrame.from_layer(slide_layer)
        if options.bag_um is not None:  # the same rounding as analyze_slide (checked at
            self.bag_px = round(options.bag_um / self.slide.mpp[0])  # "tissue")
        else:
            self.bag_px = int(options.bag_px or model.config.bag_px)
        self.layers: dict[str, Any] = {}                     # role -> layer
        self.hidden: list[tuple[Any, bool]] = []             # earlier results, hidden
        self.to_show: list[str] = []                         # added hidden, to be shown
        self.rasters: dict[str, np.ndarray] = {}             # level -> raster
        self.box_index: dict[tuple[int, int], int] = {}      # bag (x0, y0) -> tissue bag
        self.colors: np.ndarray | None = None                # tissue-bag outlines
        self.cell_shown: np.ndarray | None = None            # (N, 64, 16) tissue cells
        self.bags_done = 0
        self.dirty = False                                   # painted since last repaint

    @property
    def slide_size(self) -> tuple[int, int]:
        width, height = (int(v) for v in self.slide.dimensions)
        return width, height

    # ------------------------------------------------------------ state changes
    def request_cancel(self) -> bool:
        """Cancel after the current batch; False when the run is not running."""
        if self.state is not RunState.RUNNING:
            return False
        self.state = RunState.CANCELLING
        self.cancel_event.set()
        return True

    def end(self) -> None:
        self.state = RunState.OVER

    # ------------------------------------------------------------ empty layers
    def hide_previous_results(self) -> None:
        """Earlier results of this slide: hidden now, removed when this run succeeds."""
        for ly in list(self.viewer.layers):
            md = ly.metadata or {}
            if md.get(keys.ROLE) and same_file(md.get(keys.SLIDE_PATH), self.slide.path):
                self.hidden.append((ly, bool(ly.visible)))
                ly.visible = False

    def empty_layers(self, display: Display) -> list[tuple[str, tuple]]:
        """(role, layer-data tuple) of every layer of the run, empty (NaN / no shapes)."""
        meta = {keys.RUN: "in progress", keys.SLIDE_PATH: os.path.abspath(self.slide.path),
                keys.FRAME: self.frame}
        out = [(L.TISSUE_ROLE, L.tissue_points_data(
            np.zeros((0, 4)), self.frame, f"{self.slide_name} {L.TISSUE_ROLE}",
            {**meta, keys.ROLE: L.TISSUE_ROLE}, size=self.bag_px * self.frame.scale[1]))]
        for level in LEVELS:
            self.rasters[level] = empty_raster(level, self.slide_size, self.bag_px)
            out.append((L.ROLES[level], L.heatmap_layer_data(
                self.rasters[level], level, self.bag_px, self.frame,
                f"{self.slide_name} {L.ROLES[level]}",
                {**meta, keys.ROLE: L.ROLES[level], keys.WEIGHTING: Weighting.LOCAL.value},
                scaling=display.scaling, opacity=display.opacity,
                visible=(level == Level.PATCH), colormap=display.colormap)))
        top = L.empty_top_bags_data(self.frame, self.bag_px,
                                    f"{self.slide_name} {L.TOP_ROLE}",
                                    {**meta, keys.ROLE: L.TOP_ROLE})
        # shown (empty) from the start: its first draw here, while the CPU is free,
        # makes the one with the top bags at the end ~0.1-0.2 s shorter (software GL)
        out.append((L.TOP_ROLE, top))
        return out

    def add_layer(self, role: str, data: tuple) -> None:
        """Add one of :meth:`empty_layers` (nothing once the run stopped running),
        hidden and not made active: its first draw is :meth:`show_layers`' turn (docs/
        gui.md, Responsiveness)."""
        if self.state is not RunState.RUNNING:
            return
        data, kw, kind = data
        if kw.get("visible", True):
            self.to_show.append(role)
        layer = Layer.create(data, {**kw, "visible": False}, kind)
        self.layers[role] = layer
        insert_inactive(self.viewer, len(self.viewer.layers), layer)

    def show_layer(self) -> None:
        """Show the next layer :meth:`add_layer` added hidden that is meant to be seen
        (one per event-loop turn: each is drawn the first time then)."""
        if self.to_show and self.state is RunState.RUNNING:
            layer = self.layers.get(self.to_show.pop(0))
            if layer is not None:
                layer.visible = True

    # ------------------------------------------------------------ progressive painting
    def on_tissue(self, boxes: np.ndarray, cell_shown: np.ndarray | None = None) -> None:
        """The tissue bags are known: show them (pending) and index them; *cell_shown*
        (N, 64, 16): their tissue cells, when the analysis tells (painted alone)."""
        boxes = np.asarray(boxes).reshape(-1, 4)
        self.cell_shown = None if cell_shown is None else np.asarray(cell_shown, bool)
        n = len(boxes)
        if n == 0:
            return
        bag_px = int(boxes[0, 2] - boxes[0, 0])
        if bag_px != self.bag_px:  # (cannot happen with the same rounding; stay correct)
            self.bag_px = bag_px
            for level in LEVELS:
                self.rasters[level] = empty_raster(level, self.slide_size, bag_px)
                layer = self.layers.get(L.ROLES[level])
                if layer is not None:
                    layer.data = self.rasters[level]
                    layer.scale, layer.translate = self.frame.heatmap_transform(
                        level_geometry(level, bag_px))
        self.box_index = {(int(b[0]), int(b[1])): i for i, b in enumerate(boxes)}
        self.colors = np.tile(np.asarray(L.BAG_PENDING, np.float32), (n, 1))
        tissue = self.layers.get(L.TISSUE_ROLE)
        if tissue is not None:
            data, kw, _kind = L.tissue_points_data(boxes, self.frame, tissue.name,
                                                   tissue.metadata, self.colors)
            tissue.data = data
            tissue.size = kw["size"]
            tissue.border_color = self.colors

    def on_bags(self, event) -> int:
        """Paint the bags of a ``bags`` event into the rasters (drawn at the next
        :meth:`repaint`); returns the number of bags done before it."""
        new = event.new
        if new is not None and self.rasters:
            shown = None
            if self.cell_shown is not None and len(self.cell_shown):
                shown = self.cell_shown[np.asarray(new.indices, np.int64)]
            paint_batch(self.rasters, self.bag_px, new.boxes, new.patch_attention,
                        new.cell_attention, shown, self.slide_size)
            for box in np.asarray(new.boxes).reshape(-1, 4):
                i = self.box_index.get((int(box[0]), int(box[1])))
                if i is not None and self.colors is not None:
                    self.colors[i] = L.BAG_DONE
            self.dirty = True
        previous, self.bags_done = self.bags_done, event.bags_done
        return previous

    def repaint(self, scaling: str) -> dict[str, tuple[float, float]]:
        """Show what was painted since the last call; the contrast limits of each level
        redrawn (empty when nothing changed)."""
        if not self.dirty:
            return {}
        self.dirty = False
        limits: dict[str, tuple[float, float]] = {}
        for level in PAINTED_LEVELS:
            layer = self.layers.get(L.ROLES[level])
            if layer is None:
                continue
            raster = self.rasters[level]
            layer.data = raster
            layer.contrast_limits = contrast_limits(raster, scaling)
            limits[level] = tuple(layer.contrast_limits)
        tissue = self.layers.get(L.TISSUE_ROLE)
        if tissue is not None and self.colors is not None:
            tissue.border_color = self.colors
        return limits

    # ------------------------------------------------------------ the end
    def teardown(self) -> None:
        """Remove the run's layers and show the hidden earlier result again."""
        self.state = RunState.ENDING
        layers = list(self.layers.values())
        self.layers.clear()
        remove_layers(self.viewer, layers)
        for ly, was_visible in self.hidden:
            if ly in self.viewer.layers:
                ly.visible = was_visible

    def finish_data(self, result, saved: str | None, display: Display) -> dict:
        """role -> layer-data tuple of the final layers (heatmaps, rasters, limits): no
        viewer access, so a worker thread can build it off the event loop."""
        tuples = L.result_layer_data(
            result, self.frame, slide_name=self.slide_name, weighting=display.weighting,
            scaling=display.scaling, top_k=display.top_k, top_percent=display.top_percent,
            opacity=display.opacity, colormap=display.colormap,
            extra_metadata={keys.RESULTS_PATH: saved,
                            keys.SLIDE_PATH: os.path.abspath(self.slide.path)})
        return {kw["metadata"][keys.ROLE]: (data, kw, kind) for data, kw, kind in tuples}

    def finish_steps(self, result, saved: str | None, display: Display,
                     show: Callable[[Shown], None], by_role: dict | None = None
                     ) -> list[Callable[[], None]]:
        """The final layer updates, one callable per event-loop turn; the last hands the
        result to *show* (its layers already show it) and makes the patch layer active.
        *by_role*: :meth:`finish_data`, when already built (in a worker)."""
        if by_role is None:
            by_role = self.finish_data(result, saved, display)

        def show_top_labels():
            layer = self.layers.get(L.TOP_ROLE)
            if layer is not None:
                layer.text.visible = True

        def replace_previous(layer):
            # the previous result of this slide (hidden since the start) is replaced, one
            # layer per turn (each removal is ~60-80 ms of napari work on 2 cores)
            remove_layers(self.viewer, [layer])
            self.hidden = [(ly, v) for ly, v in self.hidden if ly is not layer]

        def show_result():
            show(Shown(result=result, layers=dict(self.layers), frame=self.frame,
                       slide_layer=self.slide_layer, model=self.model))
            patch = self.layers.get(L.ROLES[Level.PATCH])
            if patch is not None:
                self.viewer.layers.selection.active = patch

        return [*(lambda r=r: self._update_layer(r, *by_role[r])
                  for r in L.ROLE_ORDER if r in by_role),
                show_top_labels,
                *(lambda ly=ly: replace_previous(ly) for ly, _visible in list(self.hidden)),
                show_result]

    def _update_layer(self, role: str, data, kw: dict, kind: str) -> None:
        layer = self.layers.get(role)
        viewer_layers = self.viewer.layers
        if layer is None or layer not in viewer_layers:
            layer = Layer.create(data, kw, kind)
            # keep the bottom-to-top order even if the run ended before every
            # progressive layer was added
            order = L.ROLE_ORDER
            below = [self.layers[r] for r in order[:order.index(role)]
                     if r in self.layers and self.layers[r] in viewer_layers]
            anchor = below[-1] if below else self.slide_layer
            index = (viewer_layers.index(anchor) + 1 if anchor in viewer_layers
                     else len(viewer_layers))
            viewer_layers.insert(index, layer)
            self.layers[role] = layer
        elif kind == "image":
            layer.data = data
            layer.contrast_limits = kw["contrast_limits"]
            layer.metadata = kw["metadata"]
        elif kind == "points":
            layer.data = data
            layer.size = kw["size"]
            layer.border_color = kw["border_color"]
            layer.metadata = kw["metadata"]
        elif kind == "shapes":
            L.set_top_bags(layer, data, kw, show_text=False)
        install_hover(layer, self.frame)
