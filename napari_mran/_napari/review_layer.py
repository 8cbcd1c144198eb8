"""Review marks as a napari Labels layer, and back (no Qt; docs/gui.md "Review marks").

The layer ``"<slide> review marks"`` is a raster at patch resolution over the bag grid
(8 x 8 px per bag), placed like the patch-attention layer.  Its values: 0 no mark,
1 agree, 2 disagree, 3 + i the class label ``class_names[i]``; a fixed colour per value
(agree / disagree: those of the reviews export; labels: :data:`LABEL_COLORS`).  A bag
mark fills its bag's 8 x 8 px, a patch mark its one pixel, drawn over its bag's mark.

:class:`ReviewSession` keeps a :class:`~napari_mran.review.Reviews` (the truth) and
its layer in step: a paint / fill / erase stroke on the layer becomes marks (``"bag"``
mode: every bag the stroke touches gets the painted mark; ``"patch"`` mode: every
painted patch), a click in pan/zoom mode marks the bag or patch under the cursor, and
the layer is then redrawn from the marks.  One stroke or click is one undo step.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_file
from ..export.reviews import MARK_COLORS
from ..results.schema import PATCHES_PER_SIDE
from ..review import Reviews, default_reviewer
from ..vocab import Level
from . import keys
from .frame import SlideFrame, level_geometry
from .layers import result_metadata

__all__ = ["AGREE", "DISAGREE", "MODES", "ROLE", "ReviewSession", "label_colormap", "legend",
           "mark_value", "marks_raster", "review_layer_data", "value_mark", "write_recovery"]

ROLE = "review marks"
AGREE, DISAGREE, FIRST_LABEL = 1, 2, 3
#: what a click or a stroke marks
MODES = ("bag", "patch")
K = PATCHES_PER_SIDE  # raster px per bag side
#: colours of label values (class i: LABEL_COLORS[i % 8]): none near the agree green or the
#: disagree red, so a label never looks like agree/disagree (the export colours labels
#: by the class's QuPath colour instead)
LABEL_COLORS = ((40, 110, 255), (255, 160, 0), (170, 60, 230), (0, 200, 210),
                (240, 220, 0), (255, 0, 200), (140, 90, 40), (150, 150, 150))
#: layer metadata key: this layer is a review-marks layer (value: the store path)
REVIEW_KEY = "mran_review_marks"


def mark_value(mark: str, label: str | None, class_names: list[str]) -> int:
    """The layer value of a mark (1 agree, 2 disagree, 3 + class index for a label)."""
    if mark == "agree":
        return AGREE
    if mark == "disagree":
        return DISAGREE
    if mark == "label" and label in class_names:
        return FIRST_LABEL + class_names.index(label)
    raise ValueError(f"no layer value for mark {mark!r} with label {label!r}")


def value_mark(value: int, class_names: list[str]) -> tuple[str, str | None] | None:
    """(mark, label) of a layer value; None for 0 and for values that mean nothing."""
    v = int(value)
    if v == AGREE:
        return "agree", None
    if v == DISAGREE:
        return "disagree", None
    if FIRST_LABEL <= v < FIRST_LABEL + len(class_names):
        return "label", class_names[v - FIRST_LABEL]
    return None


def legend(class_names: list[str]) -> list[tuple[int, str, tuple[float, float, float, float]]]:
    """(value, text, RGBA 0..1) of every mark value, in order."""
    def rgba(rgb) -> tuple[float, float, float, float]:
        return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, 1.0)

    out = [(AGREE, "Agree", rgba(MARK_COLORS["agree"])),
           (DISAGREE, "Disagree", rgba(MARK_COLORS["disagree"]))]
    for i, name in enumerate(class_names):
        out.append((FIRST_LABEL + i, f"Label: {name}",
                    rgba(LABEL_COLORS[i % len(LABEL_COLORS)])))
    return out


def label_colormap(class_names: list[str]):
    """A napari DirectLabelColormap: the legend's colours, everything else transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    colors.update({v: c for v, _text, c in legend(class_names)})
    return DirectLabelColormap(color_dict=colors)


def marks_raster(reviews: Reviews, result) -> np.ndarray:
    """The layer data of *reviews* on *result*'s bag grid: (rows * 8, cols * 8) uint8."""
    rows, cols = result.grid_shape
    out = np.zeros((rows * K, cols * K), np.uint8)
    names = list(result.class_names)
    bag_px = int(result.bag_px)
    marks = reviews.marks
    for m in sorted(marks, key=lambda m: m.patch_index is not None):  # bags first
        r, c = m.bag_box[1] // bag_px * K, m.bag_box[0] // bag_px * K
        v = mark_value(m.mark, m.label, names)
        if m.patch_index is None:
            out[r:r + K, c:c + K] = v
        else:
            pr, pc = divmod(m.patch_index, K)
            out[r + pr, c + pc] = v
    return out


def review_layer_data(reviews: Reviews, result, frame: SlideFrame, name: str,
                      extra_metadata: dict | None = None) -> tuple:
    """``(data, kwargs, "labels")`` of the review-marks layer of *reviews*."""
    scale, translate = frame.heatmap_transform(level_geometry(Level.PATCH, int(result.bag_px)))
    meta = result_metadata(result, ROLE, {keys.FRAME: frame, REVIEW_KEY: str(reviews.store),
                                          keys.RESULTS_PATH: str(reviews.store),
                                          **(extra_metadata or {})})
    kwargs = {"name": name, "scale": scale, "translate": translate,
              "colormap": label_colormap(list(result.class_names)), "opacity": 0.6,
              "blending": "translucent", "metadata": meta, **frame.layer_units()}
    return (marks_raster(reviews, result), kwargs, "labels")


class ReviewSession:
    """The marks of one shown result and their Labels layer, kept in step (no Qt).

    ``mark``/``label``: what a click or stroke marks; ``mode``: ``"bag"`` or
    ``"patch"``; ``reviewer``: the name stored with each mark.  *on_change* callbacks
    run after every change of the marks (the panel: counts, autosave).  *defer*
    runs a callable once the current napari event is over (the panel: a zero-delay Qt
    timer): napari emits a paint event before it writes a single ``paint()`` call's
    pixels, so what was painted is read after it.
    """

    def __init__(self, reviews: Reviews, result, frame: SlideFrame, reviewer: str | None = None,
                 defer: Callable[[Callable[[], Any]], Any] | None = None):
        self._defer = defer or (lambda f: f())
        self.reviews, self.result, self.frame = reviews, result, frame
        self.class_names = list(result.class_names)
        self.reviewer = reviewer or default_reviewer()
        self.mark, self.label, self.mode = "agree", None, "bag"
        self.layer: Any = None
        self.on_change: list[Callable[[], None]] = []
        self._bag_of = {(int(r), int(c)): i for i, (r, c) in enumerate(result.bag_rc)}
        self._raster = marks_raster(reviews, result)

    # -- the layer ---------------------------------------------------------------------
    def layer_data(self, name: str | None = None) -> tuple:
        slide = self.result.slide_name or "slide"
        return review_layer_data(self.reviews, self.result, self.frame,
                                 name or f"{slide} {ROLE}")

    def attach(self, layer) -> None:
        """Follow *layer*'s paint strokes and clicks (its own undo: the session's)."""
        self.layer = layer
        layer.events.paint.connect(self._on_paint)
        layer.mouse_drag_callbacks.append(self._on_mouse)
        layer.bind_key("Control-z", lambda _ly: self.undo(), overwrite=True)
        layer.bind_key("Control-Shift-z", lambda _ly: self.redo(), overwrite=True)
        self.set_current(self.mark, self.label)

    def detach(self) -> None:
        layer, self.layer = self.layer, None
        if layer is None:
            return
        layer.events.paint.disconnect(self._on_paint)
        if self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)

    def set_current(self, mark: str, label: str | None = None) -> None:
        """What clicks and strokes mark from now on (the layer's selected label too)."""
        value = mark_value(mark, label, self.class_names)  # ValueError for a bad pair
        self.mark, self.label = mark, label
        if self.layer is not None and self.layer.selected_label != value:
            self.layer.selected_label = value

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode

    # -- marking -----------------------------------------------------------------------
    def place_at(self, world_yx) -> tuple[int, int] | None:
        """(bag index, patch index) under world point *world_yx*, or None off the bags."""
        x0, y0 = self.frame.to_level0(world_yx)
        if x0 < 0 or y0 < 0:
            return None
        pp = self.result.bag_px / K
        pr, pc = int(y0 // pp), int(x0 // pp)
        bag = self._bag_of.get((pr // K, pc // K))
        return None if bag is None else (bag, (pr % K) * K + pc % K)

    def mark_place(self, bag: int, patch: int | None = None, *, toggle: bool = False) -> bool:
        """Mark a bag (patch None) or patch with the current mark, one undo step; with
        *toggle* a place that already has exactly that mark is cleared instead."""
        old = self.reviews.mark_at(bag, patch)
        if toggle and old is not None and (old.mark, old.label) == (self.mark, self.label):
            self.reviews.clear(bag, patch)
        else:
            self._set(bag, patch, self.mark, self.label)
        self._changed()
        return True

    def click(self, world_yx) -> bool:
        """A click at *world_yx*: mark (or unmark, see :meth:`mark_place`) the bag or
        patch there in the current mode; False off the bags."""
        where = self.place_at(world_yx)
        if where is None:
            return False
        return self.mark_place(where[0], where[1] if self.mode == "patch" else None,
                               toggle=True)

    def sync_from_layer(self) -> int:
        """Turn what was painted on the layer since the last sync into marks (one undo
        step) and redraw it from the marks; the number of marks changed."""
        if self.layer is None:
            return 0
        data = np.asarray(self.layer.data)
        rr, cc = np.nonzero(data != self._raster)
        values = data[rr, cc]
        with self.reviews.group():  # the stroke is one undo step
            n = self._apply_painted(rr, cc, values)
        if n:
            self._changed()
        else:
            self.redraw()
        return n

    def _apply_painted(self, rr, cc, values) -> int:
        if self.mode == "bag":
            per_bag: dict[int, Counter] = {}
            for r, c, v in zip(rr.tolist(), cc.tolist(), values.tolist()):
                bag = self._bag_of.get((r // K, c // K))
                if bag is not None:
                    per_bag.setdefault(bag, Counter())[v] += 1
            todo = [(bag, None, cnt.most_common(1)[0][0]) for bag, cnt in per_bag.items()]
        else:
            todo = [(self._bag_of.get((r // K, c // K)), (r % K) * K + c % K, v)
                    for r, c, v in zip(rr.tolist(), cc.tolist(), values.tolist())]
        return sum(self._paint_one(bag, p, v) for bag, p, v in todo if bag is not None)

    def _paint_one(self, bag: int, patch: int | None, value: int) -> int:
        if value == 0:
            if self.reviews.mark_at(bag, patch) is None:
                return 0
            self.reviews.clear(bag, patch)
            return 1
        what = value_mark(value, self.class_names)
        if what is None:
            return 0  # a value that means nothing: redrawn away
        self._set(bag, patch, *what)
        return 1

    def _set(self, bag: int, patch: int | None, mark: str, label: str | None) -> None:
        if patch is None:
            self.reviews.set_bag(bag, mark, label, reviewer=self.reviewer)
        else:
            self.reviews.set_patch(bag, patch, mark, label, reviewer=self.reviewer)

    # -- undo / redo -------------------------------------------------------------------
    def undo(self) -> bool:
        """Undo the last click / stroke / mark of this session (all its marks: one
        :meth:`Reviews.group` step)."""
        if not self.reviews.undo():
            return False
        self._changed()
        return True

    def redo(self) -> bool:
        if not self.reviews.redo():
            return False
        self._changed()
        return True

    @property
    def can_undo(self) -> bool:
        return self.reviews.can_undo

    @property
    def can_redo(self) -> bool:
        return self.reviews.can_redo

    # -- redraw ------------------------------------------------------------------------
    def _changed(self) -> None:
        self.redraw()
        for cb in list(self.on_change):
            cb()

    def redraw(self) -> None:
        """Show the marks on the layer (whatever was painted that is not a mark goes)."""
        self._raster = marks_raster(self.reviews, self.result)
        if self.layer is not None:
            self.layer.data = self._raster.copy()

    # -- napari callbacks --------------------------------------------------------------
    def _on_paint(self, _event=None) -> None:
        self._defer(self.sync_from_layer)

    def _on_mouse(self, layer, event):
        """A click (press and release without a drag) in pan/zoom mode marks."""
        if layer.mode != "pan_zoom" or event.button != 1:
            return
        start = np.asarray(event.position, float)
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or not np.allclose(np.asarray(event.position, float), start)
            yield
        if not moved:
            self.click(start)


def write_recovery(reviews: Reviews) -> Path:
    """Marks that could not be saved into their store, written beside it as JSON
    (``<store>.unsaved-reviews-<UTC time>.json``, atomically, never over a file)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    store = Path(reviews.store)
    path = store.parent / f"{store.name}.unsaved-reviews-{stamp}.json"
    with atomic_file(path) as fh:
        json.dump({"store": str(store), "marks": [m.to_json() for m in reviews.marks]},
                  fh, indent=1)
    return path
