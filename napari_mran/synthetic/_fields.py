"""Analytic low-frequency fields of a slide: irregular blobs, smooth noise, interpolation.

Tissue and tumour regions are unions of irregular ellipses (:class:`Blobs`, an
approximate signed distance in pixels, > 0 inside) with smooth edge roughness
(:class:`Waves`).  Fields are evaluated on a lattice of nodes every ``NODE`` pixels and
interpolated bilinearly (:func:`interp_index`, :func:`bilinear`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike

from ._info import NODE

__all__ = ["Blobs", "Waves", "bilinear", "bisect", "interp_index"]

#: per blob: (border modulation, unscaled normalised radius, size), see Blobs.prepare
Prepared: TypeAlias = list[tuple[Any, np.ndarray, float]]


class Blobs:
    """Union of irregular ellipses; ``distance`` ~ signed distance in px (>0 inside)."""

    def __init__(self, cx: ArrayLike, cy: ArrayLike, rx: ArrayLike, ry: ArrayLike,
                 angle: ArrayLike, amps: ArrayLike, phases: ArrayLike) -> None:
        self.cx = np.asarray(cx, float)
        self.cy = np.asarray(cy, float)
        self.rx = np.asarray(rx, float)
        self.ry = np.asarray(ry, float)
        self.angle = np.asarray(angle, float)
        self.amps = np.asarray(amps, float)  # (n, K) harmonic amplitudes, harmonic k = index + 2
        self.phases = np.asarray(phases, float)

    def __len__(self) -> int:
        return len(self.cx)

    def prepare(self, X: np.ndarray, Y: np.ndarray) -> Prepared:
        """Scale-independent parts (border modulation, unscaled radius, size)."""
        out: Prepared = []
        for i in range(len(self)):
            ca, sa = math.cos(self.angle[i]), math.sin(self.angle[i])
            dx, dy = X - self.cx[i], Y - self.cy[i]
            u = (dx * ca + dy * sa) / self.rx[i]
            v = (dy * ca - dx * sa) / self.ry[i]
            th = np.arctan2(v, u)
            mod: Any = 1.0
            for k in range(self.amps.shape[1]):
                mod = mod + self.amps[i, k] * np.cos((k + 2) * th + self.phases[i, k])
            out.append((mod, np.hypot(u, v), math.sqrt(self.rx[i] * self.ry[i])))
        return out

    @staticmethod
    def scaled(prep: Prepared, scale: float) -> list[np.ndarray]:
        # radii scaled by s: q = q0 / s and d = (mod - q) * s * r0 = (s * mod - q0) * r0
        return [(scale * mod - q0) * r0 for mod, q0, r0 in prep]

    def each(self, X: np.ndarray, Y: np.ndarray, scale: float = 1.0) -> list[np.ndarray]:
        return self.scaled(self.prepare(X, Y), scale)

    def distance(self, X: np.ndarray, Y: np.ndarray, scale: float = 1.0) -> np.ndarray:
        return np.maximum.reduce(self.each(X, Y, scale)) if len(self) > 1 else self.each(X, Y, scale)[0]


class Waves:
    """Sum of plane sinusoids: a cheap smooth noise defined everywhere."""

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float],
                 amplitude: float) -> None:
        lam = rng.uniform(*wavelength, size=n)
        th = rng.uniform(0, np.pi, size=n)
        self.kx = 2 * np.pi / lam * np.cos(th)
        self.ky = 2 * np.pi / lam * np.sin(th)
        self.phi = rng.uniform(0, 2 * np.pi, size=n)
        a = rng.uniform(0.5, 1.0, size=n)
        self.a = a / np.sqrt((a ** 2).sum() / 2) * amplitude  # ~ std = amplitude

    def __call__(self, X: np.ndarray, Y: np.ndarray) -> Any:
        """The noise at (X, Y) (broadcast), an array (or 0.0 for no waves)."""
        out: Any = 0.0
        for kx, ky, phi, a in zip(self.kx, self.ky, self.phi, self.a):
            out = out + a * np.sin(X * kx + Y * ky + phi)
        return out


def bisect(f: Callable[[float], float], lo: float, hi: float, target: float, iters: int = 30) -> float:
    """Find s in [lo, hi] with increasing f(s) ~= target."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def interp_index(p0: int, n0: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Node index and fraction (float32) of pixels p0 .. p0+T-1 for interpolation."""
    t = np.arange(p0, p0 + T, dtype=np.float64) / NODE - n0
    i = np.floor(t).astype(np.intp)
    return i, (t - i).astype(np.float32)


def bilinear(grid: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Bilinear samples of (..., ny, nx) grids at fractional indices (tx, ty)."""
    ix = np.clip(np.floor(tx).astype(np.intp), 0, grid.shape[-1] - 2)
    iy = np.clip(np.floor(ty).astype(np.intp), 0, grid.shape[-2] - 2)
    fx, fy = tx - ix, ty - iy
    g00, g01 = grid[..., iy, ix], grid[..., iy, ix + 1]
    g10, g11 = grid[..., iy + 1, ix], grid[..., iy + 1, ix + 1]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy

