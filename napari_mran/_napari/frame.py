"""Where a slide's level-0 pixels are in the viewer: :class:`SlideFrame`, and the bag
grid of an analysis in it (no napari import)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results import Heatmap, SlideResult
from ..vocab import PIXELS_PER_BAG


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


