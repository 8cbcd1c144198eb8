"""The scene of one slide: tissue and tumour layout, stain style, and rendering of tiles.

Everything is derived from the seed.  Low-frequency fields (signed distances to the
tissue and tumour borders) are evaluated on a lattice of nodes every ``NODE`` pixels
and interpolated inside a tile, so every tile sees the same values whatever order
tiles are rendered in.  Colour is formed with Beer-Lambert optical densities from
haematoxylin / eosin stain vectors, with small per-slide stain jitter.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np

from ._fields import Blobs, Waves, bisect, interp_index
from ._info import NODE
from ._nuclei import CELL_UM, NucleusLattice
from ._shift import StainShift
from ._texture import texture_bank

__all__ = ["Scene"]

#: range of the per-slide stroma eosin density (see docs/synthetic.md)
_E_LO, _E_HI = 0.85, 1.15  # deep enough that the reference white rule (all channels > 127) sees stroma

# Beer-Lambert stain vectors (optical density per unit stain, R, G, B)
_H_VEC = np.array([0.56, 0.72, 0.41])
_E_VEC = np.array([0.22, 0.80, 0.56])

#: (first node row, tissue field, tumour field or None) of one row of tiles
NodeBand: TypeAlias = tuple[int, np.ndarray, np.ndarray | None]


class Scene:
    """Everything needed to render any pixel of a slide, derived from the seed."""

    def __init__(self, width: int, height: int, seed: int, tumour: bool, mpp: float,
                 tumour_fraction: float | None, tile: int,
                 shift: StainShift | None = None) -> None:
        self.width, self.height, self.mpp, self.tile = width, height, mpp, tile
        ss = lambda k: np.random.SeedSequence(seed, spawn_key=(k,))  # noqa: E731
        rt = np.random.default_rng(ss(1))  # tissue layout (shared by tumour/normal twins)
        rs = np.random.default_rng(ss(3))  # style
        self.key = np.uint64(ss(4).generate_state(1, dtype=np.uint64)[0])
        um = 1.0 / mpp  # px per micrometre
        self.um = um
        cal_x, cal_y = self._make_tissue(rt)
        self.shift = shift
        self._make_style(rs)

        # --- nucleus lattice
        self.cell = max(8, int(round(CELL_UM * um)))
        self.nuclei = NucleusLattice(self.key, self.cell, um, self.h_scale)

        # --- tumour regions
        self.tumour = bool(tumour)
        self.tumour_blobs: Blobs | None = None
        self.tumour_scale = 0.0
        if tumour:
            self._make_tumour(np.random.default_rng(ss(2)), tumour_fraction, cal_x, cal_y)

        # node bands (fields on the 16 px lattice for one row of tiles), shared by threads
        self._bands: dict[int, NodeBand] = {}
        self._band_lock = threading.Lock()
        self._nx0 = (-self.cell) // NODE - 1
        self._nx1 = -(-(-(-width // tile) * tile + self.cell) // NODE) + 2

    # -- layout and style ------------------------------------------------------

    def _make_tissue(self, rt: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Tissue: 1-3 irregular blobs, calibrated to cover 40-70 % of the slide.
        Returns the calibration grid (x row, y column)."""
        width, height, um = self.width, self.height, self.um
        short = float(min(width, height))
        n = int(rt.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
        if n == 1:
            cx = rt.uniform(0.42, 0.58, 1) * width
            cy = rt.uniform(0.42, 0.58, 1) * height
        else:
            cx = rt.uniform(0.25, 0.75, n) * width
            cy = rt.uniform(0.25, 0.75, n) * height
        rx = rt.uniform(0.22, 0.42, n) * width / math.sqrt(n)
        ry = rt.uniform(0.22, 0.42, n) * height / math.sqrt(n)
        amps = rt.uniform(0.0, 0.11, (n, 4)) / np.sqrt(np.arange(1, 5))
        self.tissue_blobs = Blobs(cx, cy, rx, ry, rt.uniform(0, np.pi, n), amps,
                                  rt.uniform(0, 2 * np.pi, (n, 4)))
        self.tissue_rough = [
            Waves(rt, 6, (0.12 * short, 0.45 * short), 0.035 * short),
            Waves(rt, 8, (120 * um, 420 * um), min(22 * um, 0.02 * short)),
        ]
        target_tissue = float(rt.uniform(0.40, 0.70))
        cal_x, cal_y = self._calibration_grid()
        rough = self._rough(cal_x, cal_y)
        prep = self.tissue_blobs.prepare(cal_x, cal_y)
        self.tissue_scale = bisect(
            lambda s: float((np.maximum.reduce(Blobs.scaled(prep, s)) + rough > 0).mean()),
            0.02, 4.0, target_tissue)
        self.edge_px = 3.0 * um  # soft tissue border width
        return cal_x, cal_y

    def _make_style(self, rs: np.random.Generator) -> None:
        """Style: fibre orientation mix, eosin strength, stain jitter (and shift), texture
        offsets."""
        um = self.um
        self.fibre_mix = Waves(rs, 5, (250 * um, 900 * um), 1.0)
        self.eosin_var = Waves(rs, 5, (200 * um, 1200 * um), 1.0)
        self.e0 = float(rs.uniform(_E_LO, _E_HI))  # eosin density of stroma
        self.h_scale = float(rs.uniform(0.9, 1.12))  # per-slide haematoxylin strength
        jit = lambda v: (lambda w: w / np.linalg.norm(w))(v * rs.uniform(0.94, 1.06, 3))  # noqa: E731
        self.h_vec = [float(v) for v in jit(_H_VEC)]
        self.e_vec = [float(v) for v in jit(_E_VEC)]
        if self.shift is not None:  # after every draw: the same seed draws the same slide
            self.h_vec, self.e_vec = self.shift.stain_vectors(self.h_vec, self.e_vec)
        self.tex = texture_bank(self.mpp, self.tile)
        self.tex_off = [int(v) for v in rs.integers(0, 1 << 20, size=8)]

    # -- fields --------------------------------------------------------------

    def _calibration_grid(self, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
        nx = max(8, min(n, self.width // 8))
        ny = max(8, min(n, self.height // 8))
        xs = (np.arange(nx) + 0.5) * self.width / nx
        ys = (np.arange(ny) + 0.5) * self.height / ny
        return xs[None, :], ys[:, None]

    def _rough(self, X: np.ndarray, Y: np.ndarray) -> Any:
        return self.tissue_rough[0](X, Y) + self.tissue_rough[1](X, Y)

    def tissue_distance(self, X: np.ndarray, Y: np.ndarray) -> Any:
        """Approximate signed distance (px) to the tissue border at (X, Y), > 0 inside."""
        return self.tissue_blobs.distance(X, Y, self.tissue_scale) + self._rough(X, Y)

    def tumour_parts(self, X: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
        """Signed distance to each tumour region's border at (X, Y), > 0 inside."""
        assert self.tumour_blobs is not None
        rough = self.tumour_rough(X, Y)
        return [p + rough for p in self.tumour_blobs.each(X, Y, self.tumour_scale)]

    def _make_tumour(self, rng: np.random.Generator, fraction: float | None,
                     cal_x: np.ndarray, cal_y: np.ndarray) -> None:
        """Tumour: 1-3 irregular regions deep inside the tissue, scaled to cover
        ``fraction`` (default: random 5-25 %) of the tissue on the calibration grid."""
        short = float(min(self.width, self.height))
        target = float(rng.uniform(0.05, 0.25)) if fraction is None else float(fraction)
        tissue = self.tissue_distance(cal_x, cal_y)
        X, Y = np.broadcast_arrays(cal_x, cal_y)
        deep = tissue >= 0.45 * tissue.max()
        cand = np.stack([X[deep], Y[deep]], 1)
        n = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        centres: list[np.ndarray] = []
        for _ in range(n):
            for _attempt in range(60):
                c = cand[rng.integers(len(cand))]
                if all(np.hypot(*(c - o)) > 0.22 * short for o in centres):
                    break
            centres.append(c)
        centres_a = np.array(centres)
        base = rng.uniform(0.6, 1.3, n) * 0.1 * short
        aspect = rng.uniform(0.55, 1.0, n)
        amps = rng.uniform(0.0, 0.16, (n, 5)) / np.sqrt(np.arange(1, 6))
        self.tumour_blobs = Blobs(centres_a[:, 0], centres_a[:, 1], base, base * aspect,
                                   rng.uniform(0, np.pi, n), amps, rng.uniform(0, 2 * np.pi, (n, 5)))
        self.tumour_rough = Waves(rng, 6, (100 * self.um, 400 * self.um),
                                   min(12 * self.um, 0.01 * short))
        inside = tissue > 0
        n_in = max(1, int(inside.sum()))
        rough = self.tumour_rough(cal_x, cal_y)
        prep = self.tumour_blobs.prepare(cal_x, cal_y)

        def frac(s: float) -> float:
            d = np.maximum.reduce(Blobs.scaled(prep, s)) + rough
            return float(((d > 0) & inside).sum()) / n_in

        self.tumour_scale = bisect(frac, 0.0, 25.0, target)

    def nodes(self, ix0: int, nx: int, iy0: int, ny: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Fields at nodes (16*ix, 16*iy): tissue d, tumour d (or None), float32."""
        X = (np.arange(ix0, ix0 + nx, dtype=np.float64) * NODE)[None, :]
        Y = (np.arange(iy0, iy0 + ny, dtype=np.float64) * NODE)[:, None]
        tis = np.broadcast_to(self.tissue_distance(X, Y), (ny, nx)).astype(np.float32)
        tum: np.ndarray | None = None
        if self.tumour_blobs is not None:
            parts = self.tumour_parts(X, Y)
            tum = parts[0]
            for p in parts[1:]:
                tum = np.maximum(tum, p)
            tum = np.broadcast_to(tum, (ny, nx)).astype(np.float32)
        return tis, tum

    def _node_band(self, y0: int) -> NodeBand:
        """Fields on the node rows needed by the tiles starting at row y0 (cached)."""
        with self._band_lock:
            band = self._bands.get(y0)
            if band is None:
                G, T = self.cell, self.tile
                ny0 = (y0 - G) // NODE - 1
                ny1 = -(-(y0 + T + G) // NODE) + 2
                tis, tum = self.nodes(self._nx0, self._nx1 - self._nx0, ny0, ny1 - ny0)
                band = self._bands[y0] = (ny0, tis, tum)
                while len(self._bands) > 4:
                    self._bands.pop(min(self._bands))
        return band

    # -- rendering -------------------------------------------------------------

    def render_tile(self, x0: int, y0: int, T: int) -> np.ndarray:
        """RGB uint8 (T, T, 3) of the level-0 region [x0, x0+T) x [y0, y0+T)
        (under the stain shift's light and blur, when it has one)."""
        rgb = self._render_tile(x0, y0, T)
        return rgb if self.shift is None else self.shift.apply_light(rgb)

    def _render_tile(self, x0: int, y0: int, T: int) -> np.ndarray:
        assert T == self.tile
        tex = self.tex
        G = self.cell
        ny0, tis_b, tum_b = self._node_band(y0)
        n0x = (x0 - G) // NODE - 1
        n1x = -(-(x0 + T + G) // NODE) + 2
        tis_n = tis_b[:, n0x - self._nx0:n1x - self._nx0]
        tum_n = None if tum_b is None else tum_b[:, n0x - self._nx0:n1x - self._nx0]
        gx = (x0 + self.tex_off[0]) % tex.P_NOISE
        gy = (y0 + self.tex_off[1]) % tex.P_NOISE
        if float(tis_n.max()) < -self.edge_px:  # glass only: no tissue, no nuclei
            return tex.glass_rgb[gy:gy + T, gx:gx + T].copy()

        # nuclei (haematoxylin density) of both lattices
        hem = self.nuclei.density(x0, y0, T, tis_n, tum_n, n0x, ny0)
        hem_tot, eos = self._stain_densities(x0, y0, T, hem)

        if float(tis_n.min()) < self.edge_px:  # tissue border crosses the tile
            ix_, fx_ = interp_index(x0, n0x, T)
            iy_, fy_ = interp_index(y0, ny0, T)
            a = tis_n[:, ix_] * (1 - fx_) + tis_n[:, ix_ + 1] * fx_
            tissue = a[iy_] * (1 - fy_)[:, None] + a[iy_ + 1] * fy_[:, None]
            tissue *= np.float32(1.0 / self.edge_px)
            tissue += np.float32(0.5)
            alpha = np.clip(tissue, 0.0, 1.0, out=tissue)
            hem_tot *= alpha
            eos *= alpha
        return self._colour(hem_tot, eos, gx, gy, T)

    def _stain_densities(self, x0: int, y0: int, T: int,
                         hem: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(haematoxylin, eosin) densities (T, T) of stroma plus the nuclei ``hem``."""
        tex = self.tex
        # stroma: fibres (two orientation textures mixed by a smooth field) and eosin
        mix = self._corner_field(x0, y0, T, lambda X, Y: 0.5 + 0.5 * np.tanh(2.0 * self.fibre_mix(X, Y)))
        es = self._corner_field(x0, y0, T, lambda X, Y: self.e0 * (1.0 + 0.12 * self.eosin_var(X, Y)))
        fx = (x0 + self.tex_off[2]) % tex.P_FIB
        fy = (y0 + self.tex_off[3]) % tex.P_FIB
        f1 = tex.fibres[0][fy:fy + T, fx:fx + T]
        fx = (x0 + self.tex_off[4]) % tex.P_FIB
        fy = (y0 + self.tex_off[5]) % tex.P_FIB
        f2 = tex.fibres[1][fy:fy + T, fx:fx + T]
        fib = f1 - f2
        fib *= mix
        fib += f2
        eos = fib * np.float32(0.75)
        eos += np.float32(0.30)
        eos *= es
        hem_tot = fib * np.float32(0.03 * self.h_scale)
        hem_tot += np.float32(0.05 * self.h_scale)
        if hem is not None:
            cx = (x0 + self.tex_off[6]) % tex.P_NOISE
            cy = (y0 + self.tex_off[7]) % tex.P_NOISE
            hem *= tex.chromatin[cy:cy + T, cx:cx + T]
            eos *= np.float32(1.0) - np.float32(0.55) * np.minimum(hem, np.float32(1.0))
            hem_tot += hem
        return hem_tot, eos

    def _colour(self, hem_tot: np.ndarray, eos: np.ndarray, gx: int, gy: int,
                T: int) -> np.ndarray:
        """RGB uint8 (T, T, 3): the glass colour (texture at gx, gy) through the stains."""
        tex = self.tex
        out = np.empty((T, T, 3), np.uint8)
        tmp = np.empty((T, T), np.float32)
        for c in range(3):
            od = np.multiply(hem_tot, np.float32(self.h_vec[c]), out=tmp)
            od += eos * np.float32(self.e_vec[c])
            lg = tex.log_glass_planar[c][gy:gy + T, gx:gx + T]
            np.subtract(lg, od, out=od)
            np.exp(od, out=od)
            od += np.float32(0.5)
            out[..., c] = od
        return out

    def _corner_field(self, x0: int, y0: int, T: int,
                      fn: Callable[[np.ndarray, np.ndarray], Any]) -> np.ndarray:
        """A smooth style field, bilinear between its values at the tile corners
        (continuous across tiles, cheap)."""
        X = np.array([[x0, x0 + T]], np.float64)
        Y = np.array([[y0], [y0 + T]], np.float64)
        c = np.broadcast_to(fn(X, Y), (2, 2)).astype(np.float32)
        w = np.arange(T, dtype=np.float32) / np.float32(T)
        a = c[0, 0] + (c[1, 0] - c[0, 0]) * w  # left column along y
        b = (c[0, 1] - c[0, 0]) + ((c[1, 1] - c[1, 0]) - (c[0, 1] - c[0, 0])) * w
        return a[:, None] + b[:, None] * w[None, :]
