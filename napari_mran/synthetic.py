"""Synthetic H&E-like whole-slide images with a known tumour ground truth.

The slides are used by the tests, the benchmarks and to train the bundled demo
model, so they must be (1) real pyramidal files that tifffile *and* OpenSlide
read like an Aperio SVS, (2) deterministic from a seed, (3) cheap to make at
any size with bounded memory, and (4) carry a learnable tumour signal whose
position is known exactly.

Scene model (all coordinates in level-0 pixels, sizes in micrometres):

* Low-frequency *fields* are analytic functions of (x, y): an approximate
  signed distance (in pixels) to the tissue border (a union of 1-3 irregular
  blobs plus smooth edge roughness), the same for the tumour regions, and two
  "style" fields (fibre orientation mix, eosin strength).  They are evaluated
  on a fixed lattice of nodes every ``MASK_DOWNSAMPLE`` (16) pixels and
  interpolated bilinearly inside a tile, so every tile sees the same values
  whatever order tiles are rendered in.  The ground-truth mask is the same
  bilinear field sampled at the centre of each 16 x 16 block.
* Nuclei live in two interleaved square lattices of cells (24 um, the second
  shifted by half a cell).  Each cell holds at most one nucleus, entirely
  inside the cell; its existence, position, size, shape and darkness are drawn
  from a counter-based hash of (slide key, lattice, cell row, cell column), so
  a nucleus is the same whichever tile draws it.  The cell's class (normal or
  tumour) is read from the fields at the cell centre.
* Stroma is eosin with two collagen-like fibre textures (periodic noise
  filtered along drifting orientations) mixed by a smooth field; colour is
  formed with Beer-Lambert optical densities from haematoxylin / eosin stain
  vectors, with small per-slide stain jitter.

Writing streams level 0 tile by tile; each tile's 2x area reduction feeds a
cascade of band buffers that produces every reduced level in the same pass
(tiles of reduced levels are JPEG-encoded as soon as they are complete and
spooled to an anonymous temporary file until their page is written).  Memory
is therefore a few tiles plus a few bands of width ``width / 2**k``.

Only numpy, scipy, tifffile, imagecodecs and the standard library are used.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import imagecodecs
import numpy as np
import tifffile

__all__ = [
    "MASK_DOWNSAMPLE",
    "SyntheticSlideInfo",
    "make_slide",
    "make_cohort",
    "tumour_bag_labels",
    "read_mask",
]

#: The ground-truth mask is stored at 1/16 of level-0 resolution.
MASK_DOWNSAMPLE = 16
_NODE = MASK_DOWNSAMPLE  # spacing (px) of the lattice on which fields are evaluated

_APERIO_HEADER = "Aperio Image Library v12.0.0"
_THUMBNAIL_MAX = 1024  # largest side of the (Aperio-style) stripped thumbnail page

#: range of the per-slide stroma eosin density (see docs/synthetic.md)
_E_LO, _E_HI = 0.85, 1.15  # deep enough that the reference white rule (all channels > 127) sees stroma

# Beer-Lambert stain vectors (optical density per unit stain, R, G, B)
_H_VEC = np.array([0.56, 0.72, 0.41])
_E_VEC = np.array([0.22, 0.80, 0.56])
_GLASS_RGB = np.array([240.0, 240.0, 242.0])

_CELL_UM = 24.0  # nucleus lattice cell size (micrometres)

# nucleus classes: (min, max) major semi-axis in um, aspect (minor/major) range,
# darkness (haematoxylin OD) range, probability of a nucleus per lattice cell
_NORMAL = dict(r=(3.0, 4.5), aspect=(0.40, 0.75), dark=(0.55, 0.85), p=0.12)
_ROUND = dict(r=(2.9, 3.6), aspect=(0.80, 1.00), dark=(0.65, 0.90))  # share of normal nuclei below
_ROUND_SHARE = 0.3
_TUMOUR = dict(r=(5.0, 7.6), aspect=(0.62, 1.00), dark=(1.00, 1.55), p=0.92)
# per-class lookup tables, class index 0 = spindle (normal), 1 = round (normal), 2 = tumour
_CLASS_LO = {k: np.array([_NORMAL[k][0], _ROUND[k][0], _TUMOUR[k][0]]) for k in ("r", "aspect", "dark")}
_CLASS_SPAN = {k: np.array([_NORMAL[k][1], _ROUND[k][1], _TUMOUR[k][1]]) - _CLASS_LO[k]
               for k in ("r", "aspect", "dark")}
_CLASS_SPREAD = np.array([0.06, 0.06, 0.22])  # half-axis stretch spread (pleomorphism)


# ---------------------------------------------------------------------------
# public data class
# ---------------------------------------------------------------------------


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

    @property
    def label(self) -> int:
        """Slide-level label: 1 = tumour, 0 = normal."""
        return int(self.tumour)


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


# ---------------------------------------------------------------------------
# analytic low-frequency fields
# ---------------------------------------------------------------------------


class _Blobs:
    """Union of irregular ellipses; ``distance`` ~ signed distance in px (>0 inside)."""

    def __init__(self, cx, cy, rx, ry, angle, amps, phases):
        self.cx = np.asarray(cx, float)
        self.cy = np.asarray(cy, float)
        self.rx = np.asarray(rx, float)
        self.ry = np.asarray(ry, float)
        self.angle = np.asarray(angle, float)
        self.amps = np.asarray(amps, float)  # (n, K) harmonic amplitudes, harmonic k = index + 2
        self.phases = np.asarray(phases, float)

    def __len__(self) -> int:
        return len(self.cx)

    def prepare(self, X: np.ndarray, Y: np.ndarray) -> list[tuple]:
        """Scale-independent parts (border modulation, unscaled radius, size)."""
        out = []
        for i in range(len(self)):
            ca, sa = math.cos(self.angle[i]), math.sin(self.angle[i])
            dx, dy = X - self.cx[i], Y - self.cy[i]
            u = (dx * ca + dy * sa) / self.rx[i]
            v = (dy * ca - dx * sa) / self.ry[i]
            th = np.arctan2(v, u)
            mod = 1.0
            for k in range(self.amps.shape[1]):
                mod = mod + self.amps[i, k] * np.cos((k + 2) * th + self.phases[i, k])
            out.append((mod, np.hypot(u, v), math.sqrt(self.rx[i] * self.ry[i])))
        return out

    @staticmethod
    def scaled(prep: list[tuple], scale: float) -> list[np.ndarray]:
        # radii scaled by s: q = q0 / s and d = (mod - q) * s * r0 = (s * mod - q0) * r0
        return [(scale * mod - q0) * r0 for mod, q0, r0 in prep]

    def each(self, X: np.ndarray, Y: np.ndarray, scale: float = 1.0) -> list[np.ndarray]:
        return self.scaled(self.prepare(X, Y), scale)

    def distance(self, X, Y, scale: float = 1.0) -> np.ndarray:
        return np.maximum.reduce(self.each(X, Y, scale)) if len(self) > 1 else self.each(X, Y, scale)[0]


class _Waves:
    """Sum of plane sinusoids: a cheap smooth noise defined everywhere."""

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float],
                 amplitude: float):
        lam = rng.uniform(*wavelength, size=n)
        th = rng.uniform(0, np.pi, size=n)
        self.kx = 2 * np.pi / lam * np.cos(th)
        self.ky = 2 * np.pi / lam * np.sin(th)
        self.phi = rng.uniform(0, 2 * np.pi, size=n)
        a = rng.uniform(0.5, 1.0, size=n)
        self.a = a / np.sqrt((a ** 2).sum() / 2) * amplitude  # ~ std = amplitude

    def __call__(self, X, Y):
        out = 0.0
        for kx, ky, phi, a in zip(self.kx, self.ky, self.phi, self.a):
            out = out + a * np.sin(X * kx + Y * ky + phi)
        return out


def _bisect(f, lo: float, hi: float, target: float, iters: int = 30) -> float:
    """Find s in [lo, hi] with increasing f(s) ~= target."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _periodic_noise(rng: np.random.Generator, size: int, sigma_along: float,
                    sigma_across: float, angle: float) -> np.ndarray:
    """Periodic (size x size) noise low-passed by an oriented Gaussian, std 1."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    ca, sa = math.cos(angle), math.sin(angle)
    fu = fx * ca + fy * sa  # frequency along the fibre direction
    fv = -fx * sa + fy * ca
    gain = np.exp(-2 * np.pi ** 2 * ((fu * sigma_along) ** 2 + (fv * sigma_across) ** 2))
    out = np.fft.ifft2(np.fft.fft2(white) * gain).real
    out /= out.std() + 1e-12
    return out


def _fibre_texture(rng: np.random.Generator, size: int, um: float) -> np.ndarray:
    """Periodic collagen-like texture in [0, 1]: thin wavy strands whose
    orientation drifts smoothly (six orientations blended by smooth weights)."""
    k = 6
    base = rng.uniform(0, np.pi)
    acc = np.zeros((size, size))
    logits = [_periodic_noise(rng, size, 22 * um, 22 * um, 0.0) for _ in range(k)]
    w = np.exp(2.5 * np.array(logits))
    w /= w.sum(0)
    for j in range(k):
        acc += w[j] * _periodic_noise(rng, size, 3.5 * um, 0.55 * um, base + j * np.pi / k)
    acc /= acc.std() + 1e-12
    return 0.5 + 0.5 * np.tanh(1.2 * acc)


class _Textures:
    """Periodic textures shared by all slides of a given mpp / tile size.

    Slides differ by where they sample them (per-slide offsets), so building
    them once per process keeps per-slide set-up cheap.  Each texture is
    wrap-padded by one tile so that a tile is a plain slice.
    """

    P_FIB = 512
    P_NOISE = 384

    def __init__(self, mpp: float, pad: int):
        um = 1.0 / mpp
        rng = np.random.default_rng(0x5EED7E47)  # fixed: textures are shared
        wrap = lambda a: np.ascontiguousarray(  # noqa: E731
            np.pad(a, [(0, pad), (0, pad)] + [(0, 0)] * (a.ndim - 2), mode="wrap"), np.float32)
        self.fibres = [wrap(_fibre_texture(rng, self.P_FIB, um)) for _ in range(2)]
        fine = _periodic_noise(rng, self.P_NOISE, 0.55 * um, 0.55 * um, 0.0)
        coarse = _periodic_noise(rng, self.P_NOISE, 1.6 * um, 1.6 * um, 0.0)
        self.chromatin = wrap(np.clip(1.0 + 0.17 * fine + 0.12 * coarse, 0.4, 1.6))
        # log of the glass colour with a faint noise: the base every pixel starts from
        glass = np.log(255.0) + np.log(_GLASS_RGB / 255.0)
        noise = 0.004 * _periodic_noise(rng, self.P_NOISE, 0.8 * um, 0.8 * um, 0.0)
        self.log_glass = wrap(np.stack([glass[c] - noise for c in range(3)], -1))  # (P, P, 3)
        self.log_glass_planar = [np.ascontiguousarray(self.log_glass[..., c]) for c in range(3)]
        g = np.exp(self.log_glass.astype(np.float32)) + np.float32(0.5)
        self.glass_rgb = g.astype(np.uint8)


_TEXTURE_CACHE: dict[tuple[float, int], _Textures] = {}
_TEXTURE_LOCK = threading.Lock()


def _textures(mpp: float, pad: int) -> _Textures:
    key = (float(mpp), int(pad))
    with _TEXTURE_LOCK:
        tex = _TEXTURE_CACHE.get(key)
        if tex is None:
            if len(_TEXTURE_CACHE) >= 4:
                _TEXTURE_CACHE.pop(next(iter(_TEXTURE_CACHE)))
            tex = _TEXTURE_CACHE[key] = _Textures(mpp, pad)
    return tex


class _Scene:
    """Everything needed to render any pixel of a slide, derived from the seed."""

    def __init__(self, width: int, height: int, seed: int, tumour: bool, mpp: float,
                 tumour_fraction: float | None, tile: int):
        self.width, self.height, self.mpp, self.tile = width, height, mpp, tile
        ss = lambda k: np.random.SeedSequence(seed, spawn_key=(k,))  # noqa: E731
        rt = np.random.default_rng(ss(1))  # tissue layout (shared by tumour/normal twins)
        rs = np.random.default_rng(ss(3))  # style
        self.key = np.uint64(ss(4).generate_state(1, dtype=np.uint64)[0])
        um = 1.0 / mpp  # px per micrometre
        self.um = um
        short = float(min(width, height))

        # --- tissue: 1-3 irregular blobs, calibrated to cover 40-70 % of the slide
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
        self.tissue_blobs = _Blobs(cx, cy, rx, ry, rt.uniform(0, np.pi, n), amps,
                                   rt.uniform(0, 2 * np.pi, (n, 4)))
        self.tissue_rough = [
            _Waves(rt, 6, (0.12 * short, 0.45 * short), 0.035 * short),
            _Waves(rt, 8, (120 * um, 420 * um), min(22 * um, 0.02 * short)),
        ]
        target_tissue = float(rt.uniform(0.40, 0.70))
        cal_x, cal_y = self._calibration_grid()
        rough = self._rough(cal_x, cal_y)
        prep = self.tissue_blobs.prepare(cal_x, cal_y)
        self.tissue_scale = _bisect(
            lambda s: float((np.maximum.reduce(_Blobs.scaled(prep, s)) + rough > 0).mean()),
            0.02, 4.0, target_tissue)
        self.edge_px = 3.0 * um  # soft tissue border width

        # --- style: fibre orientation mix, eosin strength, stain jitter
        self.fibre_mix = _Waves(rs, 5, (250 * um, 900 * um), 1.0)
        self.eosin_var = _Waves(rs, 5, (200 * um, 1200 * um), 1.0)
        self.e0 = float(rs.uniform(_E_LO, _E_HI))  # eosin density of stroma
        self.h_scale = float(rs.uniform(0.9, 1.12))  # per-slide haematoxylin strength
        jit = lambda v: (lambda w: w / np.linalg.norm(w))(v * rs.uniform(0.94, 1.06, 3))  # noqa: E731
        self.h_vec = [float(v) for v in jit(_H_VEC)]
        self.e_vec = [float(v) for v in jit(_E_VEC)]
        self.tex = _textures(mpp, tile)
        self.tex_off = [int(v) for v in rs.integers(0, 1 << 20, size=8)]

        # --- nucleus lattice
        self.cell = max(8, int(round(_CELL_UM * um)))

        # --- tumour regions
        self.tumour = bool(tumour)
        self.tumour_blobs: _Blobs | None = None
        self.tumour_scale = 0.0
        if tumour:
            self._make_tumour(np.random.default_rng(ss(2)), tumour_fraction, cal_x, cal_y)

        # node bands (fields on the 16 px lattice for one row of tiles), shared by threads
        self._bands: dict[int, tuple] = {}
        self._band_lock = threading.Lock()
        self._nx0 = (-self.cell) // _NODE - 1
        self._nx1 = -(-(-(-width // tile) * tile + self.cell) // _NODE) + 2

    # -- fields --------------------------------------------------------------

    def _calibration_grid(self, n: int = 200):
        nx = max(8, min(n, self.width // 8))
        ny = max(8, min(n, self.height // 8))
        xs = (np.arange(nx) + 0.5) * self.width / nx
        ys = (np.arange(ny) + 0.5) * self.height / ny
        return xs[None, :], ys[:, None]

    def _rough(self, X, Y):
        return self.tissue_rough[0](X, Y) + self.tissue_rough[1](X, Y)

    def tissue_distance(self, X, Y):
        return self.tissue_blobs.distance(X, Y, self.tissue_scale) + self._rough(X, Y)

    def tumour_parts(self, X, Y) -> list[np.ndarray]:
        assert self.tumour_blobs is not None
        rough = self.tumour_rough(X, Y)
        return [p + rough for p in self.tumour_blobs.each(X, Y, self.tumour_scale)]

    def _make_tumour(self, rng, fraction, cal_x, cal_y):
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
        self.tumour_blobs = _Blobs(centres_a[:, 0], centres_a[:, 1], base, base * aspect,
                                   rng.uniform(0, np.pi, n), amps, rng.uniform(0, 2 * np.pi, (n, 5)))
        self.tumour_rough = _Waves(rng, 6, (100 * self.um, 400 * self.um),
                                   min(12 * self.um, 0.01 * short))
        inside = tissue > 0
        n_in = max(1, int(inside.sum()))
        rough = self.tumour_rough(cal_x, cal_y)
        prep = self.tumour_blobs.prepare(cal_x, cal_y)

        def frac(s):
            d = np.maximum.reduce(_Blobs.scaled(prep, s)) + rough
            return float(((d > 0) & inside).sum()) / n_in

        self.tumour_scale = _bisect(frac, 0.0, 25.0, target)

    def nodes(self, ix0: int, nx: int, iy0: int, ny: int):
        """Fields at nodes (16*ix, 16*iy): tissue d, tumour d (or None), float32."""
        X = (np.arange(ix0, ix0 + nx, dtype=np.float64) * _NODE)[None, :]
        Y = (np.arange(iy0, iy0 + ny, dtype=np.float64) * _NODE)[:, None]
        tis = np.broadcast_to(self.tissue_distance(X, Y), (ny, nx)).astype(np.float32)
        tum = None
        if self.tumour_blobs is not None:
            parts = self.tumour_parts(X, Y)
            tum = parts[0]
            for p in parts[1:]:
                tum = np.maximum(tum, p)
            tum = np.broadcast_to(tum, (ny, nx)).astype(np.float32)
        return tis, tum

    def _node_band(self, y0: int):
        """Fields on the node rows needed by the tiles starting at row y0 (cached)."""
        with self._band_lock:
            band = self._bands.get(y0)
            if band is None:
                G, T = self.cell, self.tile
                ny0 = (y0 - G) // _NODE - 1
                ny1 = -(-(y0 + T + G) // _NODE) + 2
                tis, tum = self.nodes(self._nx0, self._nx1 - self._nx0, ny0, ny1 - ny0)
                band = self._bands[y0] = (ny0, tis, tum)
                while len(self._bands) > 4:
                    self._bands.pop(min(self._bands))
        return band

    # -- rendering -------------------------------------------------------------

    def render_tile(self, x0: int, y0: int, T: int) -> np.ndarray:
        """RGB uint8 (T, T, 3) of the level-0 region [x0, x0+T) x [y0, y0+T)."""
        assert T == self.tile
        tex = self.tex
        G = self.cell
        ny0, tis_b, tum_b = self._node_band(y0)
        n0x = (x0 - G) // _NODE - 1
        n1x = -(-(x0 + T + G) // _NODE) + 2
        tis_n = tis_b[:, n0x - self._nx0:n1x - self._nx0]
        tum_n = None if tum_b is None else tum_b[:, n0x - self._nx0:n1x - self._nx0]
        gx = (x0 + self.tex_off[0]) % tex.P_NOISE
        gy = (y0 + self.tex_off[1]) % tex.P_NOISE
        if float(tis_n.max()) < -self.edge_px:  # glass only: no tissue, no nuclei
            return tex.glass_rgb[gy:gy + T, gx:gx + T].copy()

        # nuclei (haematoxylin density) of both lattices
        hem = self._nuclei(x0, y0, T, tis_n, tum_n, n0x, ny0)

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

        if float(tis_n.min()) < self.edge_px:  # tissue border crosses the tile
            ix_, fx_ = _interp_index(x0, n0x, T)
            iy_, fy_ = _interp_index(y0, ny0, T)
            a = tis_n[:, ix_] * (1 - fx_) + tis_n[:, ix_ + 1] * fx_
            tissue = a[iy_] * (1 - fy_)[:, None] + a[iy_ + 1] * fy_[:, None]
            tissue *= np.float32(1.0 / self.edge_px)
            tissue += np.float32(0.5)
            alpha = np.clip(tissue, 0.0, 1.0, out=tissue)
            hem_tot *= alpha
            eos *= alpha

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

    def _corner_field(self, x0, y0, T, fn) -> np.ndarray:
        """A smooth style field, bilinear between its values at the tile corners
        (continuous across tiles, cheap)."""
        X = np.array([[x0, x0 + T]], np.float64)
        Y = np.array([[y0], [y0 + T]], np.float64)
        c = np.broadcast_to(fn(X, Y), (2, 2)).astype(np.float32)
        w = np.arange(T, dtype=np.float32) / np.float32(T)
        a = c[0, 0] + (c[1, 0] - c[0, 0]) * w  # left column along y
        b = (c[0, 1] - c[0, 0]) + ((c[1, 1] - c[1, 0]) - (c[0, 1] - c[0, 0])) * w
        return a[:, None] + b[:, None] * w[None, :]

    def _nuclei(self, x0, y0, T, tis_n, tum_n, n0x, n0y):
        """Haematoxylin density (T, T) of the nuclei of both lattices, or None."""
        G = self.cell
        offs = (0, G // 2)
        ranges, lat_l, iy_l, ix_l = [], [], [], []
        for lattice, off in enumerate(offs):
            c0x, c1x = (x0 + off) // G, (x0 + T - 1 + off) // G
            c0y, c1y = (y0 + off) // G, (y0 + T - 1 + off) // G
            ncx, ncy = c1x - c0x + 1, c1y - c0y + 1
            ranges.append((off, c0x, c0y, ncx, ncy))
            iy_l.append(np.repeat(np.arange(c0y, c1y + 1), ncx))
            ix_l.append(np.tile(np.arange(c0x, c1x + 1), ncy))
            lat_l.append(np.full(ncx * ncy, lattice))
        lat = np.concatenate(lat_l)
        iy = np.concatenate(iy_l)
        ix = np.concatenate(ix_l)
        u = _cell_uniforms(self.key, lat, iy, ix, 12)
        # class and existence from the fields at the cell centre
        off_c = np.where(lat == 0, 0.0, float(offs[1]))
        tx = (ix * G - off_c + 0.5 * G) / _NODE - n0x
        ty = (iy * G - off_c + 0.5 * G) / _NODE - n0y
        fields = tis_n[None] if tum_n is None else np.stack([tis_n, tum_n])
        at_c = _bilinear(fields, tx, ty)
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

        hem = None
        start = 0
        lat_sel = lat[sel]
        for lattice, (off, c0x, c0y, ncx, ncy) in enumerate(ranges):
            n_cells = ncx * ncy
            pick_l = lat_sel == lattice
            if pick_l.any():
                canvas = np.zeros((n_cells, G, G), f32)
                canvas[sel[pick_l] - start] = alpha[pick_l]
                canvas = canvas.reshape(ncy, ncx, G, G).transpose(0, 2, 1, 3).reshape(ncy * G, ncx * G)
                oy = y0 - (c0y * G - off)
                ox = x0 - (c0x * G - off)
                part = canvas[oy:oy + T, ox:ox + T]
                hem = part if hem is None else hem + part
            start += n_cells
        return hem


def _interp_index(p0: int, n0: int, T: int):
    """Node index and fraction (float32) of pixels p0 .. p0+T-1 for interpolation."""
    t = np.arange(p0, p0 + T, dtype=np.float64) / _NODE - n0
    i = np.floor(t).astype(np.intp)
    return i, (t - i).astype(np.float32)


def _bilinear(grid: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Bilinear samples of (..., ny, nx) grids at fractional indices (tx, ty)."""
    ix = np.clip(np.floor(tx).astype(np.intp), 0, grid.shape[-1] - 2)
    iy = np.clip(np.floor(ty).astype(np.intp), 0, grid.shape[-2] - 2)
    fx, fy = tx - ix, ty - iy
    g00, g01 = grid[..., iy, ix], grid[..., iy, ix + 1]
    g10, g11 = grid[..., iy + 1, ix], grid[..., iy + 1, ix + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


# ---------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------


def _ground_truth(scene: _Scene, band_rows: int = 64):
    """Mask at 1/16 (uint8), per-region block boxes, tissue fraction."""
    W, H = scene.width, scene.height
    nbx, nby = -(-W // _NODE), -(-H // _NODE)
    mask = np.zeros((nby, nbx), np.uint8)
    n_reg = len(scene.tumour_blobs) if scene.tumour_blobs is not None else 0
    boxes = [[nbx, nby, -1, -1] for _ in range(n_reg)]
    tissue_blocks = 0
    for b0 in range(0, nby, band_rows):
        b1 = min(nby, b0 + band_rows)
        X = (np.arange(0, nbx + 1, dtype=np.float64) * _NODE)[None, :]
        Y = (np.arange(b0, b1 + 1, dtype=np.float64) * _NODE)[:, None]
        avg = lambda a: 0.25 * (a[:-1, :-1] + a[:-1, 1:] + a[1:, :-1] + a[1:, 1:])  # noqa: E731
        tis = avg(np.broadcast_to(scene.tissue_distance(X, Y), (b1 - b0 + 1, nbx + 1)).astype(np.float32))
        inside = tis > 0
        tissue_blocks += int(inside.sum())
        if n_reg:
            parts = scene.tumour_parts(X, Y)
            tum = np.maximum.reduce([np.broadcast_to(p, (b1 - b0 + 1, nbx + 1)) for p in parts])
            band = (avg(tum.astype(np.float32)) > 0) & inside
            mask[b0:b1] = band
            for i, p in enumerate(parts):
                reg = (avg(np.broadcast_to(p, tum.shape).astype(np.float32)) > 0) & band
                if reg.any():
                    rows = np.nonzero(reg.any(1))[0]
                    cols = np.nonzero(reg.any(0))[0]
                    bx = boxes[i]
                    bx[0] = min(bx[0], int(cols[0]))
                    bx[2] = max(bx[2], int(cols[-1]))
                    bx[1] = min(bx[1], int(rows[0]) + b0)
                    bx[3] = max(bx[3], int(rows[-1]) + b0)
    px_boxes = []
    for bx in boxes:
        if bx[2] >= 0:
            px_boxes.append((bx[0] * _NODE, bx[1] * _NODE,
                             min(W, (bx[2] + 1) * _NODE), min(H, (bx[3] + 1) * _NODE)))
    return mask, tuple(px_boxes), tissue_blocks / float(nbx * nby)


def _block_areas(n: int, size: int) -> np.ndarray:
    """Widths (px) of the n mask blocks along an axis of ``size`` pixels."""
    w = np.full(n, float(_NODE))
    w[-1] = size - _NODE * (n - 1)
    return w


# ---------------------------------------------------------------------------
# pyramid writing
# ---------------------------------------------------------------------------


def _reduce2(a: np.ndarray) -> np.ndarray:
    """2x2 area average (rounded) of a uint8 (h, w, 3) array with even h and w."""
    h, w = a.shape[0] // 2, a.shape[1] // 2
    rows = a.reshape(h, 2, w * 6)
    s = np.add(rows[:, 0], rows[:, 1], dtype=np.uint16).reshape(h, w, 6)
    s = np.add(s[..., :3], s[..., 3:])
    s += 2
    s >>= 2
    return s.astype(np.uint8)


class _Encoder:
    def __init__(self, quality: int, colorspace: str):
        self.quality = int(quality)
        self.rgb = colorspace == "rgb"

    def __call__(self, tile: np.ndarray) -> bytes:
        if self.rgb:
            return imagecodecs.jpeg8_encode(tile, level=self.quality, colorspace="RGB",
                                            outcolorspace="RGB")
        return imagecodecs.jpeg8_encode(tile, level=self.quality, colorspace="RGB",
                                        outcolorspace="YCBCR", subsampling=(2, 2))


class _Cascade:
    """Turns level-0 tiles (row-major) into all reduced levels, streaming.

    Level k >= 1 is assembled one band (``tile`` rows) at a time from 2x area
    reductions of level k-1; a completed band is cut into tiles, JPEG-encoded
    and spooled to ``spool``; levels small enough for the thumbnail are also
    kept whole in memory.
    """

    def __init__(self, dims, T, encode, spool):
        self.dims, self.T, self.encode, self.spool = dims, T, encode, spool
        self.cols = [-(-w // T) for w, _ in dims]
        self.rows = [-(-h // T) for _, h in dims]
        self.bands = [None] + [np.zeros((T, self.cols[k] * T, 3), np.uint8)
                               for k in range(1, len(dims))]
        self.band_index = [0] * len(dims)  # next band of each level to complete
        self.index: list[list[tuple[int, int]]] = [[] for _ in dims]  # spool (offset, length)
        self.keep = {k: np.zeros((h, w, 3), np.uint8) for k, (w, h) in enumerate(dims)
                     if max(w, h) <= _THUMBNAIL_MAX}

    def add_level0_tile(self, row: int, col: int, tile: np.ndarray, reduced: np.ndarray | None):
        T = self.T
        if 0 in self.keep:
            w, h = self.dims[0]
            y, x = row * T, col * T
            self.keep[0][y:y + T, x:x + T] = tile[:min(T, h - y), :min(T, w - x)]
        if len(self.dims) > 1:
            half = T // 2
            self.bands[1][(row % 2) * half:(row % 2 + 1) * half, col * half:(col + 1) * half] = reduced
            if col == self.cols[0] - 1:
                self._finish_input_band(1, row)

    def _finish_input_band(self, k: int, src_row: int):
        """Level k-1 band ``src_row`` has been fed into level k's band."""
        last = src_row == self.rows[k - 1] - 1
        if src_row % 2 == 1 or last:
            half = self.T // 2
            band = self.bands[k]
            if src_row % 2 == 0:  # only the top half came: replicate (outside the image)
                band[half:] = band[half - 1:half]
            filled = self.cols[k - 1] * half
            if filled < band.shape[1]:
                band[:, filled:] = band[:, filled - 1:filled]
            self._emit(k, band)

    def _emit(self, k: int, band: np.ndarray):
        T = self.T
        r = self.band_index[k]
        self.band_index[k] += 1
        for c in range(self.cols[k]):
            data = self.encode(np.ascontiguousarray(band[:, c * T:(c + 1) * T]))
            self.index[k].append((self.spool.tell(), len(data)))
            self.spool.write(data)
        if k in self.keep:
            w, h = self.dims[k]
            y = r * T
            self.keep[k][y:y + T] = band[:min(T, h - y), :w]
        if k + 1 < len(self.dims):
            half = T // 2
            red = _reduce2(band)
            self.bands[k + 1][(r % 2) * half:(r % 2 + 1) * half, :red.shape[1]] = red
            self._finish_input_band(k + 1, r)

    def tiles(self, k: int) -> Iterator[bytes]:
        for off, n in self.index[k]:
            self.spool.seek(off)
            yield self.spool.read(n)
        self.spool.seek(0, os.SEEK_END)

    def thumbnail(self) -> np.ndarray:
        return self.keep[min(self.keep)]


def _level_dims(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    while max(dims[-1]) > tile:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


def _fmt(v: float) -> str:
    return f"{v:.6g}"


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def make_slide(path, width: int, height: int, tumour: bool, seed: int, *, mpp: float = 0.5,
               tile: int = 256, quality: int = 90, tumour_fraction: float | None = None,
               colorspace: str = "rgb", workers: int | None = None,
               mask_dir=None) -> SyntheticSlideInfo:
    """Write a synthetic pyramidal H&E-like slide (Aperio-SVS-like JPEG TIFF).

    Parameters
    ----------
    path: output file (``.svs`` recommended).  The ground-truth mask is written
        as ``<stem>.mask.tif`` in ``mask_dir`` (default: beside the slide).  Both
        are written under temporary names in their folders and renamed into
        place at the end.
    width, height: level-0 size in pixels.
    tumour: whether the slide contains tumour regions (1-3 regions).
    seed: non-negative integer; the same seed (and arguments) gives
        byte-identical pixels.  The tissue layout depends on the seed only, so
        ``tumour=True`` and ``tumour=False`` with one seed are "twins" that
        differ only by the tumour.
    mpp: micrometres per level-0 pixel (nuclei and texture scale with it).
    tile: TIFF tile size (multiple of 16).
    quality: JPEG quality.
    tumour_fraction: tumour area as a fraction of the tissue area (default: a
        random value in 5-25 %); only allowed with ``tumour=True``.
    colorspace: ``"rgb"`` (Aperio-style RGB JPEG, PhotometricInterpretation
        RGB) or ``"ycbcr"`` (YCbCr 4:2:0 JPEG: ~2x smaller, slightly faster).
    workers: threads rendering/encoding level-0 tiles (default: min(2, CPUs)).

    The file holds level 0, an Aperio-style stripped thumbnail page (page 1)
    and reduced levels at downsamples 2, 4, 8, ... (pages 2, 3, ...) down to
    the first level that fits in one tile, as tifffile and OpenSlide expect
    of an SVS file.
    """
    path = Path(path)
    width, height, seed, tile, quality = int(width), int(height), int(seed), int(tile), int(quality)
    if width < 1 or height < 1:
        raise ValueError(f"slide size must be positive, got {width} x {height}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mpp must be a positive number, got {mpp}")
    if colorspace not in ("rgb", "ycbcr"):
        raise ValueError(f"colorspace must be 'rgb' or 'ycbcr', got {colorspace!r}")
    if tumour_fraction is not None:
        if not tumour:
            raise ValueError("tumour_fraction is only meaningful with tumour=True")
        if not 0.0 < float(tumour_fraction) < 1.0:
            raise ValueError(f"tumour_fraction must be in (0, 1), got {tumour_fraction}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, int(workers))

    path.parent.mkdir(parents=True, exist_ok=True)
    if mask_dir is None:
        mask_path = path.with_name(path.stem + ".mask.tif")
    else:
        Path(mask_dir).mkdir(parents=True, exist_ok=True)
        mask_path = Path(mask_dir) / (path.stem + ".mask.tif")
    scene = _Scene(width, height, seed, tumour, float(mpp), tumour_fraction, tile)
    mask, boxes, tissue_frac = _ground_truth(scene)
    dims = _level_dims(width, height, tile)
    T = tile
    rgb = colorspace == "rgb"
    encode = _Encoder(quality, colorspace)
    mag = 10.0 / mpp
    desc0 = (f"{_APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] ({T}x{T}) "
             f"JPEG/{'RGB' if rgb else 'YCC'} Q={quality}|AppMag = {_fmt(mag)}|MPP = {_fmt(mpp)}"
             f"|Filename = {path.stem}|Synthetic = napari-mran|Seed = {seed}"
             f"|Tumour = {int(bool(tumour))}")
    raw_total = 3 * sum(w * h for w, h in dims)
    bigtiff = raw_total * (1.5 if quality > 95 else 1.0) > 0.9 * 2 ** 32
    common = dict(dtype=np.uint8, photometric="rgb", compression="jpeg", metadata=None,
                  resolutionunit="CENTIMETER")
    if rgb:
        common.update(compressionargs={"outcolorspace": "RGB"}, subsampling=(1, 1))
    else:
        common.update(subsampling=(2, 2))

    n_cols, n_rows = -(-width // T), -(-height // T)
    reduce_needed = len(dims) > 1

    def work(idx: int):
        r, c = divmod(idx, n_cols)
        t = scene.render_tile(c * T, r * T, T)
        return encode(t), (_reduce2(t) if reduce_needed else None), t

    tmp_slide = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_mask = mask_path.with_name(f".{mask_path.name}.{os.getpid()}.tmp")
    try:
        with tempfile.TemporaryFile(dir=path.parent) as spool, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            cascade = _Cascade(dims, T, encode, spool)

            def level0() -> Iterator[bytes]:
                pending: deque = deque()
                nxt = 0
                total = n_cols * n_rows
                done = 0
                while done < total:
                    while nxt < total and len(pending) < 3 * workers:
                        pending.append(pool.submit(work, nxt))
                        nxt += 1
                    data, red, t = pending.popleft().result()
                    r, c = divmod(done, n_cols)
                    cascade.add_level0_tile(r, c, t, red)
                    done += 1
                    yield data

            with tifffile.TiffWriter(tmp_slide, bigtiff=bigtiff) as tw:
                tw.write(level0(), shape=(height, width, 3), tile=(T, T), description=desc0,
                         resolution=(1e4 / mpp, 1e4 / mpp), subfiletype=0, **common)
                thumb = cascade.thumbnail()
                th, tw_ = thumb.shape[:2]
                tw.write(thumb, photometric="rgb", compression="jpeg",
                         compressionargs={"level": quality}, metadata=None,
                         description=f"{_APERIO_HEADER}\r\n{width}x{height} -> {tw_}x{th} - "
                                     f"|AppMag = {_fmt(mag)}|MPP = {_fmt(mpp)}",
                         resolution=(1e4 * tw_ / (mpp * width),) * 2,
                         resolutionunit="CENTIMETER")
                for k in range(1, len(dims)):
                    w, h = dims[k]
                    ds = 2 ** k
                    desc = (f"{_APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] "
                            f"({T}x{T}) -> {w}x{h} JPEG/{'RGB' if rgb else 'YCC'} Q={quality}")
                    tw.write(cascade.tiles(k), shape=(h, w, 3), tile=(T, T), description=desc,
                             resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), subfiletype=0,
                             **common)
        _write_mask(tmp_mask, mask, width, height, mpp)
        os.replace(tmp_slide, path)
        os.replace(tmp_mask, mask_path)
    finally:
        for p in (tmp_slide, tmp_mask):
            if p.exists():
                p.unlink()

    n_tum = int(mask.sum(dtype=np.int64))
    # exact block areas (edge blocks may be partial)
    ax = _block_areas(mask.shape[1], width)
    ay = _block_areas(mask.shape[0], height)
    tum_area = float(ay @ mask.astype(np.float64) @ ax) if n_tum else 0.0
    area = float(width) * float(height)
    tis_area = tissue_frac * area
    ellipses: tuple = ()
    if scene.tumour_blobs is not None:
        b, s = scene.tumour_blobs, scene.tumour_scale
        ellipses = tuple((float(b.cx[i]), float(b.cy[i]), float(b.rx[i] * s), float(b.ry[i] * s),
                          float(np.degrees(b.angle[i]) % 180.0)) for i in range(len(b)))
    return SyntheticSlideInfo(
        path=path, mask_path=mask_path, width=width, height=height, mpp=float(mpp),
        tumour=bool(tumour), seed=seed, tumour_boxes=boxes, tumour_ellipses=ellipses,
        tumour_area_fraction=tum_area / area,
        tumour_tissue_fraction=(tum_area / tis_area) if tis_area > 0 else 0.0,
        tissue_fraction=float(tissue_frac), level_dimensions=tuple(dims), tile=T,
        quality=quality, colorspace=colorspace)


def _write_mask(path: Path, mask: np.ndarray, width: int, height: int, mpp: float) -> None:
    desc = (f"napari-mran synthetic tumour mask: 1 = tumour, 0 = not; "
            f"downsample={_NODE}; width={width}; height={height}; mpp={_fmt(mpp)}")
    tifffile.imwrite(path, mask, compression="zlib", metadata=None, description=desc,
                     resolution=(1e4 / (mpp * _NODE),) * 2, resolutionunit="CENTIMETER",
                     photometric="minisblack")


def read_mask(mask) -> tuple[np.ndarray, int, int, int]:
    """Read a ground-truth mask: (mask uint8, level-0 width, level-0 height, downsample).

    ``mask`` is a :class:`SyntheticSlideInfo` or the path of a ``.mask.tif``.
    """
    if isinstance(mask, SyntheticSlideInfo):
        arr = tifffile.imread(mask.mask_path)
        return arr, mask.width, mask.height, mask.mask_downsample
    with tifffile.TiffFile(mask) as tf:
        page = tf.pages[0]
        arr = page.asarray()
        meta = {}
        for part in (page.description or "").split(";"):
            if "=" in part:
                k, v = part.split("=", 1)
                meta[k.strip().rsplit(" ", 1)[-1]] = v.strip()
    ds = int(meta.get("downsample", _NODE))
    w = int(meta.get("width", arr.shape[1] * ds))
    h = int(meta.get("height", arr.shape[0] * ds))
    return arr, w, h, ds


def tumour_bag_labels(mask, boxes) -> np.ndarray:
    """Fraction of each level-0 box covered by tumour in the ground-truth mask.

    ``mask``: a :class:`SyntheticSlideInfo`, the path of a ``.mask.tif``, or a
    ``(mask_array, width, height)`` tuple (mask at 1/16 of level 0).
    ``boxes``: array-like (N, 4) of ``x0, y0, x1, y1`` in level-0 pixels.
    Returns float64 (N,) in [0, 1]; the part of a box outside the slide counts
    as not tumour, and an empty box gives 0.  Partial coverage of the 16 px
    mask blocks is integrated exactly (the mask is piecewise constant).
    """
    if isinstance(mask, tuple):
        arr, W, H = mask[0], int(mask[1]), int(mask[2])
        ds = _NODE
    else:
        arr, W, H, ds = read_mask(mask)
    arr = np.asarray(arr) > 0
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(b):
        return np.zeros(0)
    ny, nx = arr.shape
    # corner coordinates of the blocks (the last block may be partial)
    xs = np.minimum(np.arange(nx + 1, dtype=np.float64) * ds, W)
    ys = np.minimum(np.arange(ny + 1, dtype=np.float64) * ds, H)
    wx, wy = np.diff(xs), np.diff(ys)
    # summed-area table of tumour area at block corners; the integral of a
    # piecewise-constant image is bilinear inside each block
    S = np.zeros((ny + 1, nx + 1))
    S[1:, 1:] = np.cumsum(np.cumsum(arr * wy[:, None] * wx[None, :], 0), 1)

    def integral(x, y):
        x = np.clip(x, 0, xs[-1])
        y = np.clip(y, 0, ys[-1])
        i = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, nx - 1)
        j = np.clip(np.searchsorted(ys, y, side="right") - 1, 0, ny - 1)
        fx = np.where(wx[i] > 0, (x - xs[i]) / np.where(wx[i] > 0, wx[i], 1), 0)
        fy = np.where(wy[j] > 0, (y - ys[j]) / np.where(wy[j] > 0, wy[j], 1), 0)
        return ((S[j, i] * (1 - fx) + S[j, i + 1] * fx) * (1 - fy)
                + (S[j + 1, i] * (1 - fx) + S[j + 1, i + 1] * fx) * fy)

    x0, y0, x1, y1 = (b[:, i] for i in range(4))
    x0, x1 = np.minimum(x0, x1), np.maximum(x0, x1)
    y0, y1 = np.minimum(y0, y1), np.maximum(y0, y1)
    covered = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    area = (x1 - x0) * (y1 - y0)
    out = np.where(area > 0, covered / np.where(area > 0, area, 1), 0.0)
    return np.clip(out, 0.0, 1.0)


def make_cohort(out_dir, n_slides: int, seed: int, width: int = 8192, height: int = 8192, *,
                tumour_ratio: float = 0.5, slides_per_case: int = 1, mpp: float = 0.5,
                overwrite: bool = False, tile: int = 256, quality: int = 90,
                colorspace: str = "rgb", workers: int | None = None) -> Path:
    """Write ``n_slides`` synthetic slides and ``labels.csv`` into ``out_dir``.

    The ground-truth masks go to ``out_dir/masks/<stem>.mask.tif``, not beside the
    slides, so that ``napari-mran predict out_dir`` sees only the slides.

    ``labels.csv`` has columns ``slide,label,case`` (slide = file name relative
    to ``out_dir``, label 1 = tumour / 0 = normal, case = case id; all slides
    of a case share its label).  About ``tumour_ratio`` of the cases are
    tumour cases.  Everything is deterministic from ``seed``.  Refuses
    (FileExistsError) to write into a folder that already holds a labels.csv
    unless ``overwrite=True``; never deletes anything.  Returns the path of
    labels.csv, which is written last.
    """
    out_dir = Path(out_dir)
    n_slides, seed, slides_per_case = int(n_slides), int(seed), int(slides_per_case)
    if n_slides < 1:
        raise ValueError(f"n_slides must be >= 1, got {n_slides}")
    if slides_per_case < 1:
        raise ValueError(f"slides_per_case must be >= 1, got {slides_per_case}")
    if not 0.0 <= float(tumour_ratio) <= 1.0:
        raise ValueError(f"tumour_ratio must be in [0, 1], got {tumour_ratio}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    labels_path = out_dir / "labels.csv"
    if labels_path.exists() and not overwrite:
        raise FileExistsError(
            f"{labels_path} already exists: refusing to overwrite an existing cohort "
            f"(pass overwrite=True, or choose an empty folder)")
    out_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC0,)))
    n_cases = -(-n_slides // slides_per_case)
    n_pos = int(round(float(tumour_ratio) * n_cases))
    case_labels = np.zeros(n_cases, int)
    case_labels[:n_pos] = 1
    rng.shuffle(case_labels)
    slide_seeds = np.random.SeedSequence(seed, spawn_key=(0x5D,)).generate_state(n_slides, np.uint32)

    rows = []
    for i in range(n_slides):
        case = i // slides_per_case
        label = int(case_labels[case])
        name = f"slide_{i:04d}.svs"
        make_slide(out_dir / name, width, height, bool(label), int(slide_seeds[i]), mpp=mpp,
                   tile=tile, quality=quality, colorspace=colorspace, workers=workers,
                   mask_dir=out_dir / "masks")
        rows.append((name, label, f"case_{case:04d}"))

    tmp = labels_path.with_name(f".labels.csv.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["slide", "label", "case"])
        wr.writerows(rows)
    os.replace(tmp, labels_path)
    return labels_path
