"""Explicit conversion of non-RGB pixel layouts to RGB uint8 (recorded, never silent)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PixelConversion:
    """How stored samples become (h, w, 3) uint8 RGB.

    ``kind`` is one of ``rgb`` (identity), ``rgba`` (alpha composited on white),
    ``grey``, ``grey_alpha``, ``grey_inverted``; ``window`` maps a wider integer
    range linearly onto 0-255 (applied before the layout conversion).
    """

    kind: str
    samples: int
    dtype: str
    window: tuple[float, float] | None = None

    @property
    def is_identity(self) -> bool:
        return self.kind == "rgb" and self.window is None and self.dtype == "uint8"

    def describe(self) -> str:
        if self.is_identity:
            return "none (RGB uint8)"
        parts = []
        if self.window is not None:
            lo, hi = self.window
            parts.append(f"{self.dtype} -> uint8 by a linear window [{lo:g}, {hi:g}] "
                         "taken from the smallest level (0.5-99.5 percentiles)")
        layout = {
            "rgb": "RGB kept",
            "rgba": "alpha composited onto white",
            "grey": "grey replicated to RGB",
            "grey_alpha": "grey composited onto white (alpha) and replicated to RGB",
            "grey_inverted": "min-is-white grey inverted and replicated to RGB",
        }[self.kind]
        parts.append(layout)
        return "; ".join(parts)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Convert a block (h, w) or (h, w, S) of stored samples to (h, w, 3) uint8."""
        a = block
        if a.ndim == 2:
            a = a[..., None]
        if self.window is not None:
            lo, hi = self.window
            scale = 255.0 / max(hi - lo, 1e-12)
            a = np.clip((a.astype(np.float32) - lo) * scale + 0.5, 0, 255).astype(np.uint8)
        elif a.dtype != np.uint8:
            a = a.astype(np.uint8)
        if self.kind == "rgb":
            return np.ascontiguousarray(a[..., :3])
        if self.kind == "rgba":
            return _composite(a[..., :3], a[..., 3])
        if self.kind == "grey":
            return np.repeat(a[..., :1], 3, axis=-1)
        if self.kind == "grey_inverted":
            return np.repeat(255 - a[..., :1], 3, axis=-1)
        if self.kind == "grey_alpha":
            return np.repeat(_composite(a[..., :1], a[..., 1]), 3, axis=-1)
        raise AssertionError(self.kind)


def _composite(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite unassociated alpha onto a white background (uint8 in, uint8 out)."""
    a = alpha[..., None].astype(np.uint16)
    out = (colour.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def choose_conversion(dtype: np.dtype, samples: int, photometric: str,
                      extrasamples: int) -> PixelConversion | str:
    """Pick a conversion for a page layout, or return the reason it is refused."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (f"{dtype.name} pixels (floating point) are not a brightfield slide; "
                "convert it to 8-bit RGB first")
    if dtype.kind not in "ui" or dtype.itemsize > 2:
        return f"{dtype.name} pixels are not supported (only 8- and 16-bit integers)"
    if dtype.kind == "i":
        return f"signed {dtype.name} pixels are not supported (not a brightfield slide)"
    name = dtype.name
    if samples == 3 and photometric in ("RGB", "YCBCR"):
        kind = "rgb"
    elif samples == 4 and photometric in ("RGB", "YCBCR") and extrasamples <= 1:
        kind = "rgba"
    elif samples == 1 and photometric == "MINISBLACK":
        kind = "grey"
    elif samples == 1 and photometric == "MINISWHITE":
        kind = "grey_inverted"
    elif samples == 2 and photometric == "MINISBLACK" and extrasamples <= 1:
        kind = "grey_alpha"
    else:
        return (f"{samples} samples per pixel with photometric {photometric} "
                f"({name}) is not an RGB or grey slide (multichannel fluorescence "
                "is not supported)")
    return PixelConversion(kind=kind, samples=samples, dtype=name)
