"""A score raster aligned with the slide: :class:`Heatmap` (made by
:meth:`SlideResult.heatmap <napari_mran.results.SlideResult.heatmap>`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ResultsError

__all__ = ["Heatmap"]


def _nanmean_2x2(data: np.ndarray) -> np.ndarray:
    """Halve a 2-D float raster: mean of each 2 x 2 block ignoring NaN (all-NaN -> NaN)."""
    h, w = data.shape
    hh, ww = (h + 1) // 2, (w + 1) // 2
    padded = np.full((hh * 2, ww * 2), np.nan, dtype=np.float64)
    padded[:h, :w] = data
    blocks = padded.reshape(hh, 2, ww, 2)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(1, 3))
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Heatmap:
    """A 2-D score raster aligned with the slide by a level-0 affine.

    ``data[row, col]`` covers the level-0 box ``x0 = tx + col * sx``,
    ``y0 = ty + row * sy``, ``x1 = x0 + sx``, ``y1 = y0 + sy`` (pixel *corners*,
    level-0 pixels).  NaN marks pixels outside the analysed tissue bags.
    """

    data: np.ndarray  # (rows, cols) float32
    scale: tuple[float, float]  # (sy, sx) level-0 px per heatmap px
    translate: tuple[float, float]  # (ty, tx) level-0 px of the top-left corner of data[0, 0]
    level: str = "bag"
    weighting: str = "local"
    value: str = "attention"
    class_index: int | None = None
    class_name: str | None = None
    mpp: tuple[float, float] | None = None  # (x, y) µm per level-0 px, or None

    @property
    def name(self) -> str:
        """A short human-readable name, e.g. ``"patch attention (global)"``."""
        if self.value == "prob":
            return f"{self.level} P({self.class_name})"
        return f"{self.level} attention ({self.weighting})"

    def pixel_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Level-0 box ``(x0, y0, x1, y1)`` covered by ``data[row, col]``."""
        sy, sx = self.scale
        ty, tx = self.translate
        x0, y0 = tx + col * sx, ty + row * sy
        return (x0, y0, x0 + sx, y0 + sy)

    def index_at(self, x0: float, y0: float) -> tuple[int, int] | None:
        """``(row, col)`` of the heatmap pixel holding level-0 point (x0, y0), or None."""
        sy, sx = self.scale
        ty, tx = self.translate
        row, col = math.floor((y0 - ty) / sy), math.floor((x0 - tx) / sx)
        if 0 <= row < self.data.shape[0] and 0 <= col < self.data.shape[1]:
            return row, col
        return None

    @property
    def scale_um(self) -> tuple[float, float] | None:
        """(sy, sx) in µm per heatmap pixel, or None without MPP."""
        if self.mpp is None:
            return None
        return (self.scale[0] * self.mpp[1], self.scale[1] * self.mpp[0])

    @property
    def translate_um(self) -> tuple[float, float] | None:
        """(ty, tx) of the top-left corner in µm, or None without MPP."""
        if self.mpp is None:
            return None
        return (self.translate[0] * self.mpp[1], self.translate[1] * self.mpp[0])

    def layer_transform(
        self, units: str = "px", *, pixel_centres: bool = True
    ) -> tuple[tuple[float, float], tuple[float, float]]:
        """``(scale, translate)`` in (y, x) order for a viewer layer or NGFF metadata.

        ``units="px"``: level-0 pixels; ``"um"``: micrometres (needs MPP).  With
        ``pixel_centres=True`` (napari's and OME-Zarr readers' convention) the world
        coordinate of level-0 pixel ``i`` is its centre ``i`` (or ``i * mpp``), so the
        translate moves to the centre of ``data[0, 0]``: ``t + s / 2 - 0.5`` level-0 px.
        With ``False`` it is the corner convention of :attr:`translate`.
        """
        sy, sx = self.scale
        ty, tx = self.translate
        if pixel_centres:
            ty, tx = ty + sy / 2.0 - 0.5, tx + sx / 2.0 - 0.5
        if units == "px":
            return (sy, sx), (ty, tx)
        if units != "um":
            raise ValueError(f"units must be 'px' or 'um', not {units!r}")
        if self.mpp is None:
            raise ResultsError("heatmap: no MPP is known; cannot express it in µm")
        mx, my = self.mpp
        return (sy * my, sx * mx), (ty * my, tx * mx)

    def downsampled(self) -> Heatmap:
        """Half resolution (NaN-aware 2 x 2 mean); the top-left corner stays put."""
        return replace(self, data=_nanmean_2x2(self.data),
                       scale=(self.scale[0] * 2.0, self.scale[1] * 2.0))

    def pyramid(self, min_size: int = 256) -> list[Heatmap]:
        """This heatmap and successive halvings until both sides are <= *min_size*."""
        levels = [self]
        while max(levels[-1].data.shape) > min_size and min(levels[-1].data.shape) > 1:
            levels.append(levels[-1].downsampled())
        return levels
