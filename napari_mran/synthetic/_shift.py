"""A stain / scanner shift of a synthetic slide (:class:`StainShift`, named presets).

A shift models a second laboratory and scanner: other stain vectors and strengths (the
haematoxylin and eosin optical-density vectors are multiplied per R, G, B channel:
their hue and strength change), another illumination (``brightness``) and white balance
(``tint``: glass and tissue light multiplied per channel), and optional optical blur
(a Gaussian of ``blur`` level-0 pixels).  The tissue, the nuclei and the ground truth
are those of the unshifted slide with the same seed: only the colours and the sharpness
differ.  docs/synthetic.md has the numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["STAIN_SHIFTS", "StainShift", "as_stain_shift"]


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"StainShift.{name} must be three numbers (R, G, B), "
                         f"not {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) and 0.0 < v <= 4.0 for v in out):
        raise ValueError(f"StainShift.{name} must be three numbers in (0, 4], not {value!r}")
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class StainShift:
    """Per-channel (R, G, B) factors on the H and E optical-density vectors, a
    brightness and a white-balance tint (transmitted light x factor), a blur sigma
    (level-0 px, 0 = none), and a name for the records."""

    hematoxylin: tuple[float, float, float] = (1.0, 1.0, 1.0)
    eosin: tuple[float, float, float] = (1.0, 1.0, 1.0)
    brightness: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    blur: float = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        for name in ("hematoxylin", "eosin", "tint"):
            object.__setattr__(self, name, _triple(name, getattr(self, name)))
        b, s = self.brightness, self.blur
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.25 <= b <= 4.0:
            raise ValueError(f"StainShift.brightness must be in [0.25, 4], not {b!r}")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 16.0:
            raise ValueError(f"StainShift.blur must be in [0, 16] px, not {s!r}")
        object.__setattr__(self, "brightness", float(b))
        object.__setattr__(self, "blur", float(s))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def stain_vectors(self, h_vec: list[float], e_vec: list[float]
                      ) -> tuple[list[float], list[float]]:
        """The shifted H and E optical-density vectors."""
        return ([float(v * f) for v, f in zip(h_vec, self.hematoxylin)],
                [float(v * f) for v, f in zip(e_vec, self.eosin)])

    def apply_light(self, rgb: np.ndarray) -> np.ndarray:
        """A rendered uint8 tile under this illumination, white balance and blur."""
        gain = np.float32(self.brightness) * np.asarray(self.tint, np.float32)
        if self.blur == 0.0 and bool(np.all(gain == 1.0)):
            return rgb
        out = rgb.astype(np.float32) * gain
        if self.blur > 0.0:
            from scipy.ndimage import gaussian_filter

            out = gaussian_filter(out, sigma=(self.blur, self.blur, 0.0), mode="nearest")
        return np.clip(out + np.float32(0.5), 0, 255).astype(np.uint8)


#: named presets: "scanner-b" is a second lab and scanner (docs/synthetic.md)
STAIN_SHIFTS: dict[str, StainShift] = {
    "scanner-b": StainShift(hematoxylin=(0.45, 0.8, 1.1), eosin=(1.6, 1.0, 0.6),
                            brightness=1.0, tint=(1.0, 0.95, 1.0), blur=2.0,
                            name="scanner-b"),
}


def as_stain_shift(value: StainShift | str | None) -> StainShift | None:
    """A :class:`StainShift` from one, a preset name, or None (no shift)."""
    if value is None or isinstance(value, StainShift):
        return value
    if isinstance(value, str) and value in STAIN_SHIFTS:
        return STAIN_SHIFTS[value]
    raise ValueError(f"stain_shift must be a StainShift, None or one of "
                     f"{', '.join(STAIN_SHIFTS)}; not {value!r}")
