"""A region of interest: polygons in level-0 pixels, where they came from, and what an
analysis needs of them (the bags they meet, a raster, the check against a slide)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MRANError
from .geometry import boxes_intersect, clean_ring, clip_ring, crossing, rasterize, ring_area

__all__ = ["MAX_RECORDED_POINTS", "Region", "RoiError", "make_region"]

#: the region's geometry is recorded in provenance when it has at most this many points
MAX_RECORDED_POINTS = 20_000
#: a region reaching this many slide sides beyond the slide is taken for a wrong scale
_FAR = 1.5
_SCALE_HINT = "are the coordinates in level-0 pixels? (microns? a lower level?)"


class RoiError(MRANError, ValueError):
    """A region of interest that cannot be used; the message names its source."""


Polygon = tuple[np.ndarray, ...]  # exterior ring, then holes; each (n, 2) float64, open


@dataclass(frozen=True, eq=False)
class Region:
    """Polygons (an exterior ring and holes each) in float level-0 px, with their
    ``source`` (a file, or "napari shapes layer <name>"), the ``classes`` filter used
    and the ``sha256`` of their canonical JSON (the analysis key).  Make one with
    :func:`make_region` (validated) or :func:`~napari_mran.roi.read_geojson`."""

    polygons: tuple[Polygon, ...]
    source: str
    classes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    sha256: str = field(default="", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(
            self.canonical().encode()).hexdigest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Region) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    # ---------------------------------------------------------------- views
    def canonical(self) -> str:
        """The geometry as canonical JSON (coordinates rounded to 1/1000 px)."""
        polys = [[np.round(r, 3).tolist() for r in poly] for poly in self.polygons]
        return json.dumps(polys, separators=(",", ":"))

    @property
    def n_points(self) -> int:
        return sum(len(r) for poly in self.polygons for r in poly)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of every exterior ring."""
        pts = np.concatenate([poly[0] for poly in self.polygons])
        return (float(pts[:, 0].min()), float(pts[:, 1].min()),
                float(pts[:, 0].max()), float(pts[:, 1].max()))

    def area_px(self, width: float | None = None, height: float | None = None) -> float:
        """Area in level-0 px² (holes subtracted; overlaps between polygons counted
        twice); with a slide size, only what lies on the slide."""
        total = 0.0
        for poly in self.polygons:
            for k, ring in enumerate(poly):
                if width is not None and height is not None:
                    ring = clip_ring(ring, width, height)
                a = ring_area(ring) if len(ring) >= 3 else 0.0
                total += a if k == 0 else -a
        return max(total, 0.0)

    def intersects(self, boxes: np.ndarray) -> np.ndarray:
        """(N,) bool: which level-0 boxes ``[x0, y0, x1, y1]`` meet the region."""
        return boxes_intersect([list(p) for p in self.polygons], boxes)

    def mask(self, shape: tuple[int, int], scale: float | tuple[float, float],
             origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """Bool raster (h, w): pixel ``[r, c]`` (``scale`` level-0 px per pixel, one
        number or (sy, sx); the top-left corner at level-0 ``origin`` (y, x)) is inside
        when its centre is (even-odd per polygon, polygons united)."""
        if isinstance(scale, (tuple, list)):
            sy, sx = float(scale[0]), float(scale[1])
        else:
            sy = sx = float(scale)
        out = np.zeros(shape, dtype=bool)
        for poly in self.polygons:
            out |= rasterize(list(poly), shape, (sy, sx), origin)
        return out

    def record(self, slide_size: tuple[int, int], mpp: Any = None) -> dict[str, Any]:
        """What provenance records (``bags_kept``/``bags_outside`` added by the engine)."""
        w, h = slide_size
        area = self.area_px(w, h)
        rec: dict[str, Any] = {
            "source": self.source, "sha256": self.sha256, "classes": list(self.classes),
            "n_polygons": len(self.polygons), "bbox": [round(v, 3) for v in self.bbox],
            "area_px": round(area, 1), "area_um2": None, "notes": list(self.notes)}
        if mpp is not None:
            mx, my = (mpp, mpp) if np.ndim(mpp) == 0 else mpp
            rec["area_um2"] = round(area * float(mx) * float(my), 1)
        if self.n_points <= MAX_RECORDED_POINTS:
            rec["polygons"] = json.loads(self.canonical())
        return rec

    # ---------------------------------------------------------------- checks
    def check_slide(self, width: int, height: int) -> Region:
        """RoiError when the region cannot belong to a ``width`` x ``height`` slide
        (normalised coordinates, far beyond the slide, wholly outside it); a region
        partly outside is kept (only its part on the slide counts) with a note."""
        x0, y0, x1, y1 = self.bbox
        where = f"{self.source}: region bbox ({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f})"
        if max(abs(x0), abs(y0), abs(x1), abs(y1)) <= 1.0:
            raise RoiError(f"{where} lies within [0, 1]: normalised coordinates? {_SCALE_HINT}")
        if x1 > _FAR * width or y1 > _FAR * height or x0 < -(_FAR - 1) * width \
                or y0 < -(_FAR - 1) * height:
            raise RoiError(f"{where} reaches far beyond the {width} x {height} px slide: "
                           f"{_SCALE_HINT}")
        if self.area_px(width, height) <= 0.0:
            raise RoiError(f"{where} lies wholly outside the {width} x {height} px slide")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            note = (f"the region reaches past the slide edge ({width} x {height} px); only "
                    "its part on the slide is analysed")
            if note not in self.notes:
                return Region(self.polygons, self.source, self.classes, (*self.notes, note))
        return self


def _ring(raw: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise RoiError(f"{where}: coordinates must be [x, y] number pairs") from None
    if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] == 0:
        raise RoiError(f"{where}: coordinates must be a list of [x, y] pairs, not shape "
                       f"{arr.shape}")
    if not np.isfinite(arr[:, :2]).all():
        raise RoiError(f"{where}: coordinates must be finite numbers")
    ring = clean_ring(arr[:, :2])
    # crossing edges first: a bow-tie's signed areas cancel, and "degenerate" would mislead
    hit = crossing(ring) if len(ring) >= 4 else None
    if len(ring) < 3 or (hit is None and ring_area(ring) < 1e-6):
        raise RoiError(f"{where}: empty or degenerate ring ({len(ring)} distinct point(s), "
                       f"area {ring_area(ring) if len(ring) >= 3 else 0.0:.3g} px²)")
    if hit is not None:
        raise RoiError(f"{where}: self-intersecting ring (edges meet near x={hit[0]:.1f}, "
                       f"y={hit[1]:.1f}); fix the annotation (QuPath: Objects > Annotations > "
                       "Simplify shape, or redraw it)")
    return ring


def make_region(polygons: Iterable[Sequence[Any]], source: str, classes: Iterable[str] = (),
                notes: Iterable[str] = (), labels: Sequence[str] | None = None) -> Region:
    """A validated :class:`Region` from polygons given as lists of rings (exterior
    first) of [x, y] level-0 points.  ``labels`` name each polygon in errors."""
    polys: list[Polygon] = []
    for k, poly in enumerate(polygons):
        label = labels[k] if labels is not None else f"polygon {k + 1}"
        rings = tuple(_ring(r, f"{source}: {label}" + ("" if i == 0 else f", hole {i}"))
                      for i, r in enumerate(poly))
        if not rings:
            raise RoiError(f"{source}: {label}: a polygon without rings")
        polys.append(rings)
    if not polys:
        raise RoiError(f"{source}: no polygons")
    if any(not math.isfinite(v) for v in np.concatenate([p[0] for p in polys]).ravel()):
        raise RoiError(f"{source}: coordinates must be finite numbers")
    return Region(tuple(polys), source, tuple(classes), tuple(notes))
