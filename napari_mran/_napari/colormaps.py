"""The attention colormaps (Qt-free): translucent ramps that keep the tissue readable.

Each level has a ramp whose opacity grows with the value: the lowest value is fully
transparent, the highest 80 % opaque, so low-attention tissue stays as it is and the
overlay only tints what the model looked at (docs/gui.md, "Overlays").  NaN (no tissue,
not analysed yet) is transparent too.  The layers are drawn at opacity 1.0: the ramp does
the fading.  The classic opaque colormaps stay available as alternatives.

The ramps are napari :class:`~napari.utils.colormaps.Colormap` objects built once, at
import, and registered under their names (``ensure_colormap``), so a layer created later
never builds them on the event loop.
"""

from __future__ import annotations

import numpy as np
from napari.utils.colormaps import Colormap, ensure_colormap

from ..vocab import Level

#: opacity of the highest value of a ramp
TOP_ALPHA = 0.8
#: alpha at the control points (0, 1/3, 2/3, 1): transparent low end, then a ramp that
#: stays light up to the middle (the lower half of the values barely tints the tissue)
_ALPHAS = (0.0, 0.15, 0.45, TOP_ALPHA)

#: RGB at the control points of each level's ramp (distinguishable from one another)
_RAMP_RGB: dict[str, tuple[tuple[float, float, float], ...]] = {
    # bag attention γ: purple -> magenta -> orange -> pale yellow (magma-like)
    Level.BAG: ((0.35, 0.10, 0.55), (0.70, 0.20, 0.55), (0.98, 0.55, 0.20), (1.00, 0.95, 0.55)),
    # patch attention: blue -> yellow -> red
    Level.PATCH: ((0.10, 0.35, 1.00), (0.10, 0.55, 1.00), (1.00, 0.85, 0.10), (0.90, 0.08, 0.08)),
    # cell attention: teal -> green -> yellow
    Level.CELL: ((0.00, 0.55, 0.55), (0.00, 0.70, 0.50), (0.55, 0.85, 0.15), (1.00, 1.00, 0.15)),
}

#: the display name of the default choice ("translucent ramp") in the panel
RAMP_CHOICE = "translucent ramp"
#: the colormaps a user may pick instead (drawn opaque at the layer's opacity)
OPAQUE_CHOICES = ("viridis", "magma", "inferno", "turbo")
#: the opacity used with an opaque colormap (the old default)
OPAQUE_OPACITY = 0.6
#: the layer opacity with a ramp
RAMP_OPACITY = 1.0


def _ramp(level: str) -> Colormap:
    rgb = np.asarray(_RAMP_RGB[level], np.float32)
    rgba = np.concatenate([rgb, np.asarray(_ALPHAS, np.float32)[:, None]], axis=1)
    return Colormap(rgba, name=f"mran {level} ramp", display_name=f"mran {level} ramp",
                    controls=np.linspace(0.0, 1.0, len(rgba), dtype=np.float32),
                    nan_color="transparent")


#: level -> its translucent ramp (registered with napari under ``name``)
RAMPS: dict[str, Colormap] = {level: _ramp(level) for level in _RAMP_RGB}
for _cmap in RAMPS.values():
    ensure_colormap(_cmap)


def colormap_for(level: str, choice: str = RAMP_CHOICE):
    """The colormap of *level* for the panel's *choice*: the level's ramp for
    :data:`RAMP_CHOICE`, else the named opaque colormap."""
    if choice == RAMP_CHOICE:
        return RAMPS.get(level, RAMPS[Level.BAG])
    if choice not in OPAQUE_CHOICES:
        raise ValueError(f"unknown colour map {choice!r}; choose {RAMP_CHOICE!r} or one of "
                         + ", ".join(OPAQUE_CHOICES))
    return choice


def is_ramp(colormap) -> bool:
    """Whether *colormap* (a layer's colormap or a name) is one of our ramps."""
    name = getattr(colormap, "name", colormap)
    return any(name == c.name for c in RAMPS.values())


def opacity_for(choice: str) -> float:
    """The default layer opacity that goes with *choice*."""
    return RAMP_OPACITY if choice == RAMP_CHOICE else OPAQUE_OPACITY


def rgba_table(colormap, n: int = 256) -> np.ndarray:
    """(n, 4) float RGBA of *colormap* (a name or a Colormap) from low to high."""
    return np.asarray(ensure_colormap(colormap).map(np.linspace(0.0, 1.0, n)), np.float32)
