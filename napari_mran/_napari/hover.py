"""The status-bar text of result layers: the MRAN scores under the cursor
(:func:`hover_text`, :func:`install_hover`, :func:`watch_viewer`; no napari import)."""

from __future__ import annotations

import math
import weakref

from ..results import SlideResult
from . import keys
from .frame import SlideFrame


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
            result = (self._layer_ref.metadata or {}).get(keys.RESULT)
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

    The result is the layer's ``metadata[keys.RESULT]``, or ``result()`` when a
    callable is given (the slide layer: whatever result is shown for it).
    """
    if frame is None:
        frame = (layer.metadata or {}).get(keys.FRAME)
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
        if keys.RESULT in (layer.metadata or {}):
            install_hover(layer)

    for layer in list(viewer.layers):
        if keys.RESULT in (layer.metadata or {}):
            install_hover(layer)
    viewer.layers.events.inserted.connect(on_insert)
    _WATCHED[id(viewer)] = weakref.ref(viewer)
