"""What a synthetic slide is: its level-0 geometry and ground truth (:class:`SyntheticSlideInfo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["MASK_DOWNSAMPLE", "NODE", "SyntheticSlideInfo", "fmt"]

#: The ground-truth mask is stored at 1/16 of level-0 resolution.
MASK_DOWNSAMPLE = 16
NODE = MASK_DOWNSAMPLE  # spacing (px) of the lattice on which fields are evaluated


def fmt(v: float) -> str:
    """A number as written into TIFF descriptions (6 significant digits)."""
    return f"{v:.6g}"


@dataclass(frozen=True)
class SyntheticSlideInfo:
    """What :func:`make_slide` wrote, with the ground truth in level-0 pixels.

    ``tumour_boxes`` are ``(x0, y0, x1, y1)`` (x1/y1 exclusive) bounding boxes
    of each tumour region as it appears in the mask; ``tumour_ellipses`` are
    the regions' base ellipses ``(cx, cy, rx, ry, angle_degrees)`` before the
    irregular border is applied.  Fractions are measured on the mask:
    ``tumour_area_fraction`` is tumour area / slide area,
    ``tumour_tissue_fraction`` is tumour area / tissue area (the quantity the
    ``tumour_fraction`` argument of :func:`make_slide` asks for) and
    ``tissue_fraction`` is tissue area / slide area.
    """

    path: Path
    mask_path: Path
    width: int
    height: int
    mpp: float
    tumour: bool
    seed: int
    tumour_boxes: tuple[tuple[int, int, int, int], ...]
    tumour_ellipses: tuple[tuple[float, float, float, float, float], ...]
    tumour_area_fraction: float
    tumour_tissue_fraction: float
    tissue_fraction: float
    level_dimensions: tuple[tuple[int, int], ...] = ()
    tile: int = 256
    quality: int = 90
    mask_downsample: int = MASK_DOWNSAMPLE
    colorspace: str = "rgb"
    stain_shift: dict | None = None  # StainShift.to_dict() of a shifted slide

    @property
    def label(self) -> int:
        """Slide-level label: 1 = tumour, 0 = normal."""
        return int(self.tumour)
