"""Periodic stroma, chromatin and glass textures, built once per process and shared.

Collagen-like fibres are periodic noise filtered along drifting orientations; a slide
samples the shared textures at its own offsets (see ``_scene``).
"""

from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["GLASS_RGB", "Textures", "texture_bank"]

GLASS_RGB = np.array([240.0, 240.0, 242.0])


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


class Textures:
    """Periodic textures shared by all slides of a given mpp / tile size.

    Slides differ by where they sample them (per-slide offsets), so building
    them once per process keeps per-slide set-up cheap.  Each texture is
    wrap-padded by one tile so that a tile is a plain slice.
    """

    P_FIB = 512
    P_NOISE = 384

    def __init__(self, mpp: float, pad: int) -> None:
        um = 1.0 / mpp
        rng = np.random.default_rng(0x5EED7E47)  # fixed: textures are shared
        wrap = lambda a: np.ascontiguousarray(  # noqa: E731
            np.pad(a, [(0, pad), (0, pad)] + [(0, 0)] * (a.ndim - 2), mode="wrap"), np.float32)
        self.fibres = [wrap(_fibre_texture(rng, self.P_FIB, um)) for _ in range(2)]
        fine = _periodic_noise(rng, self.P_NOISE, 0.55 * um, 0.55 * um, 0.0)
        coarse = _periodic_noise(rng, self.P_NOISE, 1.6 * um, 1.6 * um, 0.0)
        self.chromatin = wrap(np.clip(1.0 + 0.17 * fine + 0.12 * coarse, 0.4, 1.6))
        # log of the glass colour with a faint noise: the base every pixel starts from
        glass = np.log(255.0) + np.log(GLASS_RGB / 255.0)
        noise = 0.004 * _periodic_noise(rng, self.P_NOISE, 0.8 * um, 0.8 * um, 0.0)
        self.log_glass = wrap(np.stack([glass[c] - noise for c in range(3)], -1))  # (P, P, 3)
        self.log_glass_planar = [np.ascontiguousarray(self.log_glass[..., c]) for c in range(3)]
        g = np.exp(self.log_glass.astype(np.float32)) + np.float32(0.5)
        self.glass_rgb = g.astype(np.uint8)


_TEXTURE_CACHE: dict[tuple[float, int], Textures] = {}
_TEXTURE_LOCK = threading.Lock()


def texture_bank(mpp: float, pad: int) -> Textures:
    """The textures for ``mpp`` wrap-padded by ``pad`` (a tile), from a small cache."""
    key = (float(mpp), int(pad))
    with _TEXTURE_LOCK:
        tex = _TEXTURE_CACHE.get(key)
        if tex is None:
            if len(_TEXTURE_CACHE) >= 4:
                _TEXTURE_CACHE.pop(next(iter(_TEXTURE_CACHE)))
            tex = _TEXTURE_CACHE[key] = Textures(mpp, pad)
    return tex
