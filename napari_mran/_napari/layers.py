"""Turn headless objects into napari layer-data tuples (no napari import needed here)."""

from __future__ import annotations

import os

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
