"""Nuclei: two interleaved square lattices of cells, at most one nucleus per cell.

A nucleus's existence, position, size, shape and darkness are drawn from a
counter-based hash of (slide key, lattice, cell row, cell column), so a nucleus is the
same whichever tile draws it; its class (normal or tumour) is read from the fields at
the cell centre.  :meth:`NucleusLattice.density` paints the haematoxylin density of
the nuclei of one tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from ._fields import bilinear
from ._info import NODE

__all__ = ["CELL_UM", "NucleusLattice"]

CELL_UM = 24.0  # nucleus lattice cell size (micrometres)

# nucleus classes: (min, max) major semi-axis in um, aspect (minor/major) range,
# darkness (haematoxylin OD) range, probability of a nucleus per lattice cell
_NORMAL: dict[str, Any] = dict(r=(3.0, 4.5), aspect=(0.40, 0.75), dark=(0.55, 0.85), p=0.12)
_ROUND: dict[str, Any] = dict(r=(2.9, 3.6), aspect=(0.80, 1.00), dark=(0.65, 0.90))  # share of normal nuclei below
_ROUND_SHARE = 0.3
_TUMOUR: dict[str, Any] = dict(r=(5.0, 7.6), aspect=(0.62, 1.00), dark=(1.00, 1.55), p=0.92)
# per-class lookup tables, class index 0 = spindle (normal), 1 = round (normal), 2 = tumour
_CLASS_LO = {k: np.array([_NORMAL[k][0], _ROUND[k][0], _TUMOUR[k][0]]) for k in ("r", "aspect", "dark")}
_CLASS_SPAN = {k: np.array([_NORMAL[k][1], _ROUND[k][1], _TUMOUR[k][1]]) - _CLASS_LO[k]
               for k in ("r", "aspect", "dark")}
_CLASS_SPREAD = np.array([0.06, 0.06, 0.22])  # half-axis stretch spread (pleomorphism)


# ---------------------------------------------------------------------------
# counter-based hashing (order-independent randomness)
# ---------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = (np.uint64(v) for v in (30, 27, 31, 11))


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _cell_uniforms(key: np.uint64, lattice: np.ndarray, iy: np.ndarray, ix: np.ndarray,
                   n: int) -> np.ndarray:
    """``n`` uniforms in [0, 1) per cell (lattice, iy, ix): shape (n, N), float64."""
    with np.errstate(over="ignore"):
        base = np.uint64(key) ^ ((lattice.astype(np.uint64) + np.uint64(1)) * _GOLD)
        hy = _mix64(base + iy.astype(np.int64).view(np.uint64) * _M2)
        h = _mix64(hy ^ (ix.astype(np.int64).view(np.uint64) * _M1))
        p = (np.arange(1, n + 1, dtype=np.uint64) * _GOLD)[:, None]
        out = _mix64(h[None] + p)
    return (out >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


#: per lattice: (offset, first cell column, first cell row, columns, rows) of one tile
CellRanges: TypeAlias = list[tuple[int, int, int, int, int]]


@dataclass(frozen=True)
class NucleusLattice:
    """The nuclei of one slide: its hash ``key``, lattice cell side ``cell`` (px),
    px per micrometre ``um`` and haematoxylin strength ``h_scale``."""

    key: np.uint64
    cell: int
    um: float
    h_scale: float

    def density(self, x0: int, y0: int, T: int, tis_n: np.ndarray, tum_n: np.ndarray | None,
                n0x: int, n0y: int) -> np.ndarray | None:
        """Haematoxylin density (T, T) of the nuclei of both lattices, or None.

        ``tis_n`` / ``tum_n``: tissue / tumour fields on the nodes from (n0x, n0y)."""
        G = self.cell
        offs = (0, G // 2)
        ranges, lat, iy, ix = _tile_cells(x0, y0, T, G, offs)
        u = _cell_uniforms(self.key, lat, iy, ix, 12)
        # class and existence from the fields at the cell centre
        off_c = np.where(lat == 0, 0.0, float(offs[1]))
        tx = (ix * G - off_c + 0.5 * G) / NODE - n0x
        ty = (iy * G - off_c + 0.5 * G) / NODE - n0y
        fields = tis_n[None] if tum_n is None else np.stack([tis_n, tum_n])
        at_c = bilinear(fields, tx, ty)
        inside = at_c[0] > 0
        tumour_cls = inside & (at_c[1] > 0) if tum_n is not None else np.zeros_like(inside)
        exist = inside & (u[0] < np.where(tumour_cls, _TUMOUR["p"], _NORMAL["p"]))
        if not exist.any():
            return None
        sel = np.nonzero(exist)[0]
        u = u[:, sel]
        tc = tumour_cls[sel]
        # nucleus class: 0 spindle (normal), 1 round (normal), 2 tumour
        cls = np.where(tc, 2, (u[9] < _ROUND_SHARE).astype(np.intp))
        alpha = self._alpha(u, cls)
        return _paint(alpha, sel, lat[sel], ranges, x0, y0, T, G)

    def _alpha(self, u: np.ndarray, cls: np.ndarray) -> np.ndarray:
        """Haematoxylin density (n, G, G) of each nucleus in its cell, from its uniforms
        ``u`` (12, n) and class ``cls`` (n,)."""
        G = self.cell
        pick = lambda key, uu: _CLASS_LO[key][cls] + _CLASS_SPAN[key][cls] * uu  # noqa: E731
        um = self.um
        r_major = pick("r", u[3]) * um
        aspect = pick("aspect", u[4])
        dark = pick("dark", u[5]) * self.h_scale
        ang = u[6] * np.pi
        # pleomorphism: each half-axis (left/right, up/down) gets its own
        # stretch, giving lumpy, asymmetric outlines (continuous at the axes)
        spread = _CLASS_SPREAD[cls]
        st = 1.0 + spread * (2 * u[[7, 8, 10, 11]] - 1)  # x+, x-, y+, y-
        ext = r_major / st.min(0) + 1.5
        shrink = np.minimum(1.0, (0.5 * G) / ext)
        r_major = r_major * shrink
        m = np.minimum(ext * shrink, 0.5 * G)
        r_minor = r_major * aspect
        cxl = m + u[1] * (G - 2 * m)
        cyl = m + u[2] * (G - 2 * m)

        f32 = np.float32
        col = lambda a: np.asarray(a, f32)[:, None, None]  # noqa: E731
        lx = np.arange(G, dtype=f32) + f32(0.5)
        dx = lx[None, None, :] - col(cxl)
        dy = lx[None, :, None] - col(cyl)
        dx *= np.where(dx > 0, col(st[0]), col(st[1]))
        dy *= np.where(dy > 0, col(st[2]), col(st[3]))
        ca, sa = np.cos(ang), np.sin(ang)
        uu = dx * col(ca / r_major) + dy * col(sa / r_major)
        vv = dy * col(ca / r_minor) - dx * col(sa / r_minor)
        uu *= uu
        vv *= vv
        uu += vv  # q^2, 1 on the border
        # alpha ~ clip((1 - q) R + 1/2) with (1 - q) ~ (1 - q^2) / 2: a ~1 px soft edge
        half_r = 0.5 * np.sqrt(r_major * r_minor)
        uu *= col(half_r * dark)
        alpha = np.subtract(col((half_r + 0.5) * dark), uu, out=uu)
        np.clip(alpha, 0.0, col(dark), out=alpha)
        return alpha


def _tile_cells(x0: int, y0: int, T: int, G: int,
                offs: tuple[int, int]) -> tuple[CellRanges, np.ndarray, np.ndarray, np.ndarray]:
    """The lattice cells that overlap the tile: their ranges per lattice and (lattice,
    row, column) of each, lattice 0 first, row-major."""
    ranges: CellRanges = []
    lat_l, iy_l, ix_l = [], [], []
    for lattice, off in enumerate(offs):
        c0x, c1x = (x0 + off) // G, (x0 + T - 1 + off) // G
        c0y, c1y = (y0 + off) // G, (y0 + T - 1 + off) // G
        ncx, ncy = c1x - c0x + 1, c1y - c0y + 1
        ranges.append((off, c0x, c0y, ncx, ncy))
        iy_l.append(np.repeat(np.arange(c0y, c1y + 1), ncx))
        ix_l.append(np.tile(np.arange(c0x, c1x + 1), ncy))
        lat_l.append(np.full(ncx * ncy, lattice))
    return ranges, np.concatenate(lat_l), np.concatenate(iy_l), np.concatenate(ix_l)


def _paint(alpha: np.ndarray, sel: np.ndarray, lat_sel: np.ndarray, ranges: CellRanges,
           x0: int, y0: int, T: int, G: int) -> Any:
    """Sum of the cells' densities ``alpha`` (of the cells ``sel``, on lattices ``lat_sel``)
    over the (T, T) tile, or None when no lattice has a nucleus."""
    hem = None
    start = 0
    for lattice, (off, c0x, c0y, ncx, ncy) in enumerate(ranges):
        n_cells = ncx * ncy
        pick_l = lat_sel == lattice
        if pick_l.any():
            canvas = np.zeros((n_cells, G, G), np.float32)
            canvas[sel[pick_l] - start] = alpha[pick_l]
            image = canvas.reshape(ncy, ncx, G, G).transpose(0, 2, 1, 3).reshape(ncy * G, ncx * G)
            oy = y0 - (c0y * G - off)
            ox = x0 - (c0x * G - off)
            part = image[oy:oy + T, ox:ox + T]
            hem = part if hem is None else hem + part
        start += n_cells
    return hem
