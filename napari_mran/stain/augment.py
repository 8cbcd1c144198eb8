"""HED colour augmentation for training (the "HED jitter" of Tellez et al. 2018, 2019).

Each image's optical density is unmixed into haematoxylin, eosin and DAB
concentrations with the fixed stain matrix of Ruifrok & Johnston (2001, H&E-DAB row
vectors, scaled to unit length), each concentration channel ``c`` becomes
``alpha * c + beta`` with ``alpha`` drawn uniformly in ``[1 - sigma, 1 + sigma]`` and
``beta`` in ``[-bias, bias]`` (one draw per image and channel), and the result is mixed
back to RGB.  Defaults ``sigma = bias = 0.05``: Tellez et al.'s "HED-light" ranges.
``beta`` is in this project's OD unit (natural log, ``-ln((I + 1) / 256)``) per unit
stain vector.

Glass stays glass: the jitter is blended in with the same tissue ramp as normalisation
(pixels with mean OD <= 0.08 unchanged, full effect from 0.16), so ``beta`` does not
tint the background.  Linear in OD, the step is one 3 x 3 matrix and one offset per
image, applied to the batch at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._ops import od_to_intensity, to_batch

__all__ = ["DEFAULT_BIAS", "DEFAULT_SIGMA", "RUIFROK_HED", "HedJitter", "hed_jitter"]

#: Ruifrok & Johnston 2001, H&E-DAB: rows haematoxylin, eosin, DAB; OD in R, G, B
RUIFROK_HED = np.array([[0.650, 0.704, 0.286],
                        [0.072, 0.990, 0.105],
                        [0.268, 0.570, 0.776]])
_HED = RUIFROK_HED / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)

DEFAULT_SIGMA = 0.05
DEFAULT_BIAS = 0.05


def _check(sigma: float, bias: float) -> tuple[float, float]:
    s, b = float(sigma), float(bias)
    if not (math.isfinite(s) and 0.0 <= s < 1.0):
        raise ValueError(f"sigma must be in [0, 1), not {sigma!r}")
    if not (math.isfinite(b) and b >= 0.0):
        raise ValueError(f"bias must be >= 0, not {bias!r}")
    return s, b


def _uniform(rng: Any, n: int) -> np.ndarray:
    """(2, n, 3) uniform [0, 1) draws from a numpy Generator, a torch Generator or an
    int seed (the first n x 3 for alpha, then n x 3 for beta)."""
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        return rng.random((2, n, 3))
    import torch

    if isinstance(rng, torch.Generator):
        u = torch.rand((2, n, 3), generator=rng, dtype=torch.float64, device=rng.device)
        return u.cpu().numpy()
    raise ValueError(f"rng must be a numpy Generator, a torch Generator or an int seed, "
                     f"not {type(rng).__name__}")


def hed_jitter(images: Any, rng: Any, *, sigma: float = DEFAULT_SIGMA,
               bias: float = DEFAULT_BIAS, return_factors: bool = False) -> Any:
    """Randomly perturb the H, E and DAB concentrations of each image.

    images: numpy uint8 ``(n, H, W, 3)`` / ``(H, W, 3)`` or torch float in [0, 1]
        ``(n, 3, H, W)`` / ``(3, H, W)``; returned in the same layout and type.
    rng: a numpy ``Generator``, a torch ``Generator`` (factors are drawn on its device
        and moved) or an int seed; the same state gives the same result.
    return_factors: also return ``{"alpha": (n, 3), "beta": (n, 3)}`` (float64, columns
        H, E, DAB).
    """
    s, b = _check(sigma, bias)
    batch = to_batch(images)
    u = _uniform(rng, batch.n)
    alpha = 1.0 - s + 2.0 * s * u[0]
    beta = -b + 2.0 * b * u[1]
    if s == 0.0 and b == 0.0:
        out = batch.intensity
    else:
        # OD = M^T c (rows of M: the stains): c' = diag(alpha) c + beta, mixed back
        matrices = (_HED.T[None] * alpha[:, None, :]) @ np.linalg.inv(_HED.T)
        shifts = beta @ _HED
        be = batch.be
        od = be.const(matrices) @ batch.od
        od += be.const(shifts[:, :, None])
        out = batch.blend(od_to_intensity(be, od))
    result = batch.output(out)
    return (result, {"alpha": alpha, "beta": beta}) if return_factors else result


@dataclass(frozen=True)
class HedJitter:
    """:func:`hed_jitter` with fixed ranges, as a training transform; ``to_dict`` for
    provenance."""

    sigma: float = DEFAULT_SIGMA
    bias: float = DEFAULT_BIAS

    def __post_init__(self) -> None:
        s, b = _check(self.sigma, self.bias)
        object.__setattr__(self, "sigma", s)
        object.__setattr__(self, "bias", b)

    def __call__(self, images: Any, rng: Any) -> Any:
        return hed_jitter(images, rng, sigma=self.sigma, bias=self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hed_jitter", "sigma": self.sigma, "bias": self.bias,
                "stain_matrix": "Ruifrok & Johnston 2001 H&E-DAB"}
