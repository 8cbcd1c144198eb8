"""Two results side by side with one fixed colour scale (no Qt).

:func:`side_by_side` puts each result (its slide layer and its attention layers) in its
own viewbox of napari's grid mode, and gives the attention layers of each level the same
contrast limits (the union of both), so one colour means one value in both slides and one
colour bar reads both.  :meth:`SideBySide.restore` puts back what it changed: the layer
order, the visibility of the other layers, the contrast limits, the grid settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..vocab import LEVELS
from .shown import Shown, find_shown


class CompareError(ValueError):
    """The two results cannot be shown side by side (the message says why)."""


@dataclass
class SideBySide:
    """What :func:`side_by_side` changed, to undo it."""

    viewer: Any
    groups: list[list[Any]]                       # the layers of each viewbox
    limits: dict[str, tuple[float, float]]        # level -> the shared contrast limits
    order: list[Any] = field(default_factory=list)
    visible: dict[int, tuple[Any, bool]] = field(default_factory=dict)
    old_limits: dict[int, tuple[Any, tuple]] = field(default_factory=dict)
    grid: tuple = (False, 1, (-1, -1))
    active: bool = True

    def restore(self) -> None:
        """Back to how the viewer was (layers removed meanwhile are skipped)."""
        if not self.active:
            return
        self.active = False
        grid = grid_of(self.viewer)
        grid.enabled, grid.stride, grid.shape = self.grid
        layers = self.viewer.layers
        _reorder(layers, [ly for ly in self.order if ly in layers])
        for layer, limits in self.old_limits.values():
            if layer in layers:
                layer.contrast_limits = limits
        for layer, was in self.visible.values():
            if layer in layers:
                layer.visible = was


def grid_of(viewer):
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    return getattr(canvas, "grid", None) or viewer.grid


def _group(viewer, result) -> list:
    shown: Shown | None = find_shown(viewer, result)
    if shown is None:
        raise CompareError(f"{result.slide_name or 'a result'}: none of its layers is open")
    levels = [lv for lv, _ly in shown.attention_layers()]
    if levels != list(LEVELS):
        raise CompareError(f"{result.slide_name}: an attention layer was removed; open the "
                           "result again to compare it")
    if shown.slide_layer is None:
        raise CompareError(f"{result.slide_name}: its slide is not open; open it to compare")
    return [shown.slide_layer, *(ly for _lv, ly in shown.attention_layers())]


def shared_limits(groups: list[list]) -> dict[str, tuple[float, float]]:
    """level -> (lowest low, highest high) over the attention layers of *groups*."""
    out = {}
    for i, level in enumerate(LEVELS, start=1):
        lows = [float(g[i].contrast_limits[0]) for g in groups]
        highs = [float(g[i].contrast_limits[1]) for g in groups]
        out[level] = (min(lows), max(highs))
    return out


def _reorder(layers, order: list) -> None:
    """Move the layers of *order* to the bottom of *layers*, in that order."""
    for i, layer in enumerate(order):
        src = layers.index(layer)
        if src != i:
            layers.move(src, i)


def side_by_side(viewer, left, right) -> SideBySide:
    """Show results *left* and *right* in two viewboxes with shared contrast limits.

    Raises :class:`CompareError` (nothing changed) when they are the same result or
    one of them lacks its slide layer or an attention layer.
    """
    if left is right:
        raise CompareError("choose two different results to compare")
    groups = [_group(viewer, left), _group(viewer, right)]
    layers = viewer.layers
    grid = grid_of(viewer)
    state = SideBySide(viewer, groups, shared_limits(groups), order=list(layers),
                       grid=(grid.enabled, grid.stride, tuple(grid.shape)))
    ours = [ly for g in groups for ly in g]
    for ly in layers:
        state.visible[id(ly)] = (ly, bool(ly.visible))
        if not any(ly is o for o in ours):
            ly.visible = False  # the other layers would take viewboxes of their own
    _reorder(layers, ours)
    for g in groups:
        g[0].visible = True
        for level, layer in zip(LEVELS, g[1:]):
            state.old_limits[id(layer)] = (layer, tuple(layer.contrast_limits))
            layer.contrast_limits = state.limits[level]
    grid.stride, grid.shape, grid.enabled = len(groups[0]), (1, 2), True
    return state
