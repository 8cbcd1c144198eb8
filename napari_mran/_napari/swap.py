"""Showing another slide in the layers already there (no Qt): the Cohort review panel
swaps rows with it.

A new napari layer costs its layer controls (Qt widgets) and, on its first draw, a new
shader program: ~0.1 s each on the event loop of a 2-core machine with software GL, a
dozen stalls per row when every row removed six layers and added six
(docs/performance.md, "Cohort review: browsing").  :class:`Swap` updates each layer of
the previous slide whose role the new slide also has (:func:`.layers.update_layer`) and
removes or adds only the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.layers import Layer

from . import keys
from . import layers as L
from .hover import install_hover


class Swap:
    """Turn *own* (the layers a panel added, updated in place as the steps run) into
    the layer-data tuples *tuples*, bottom to top.

    With *announce*, the topmost result layer is always added anew, never updated: the
    Analyze widget adopts a result from an inserted layer and finds the updated layers
    of that result with it.  That costs a removal (napari runs a full garbage
    collection after each) and a new layer: ~0.2 s each.  New result layers below it
    get their result (``keys.RESULT``) only just before it goes in, so that the widget
    finds the whole set when it adopts (the layers go in one per event-loop turn).
    Without *announce*, every result layer gets its new metadata in the last step, at
    once (for a widget that follows ``layer.events.metadata``).
    """

    def __init__(self, viewer, own: list, tuples: list[tuple], announce: bool = True):
        self.viewer = viewer
        self.own = own
        self.wanted = [(L.layer_role(t[1].get("metadata")), t) for t in tuples]
        self.announce = next((r for r, _t in reversed(self.wanted) if r != L.SLIDE_ROLE),
                             None) if announce else None
        previous: dict = {}
        for ly in own:
            role = L.layer_role(ly.metadata)
            if ly in viewer.layers and role not in previous:
                previous[role] = ly
        self.reuse = {r: previous[r] for r, (_d, kw, kind) in self.wanted
                      if r in previous and r != self.announce
                      and L.reusable(previous[r], kind, kw)}
        kept = list(self.reuse.values())
        self.drop = [ly for ly in own if not any(ly is k for k in kept)]
        own[:] = [ly for ly in own if any(ly is k for k in kept)]
        self.pending: list[tuple] = []  # (new layer, its metadata with the result)

    def steps(self) -> list[Callable[[], None]]:
        """One callable per event-loop turn: the removals, then each layer, bottom up."""
        return ([lambda ly=ly: self._remove(ly) for ly in reversed(self.drop)]
                + [lambda r=r, t=t: self._place(r, t) for r, t in self.wanted]
                + [self._complete])

    def _remove(self, layer) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _place(self, role, layer_data: tuple) -> None:
        if role == self.announce:
            self._complete()
        data, kw, kind = layer_data
        meta = kw.get("metadata") or {}
        layer = self.reuse.get(role)
        if layer is not None and layer in self.viewer.layers:
            if self.announce is None and keys.RESULT in meta:
                # without an inserted layer, the widget may follow the layers' metadata:
                # the whole set changes result at once, in the last step
                self.pending.append((role, meta))
                kw = {**kw, "metadata": dict(layer.metadata)}  # (napari clears, then fills)
            L.update_layer(layer, data, kw, kind)
            if keys.RESULT in layer.metadata:
                install_hover(layer)  # (its frame changes with the slide)
            return
        if role != self.announce and keys.RESULT in meta:
            self.pending.append((role, meta))
            kw = {**kw, "metadata": {k: v for k, v in meta.items() if k != keys.RESULT}}
        layer = Layer.create(data, kw, kind)
        self.own.append(layer)
        insert_inactive(self.viewer, self._index_for(role), layer)

    def _complete(self) -> None:
        """Give the new layers held back their result (see the class docstring)."""
        pending, self.pending = self.pending, []
        layers = {L.layer_role(ly.metadata): ly for ly in self.own if ly in self.viewer.layers}
        for role, meta in pending:
            layer = layers.get(role)
            if layer is not None:
                layer.metadata = meta
                install_hover(layer)

    def _index_for(self, role) -> int:
        """Where a new layer of *role* goes: just above the nearest layer of the new
        slide below it, else just below the nearest one above it, else on top."""
        roles = [r for r, _t in self.wanted]
        at = roles.index(role)
        layers = self.viewer.layers
        placed = {L.layer_role(ly.metadata): ly for ly in self.own if ly in layers}
        for r in reversed(roles[:at]):
            if r in placed:
                return layers.index(placed[r]) + 1
        for r in roles[at + 1:]:
            if r in placed:
                return layers.index(placed[r])
        return len(layers)


def insert_inactive(viewer, index: int, layer) -> None:
    """Insert *layer* at *index* without making it the active layer.

    napari activates every inserted layer: its controls replace the active layer's and
    the viewer buttons restyle, ~30 ms more on the event loop per layer on a 2-core
    machine.  Uses a private switch of napari's layer list (best effort: a plain insert
    if it moved).
    """
    layers = viewer.layers
    if not isinstance(getattr(layers, "_activate_on_insert", None), bool):
        layers.insert(index, layer)
        return
    before, layers._activate_on_insert = layers._activate_on_insert, False
    try:
        layers.insert(index, layer)
    finally:
        layers._activate_on_insert = before
