"""Keeping the viewer responsive while an analysis runs on a small machine
(docs/gui.md, "Responsiveness"): the garbage-collector pause, pre-warmed layer types
and glyphs, and work spread over event-loop turns."""

from __future__ import annotations

import gc

import numpy as np
from qtpy.QtCore import QTimer

#: the gap between two steps of :func:`in_turns`
STEP_GAP_MS = 15
#: Characters whose glyphs napari's text rendering builds on first use (~6 ms each on
#: a 2-core CPU): vispy's line-metrics probe ("ÅÉÑŐjgpqy") and the top-bag labels.
PREWARM_GLYPHS = "ÅÉÑŐjgpqy #0123456789.=γ"

_prewarmed = {"layer types": False}


def in_turns(steps, then=None) -> None:
    """Run *steps* one per event-loop turn, ~15 ms apart, so the viewer redraws and
    other events are handled in between; then *then*."""
    steps = list(steps)

    def next_step():
        if steps:
            steps.pop(0)()
            QTimer.singleShot(STEP_GAP_MS, next_step)
        elif then is not None:
            then()

    # (the first step also waits one gap: the click or event that asked for the
    # steps is finished and drawn first, not run in the same turn)
    QTimer.singleShot(STEP_GAP_MS, next_step)


def prewarm_layer_types() -> None:
    """Build one throw-away Points, Shapes and attention Image layer (with each of our
    ramps) while the viewer is idle.

    The first of each in a process costs ~0.35 s (module set-up), which would otherwise
    block the viewer when an analysis creates its layers.  (The ramps themselves are
    built at import, :mod:`..colormaps`.)
    """
    if _prewarmed["layer types"]:
        return
    _prewarmed["layer types"] = True
    from napari.layers import Image, Points, Shapes

    from ..colormaps import RAMPS

    for ramp in RAMPS.values():
        Image(np.full((2, 2), np.nan, np.float32), colormap=ramp, contrast_limits=(0, 1),
              blending="translucent", interpolation2d="nearest")
    Points(np.zeros((1, 2)), symbol="square", face_color="transparent")
    Shapes([np.array([[0.0, 0.0], [1.0, 1.0]])], shape_type="rectangle",
           features={"rank": [1]}, text={"string": "#{rank}"})


def glyph_prewarm_steps(viewer) -> list:
    """Callables that build, one character each, the text glyphs the first draw of a
    Points/Shapes layer needs, so that it does not cost ~0.15 s when an analysis adds its
    layers.  Uses napari's canvas font (private API): best effort, nothing if it moved."""
    try:
        info = viewer.window._qt_viewer.canvas.font_info
        info = info() if callable(info) else info  # (a method in napari 0.9)
        font = info.font_manager.get_font(info.face)
    except Exception:  # noqa: BLE001 - napari internals changed: skip the pre-warming
        return []

    def load(char):
        try:
            font[char]
        except Exception:  # noqa: BLE001
            pass
    return [lambda c=c: load(c) for c in PREWARM_GLYPHS]


class GcPause:
    """Objects alive when an analysis starts are moved out of the garbage collector's
    reach (``gc.freeze``) until it ends (``gc.unfreeze``).

    With napari and torch loaded a full collection walks millions of objects: 0.2-0.3 s
    with the event loop blocked, at a moment the analysis' allocations choose.  Frozen,
    full collections during the run only walk what the run created.  Nested runs (one
    per widget) are counted; nothing stays frozen after the last one ends.  The price:
    an object that existed at the click and becomes *cyclic* garbage during the run (a
    layer the user deletes meanwhile) is freed when the run ends, not before.

    One instance per run: :meth:`release` is idempotent.
    """

    depth = 0

    def __init__(self) -> None:
        if GcPause.depth == 0:
            gc.freeze()
        GcPause.depth += 1
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        GcPause.depth -= 1
        if GcPause.depth == 0:
            gc.unfreeze()
