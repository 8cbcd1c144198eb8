"""The shared plumbing of the stain package: two pixel layouts in, one layout inside.

Callers give either

* **numpy**: ``uint8`` RGB, ``(n, H, W, 3)`` (a batch of bags) or ``(H, W, 3)`` (one
  image), channel last, as decoded bags come off the reader; or
* **torch**: float RGB in ``[0, 1]``, ``(n, 3, H, W)`` or ``(3, H, W)``, on any device,
  as the model takes them (``RGB / 255``).

Inside, every algorithm works on *planar* ``(n, 3, P)`` float32 pixels (P = H * W; a
pixel is a column), in one of two units: intensity ``I`` in ``[0, 255]`` or optical
density (OD), with the project's convention (napari_mran.brightfield):
``OD = -ln((I + 1) / 256)``, so that ``I = 255`` (white) is OD 0 exactly, ``I = 0`` is
OD ln 256 = 5.55 (finite), and ``I = 256 exp(-OD) - 1`` inverts it.  Planar because
a (3, 3) @ (3, P) product and per-channel sums over contiguous planes are 5-20x faster
in numpy than the same over (P, 3) rows.

:class:`Backend` holds the few operations whose spelling differs between numpy and
torch; the per-pixel steps call ``be.xp.<function>`` only for functions spelled alike
in both (log, exp, clip, minimum, matmul via ``@``).  Fits run on the host in float64
numpy, on at most ``MAX_FIT_PIXELS`` tissue pixels per image that are selected where
the image is and copied over (<= 1.5 MiB): one code for both paths, and no stream of
tiny kernels, each a device sync or a thread hand-off, on the device.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Backend", "Batch", "BACKGROUND_OD", "TISSUE_OD", "BETA", "MAX_FIT_PIXELS",
           "MIN_TISSUE_PIXELS", "from_numpy", "from_torch", "glass_where_no_data", "is_tensor",
           "od_to_intensity",
           "tissue_pixels", "to_batch"]

#: a pixel whose mean OD over R, G, B is at most this is glass: returned unchanged
#: (0.08 = intensity ~236; the bundled CMU-1 glass is 0.045, synthetic glass 0.063)
BACKGROUND_OD = 0.08
#: ... and from this mean OD up it is fully normalised / augmented (linear in between,
#: so there is no seam at the tissue border)
TISSUE_OD = 0.16
#: Macenko et al.'s beta: a pixel is used to fit stains or colour statistics when its OD
#: is >= 0.15 in every channel
BETA = 0.15
#: at most this many tissue pixels (taken at a fixed stride) are used to fit one image
MAX_FIT_PIXELS = 1 << 16
#: an image with fewer tissue pixels is not fitted (too little tissue: left unchanged)
MIN_TISSUE_PIXELS = 256

#: OD of each uint8 level (a lookup is faster than a log over the pixels)
_OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def is_tensor(x: object) -> bool:
    """Whether *x* is a torch tensor (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def glass_where_no_data(image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """uint8 RGB of *image* (its first three channels) with glass (255) where *valid*
    (a boolean mask, None: all valid) says there is no data, so that missing tiles never
    count as tissue in a fit."""
    rgb = np.asarray(image)[..., :3]
    if valid is None:
        return rgb
    return np.where(np.asarray(valid)[..., None], rgb, 255).astype(np.uint8)


class Backend:
    """numpy or torch (on one device): the operations spelled differently in the two."""

    def __init__(self, xp: Any, device: Any = None) -> None:
        self.xp = xp
        self.device = device
        self.is_torch = xp is not np

    def const(self, values: Any) -> Any:
        """A float32 array of *values* on this backend's device."""
        if self.is_torch:
            return self.xp.as_tensor(np.asarray(values, np.float32), device=self.device)
        return np.asarray(values, np.float32)

    def host(self, x: Any) -> np.ndarray:
        """*x* as a float64 numpy array on the host (syncs a device)."""
        if self.is_torch:
            return x.detach().to("cpu", self.xp.float64).numpy()
        return np.asarray(x, np.float64)

    def nonzero(self, mask: Any) -> Any:
        """Indices of the True entries of a 1-d mask."""
        return self.xp.nonzero(mask, as_tuple=True)[0] if self.is_torch else np.flatnonzero(mask)

    def where_rows(self, keep: np.ndarray, new: Any, old: Any) -> Any:
        """``new[i]`` where ``keep[i]`` else ``old[i]``, for (n, ...) arrays."""
        if keep.all():
            return new
        k = self.const(keep.astype(np.float32)).reshape((-1,) + (1,) * (new.ndim - 1)) > 0.5
        return self.xp.where(k, new, old)


@dataclass
class Batch:
    """A batch in the inside layout: intensities and OD, both (n, 3, P); OD is float32,
    intensities float32 (torch) or the caller's uint8 (numpy: blended in as they are)."""

    be: Backend
    intensity: Any
    od: Any
    shape: tuple[int, ...]   # the caller's shape, to put the result back
    single: bool             # the caller gave one image (no batch axis)
    dtype: Any = None        # the caller's torch dtype

    @property
    def n(self) -> int:
        return int(self.od.shape[0])

    def weight(self) -> Any:
        """(n, 1, P) in [0, 1]: 0 on glass (mean OD <= BACKGROUND_OD), 1 on tissue
        (>= TISSUE_OD), linear in between."""
        od = self.od
        s = od[:, 0:1] + od[:, 1:2] + od[:, 2:3]
        lo, gain = 3.0 * BACKGROUND_OD, 1.0 / (3.0 * (TISSUE_OD - BACKGROUND_OD))
        return self.be.xp.clip((s - lo) * gain, 0.0, 1.0)

    def blend(self, new_intensity: Any) -> Any:
        """The caller's pixels where glass, *new_intensity* where tissue (a soft ramp)."""
        old = self.intensity
        new_intensity -= old
        new_intensity *= self.weight()
        new_intensity += old
        return new_intensity

    def output(self, intensity: Any) -> Any:
        """(n, 3, P) intensities back in the caller's layout and type."""
        if self.be.is_torch:
            x = (intensity * (1.0 / 255.0)).clamp_(0.0, 1.0)
            x = x.reshape((x.shape[0], *self.shape[-3:])).to(self.dtype)
            return x[0] if self.single else x
        n = intensity.shape[0]
        h, w = self.shape[-3:-1]
        res = np.empty((n, h, w, 3), np.uint8)
        planar = intensity.reshape(n, 3, h, w)
        if planar.dtype != np.uint8:
            np.rint(planar, out=planar)
            np.clip(planar, 0.0, 255.0, out=planar)
        res.transpose(0, 3, 1, 2)[...] = planar   # one strided write, no extra copy
        return res[0] if self.single else res


def from_numpy(images: Any) -> Batch:
    """A :class:`Batch` from uint8 ``(n, H, W, 3)`` or ``(H, W, 3)`` RGB."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError("numpy images must be uint8 RGB (n, H, W, 3) or (H, W, 3), "
                         f"not {arr.dtype} {arr.shape}")
    single = arr.ndim == 3
    n = 1 if single else arr.shape[0]
    planar = np.ascontiguousarray(arr.reshape(n, -1, 3).transpose(0, 2, 1))  # (n, 3, P)
    return Batch(Backend(np), planar, _OD_LUT[planar], arr.shape, single)


def from_torch(images: Any) -> Batch:
    """A :class:`Batch` from float ``(n, 3, H, W)`` or ``(3, H, W)`` RGB in [0, 1]."""
    import torch

    x = images
    if not x.is_floating_point() or x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError("torch images must be float RGB in [0, 1], (n, 3, H, W) or "
                         f"(3, H, W), not {x.dtype} {tuple(x.shape)}")
    single = x.ndim == 3
    x4 = x[None] if single else x
    intensity = x4.detach().float().reshape(x4.shape[0], 3, -1) * 255.0
    od = torch.log((intensity + 1.0) * (1.0 / 256.0)).neg_()
    return Batch(Backend(torch, x.device), intensity, od, tuple(x.shape), single, x.dtype)


def to_batch(images: Any) -> Batch:
    """A :class:`Batch` from numpy uint8 or torch float images (see the module doc)."""
    return from_torch(images) if is_tensor(images) else from_numpy(images)


def od_to_intensity(be: Backend, od: Any) -> Any:
    """``256 exp(-OD) - 1``: intensities (unclipped) from optical densities."""
    out = be.xp.exp(-od)
    out *= 256.0
    out -= 1.0
    return out


def tissue_pixels(be: Backend, od: Any, max_pixels: int = MAX_FIT_PIXELS) -> np.ndarray:
    """The (3, k) OD, float64 on the host, of the pixels of one image (3, P) that are
    tissue (OD >= BETA in every channel): at most *max_pixels* of them, at a fixed stride
    (deterministic).  Selected where the image is (a device), fitted on the host."""
    xp = be.xp
    mask = xp.minimum(xp.minimum(od[0], od[1]), od[2]) >= BETA
    idx = be.nonzero(mask)
    step = max(1, -(-int(idx.shape[0]) // max(1, max_pixels)))
    return be.host(od[:, idx[::step] if step > 1 else idx])
