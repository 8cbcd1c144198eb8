"""Is this a brightfield H&E image?  A cheap check made before analysis.

MRAN was trained on 8-bit RGB brightfield H&E: white glass, tissue darker than the
glass, stained pink (eosin) and purple (haematoxylin).  Fed a fluorescence channel, a
grey image or a colour gradient it still returns confident probabilities, so analysis
refuses such input unless the user overrides the check (recorded in provenance).

The rule (docs/input-check.md has the measurements behind the numbers) runs on the
smallest pyramid level, subsampled to at most ``MAX_SIDE`` px:

1. **bright background**: the 95th percentile of luminance is >= 160 and the median
   is >= 100 (fluorescence: dark background; the bundled H&E: 246 and 243).
2. **stained pixels** are those with optical density (sum over RGB of
   -log((I + 1) / 256)) > 0.3.  With fewer than 0.5 % stained pixels there is too little
   tissue to judge colour: the check passes (tissue detection decides).
3. **enough colour**: the stained pixels' median HSV saturation is >= 0.08 (a grey
   image has 0; the bundled H&E 0.42) and <= 0.85 (translucent stains never reach the
   pure colours of graphics).
4. **H&E hue**: both stains absorb green most, so in >= 70 % of the stained pixels
   green is the darkest channel (within 2 levels); an RGB gradient has 51 %, the
   bundled H&E 95 %, synthetic H&E 100 %.

Pure numpy; reads nothing itself except through :func:`check_slide`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InputCheck", "check_rgb", "check_slide", "RULE", "MAX_SIDE"]

MAX_SIDE = 2048
MIN_P95_LUMINANCE = 160.0
MIN_MEDIAN_LUMINANCE = 100.0
STAINED_OD = 0.3
MIN_STAINED_FRACTION = 0.005
MIN_SATURATION = 0.08
MAX_SATURATION = 0.85
MIN_GREEN_DARKEST = 0.7

RULE = (f"brightfield H&E: luminance p95 >= {MIN_P95_LUMINANCE:g} and median >= "
        f"{MIN_MEDIAN_LUMINANCE:g}; stained pixels (OD > {STAINED_OD:g}) median saturation in "
        f"[{MIN_SATURATION:g}, {MAX_SATURATION:g}] and green the darkest channel in >= "
        f"{MIN_GREEN_DARKEST:.0%} of them (not judged below {MIN_STAINED_FRACTION:.1%} stained)")


@dataclass(frozen=True)
class InputCheck:
    """Verdict of the brightfield H&E check; ``reason`` is one line when it fails."""

    ok: bool
    reason: str
    stats: dict[str, float] = field(default_factory=dict)

    def provenance(self, overridden: bool = False) -> dict[str, Any]:
        return {"rule": RULE, "passed": self.ok, "reason": self.reason,
                "overridden": bool(overridden and not self.ok),
                "stats": {k: round(float(v), 4) for k, v in self.stats.items()}}


def _subsample(rgb: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    step = max(1, -(-max(rgb.shape[:2]) // max_side))
    return rgb[::step, ::step]


def check_rgb(image: np.ndarray, valid: np.ndarray | None = None) -> InputCheck:
    """Check an (h, w, 3|4) uint8 low-resolution image of a whole slide."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
        return InputCheck(False, f"not 8-bit RGB (array {arr.dtype} {arr.shape})")
    mask = None if valid is None else _subsample(np.asarray(valid, bool))
    rgb = _subsample(arr)[..., :3].astype(np.float32)
    if arr.shape[2] == 4:
        alpha = _subsample(arr)[..., 3] > 0
        mask = alpha if mask is None else mask & alpha
    px = rgb.reshape(-1, 3) if mask is None else rgb[mask]
    if px.shape[0] == 0:
        return InputCheck(True, "no pixels with data to judge", {})
    lum = px @ np.array([0.299, 0.587, 0.114], np.float32)
    p95, median = (float(v) for v in np.percentile(lum, [95, 50]))
    stats = {"luminance_p95": p95, "luminance_median": median}
    if p95 < MIN_P95_LUMINANCE or median < MIN_MEDIAN_LUMINANCE:
        return InputCheck(False, f"the background is dark (luminance median {median:.0f}, "
                          f"95th percentile {p95:.0f} of 255): fluorescence or darkfield, "
                          "not brightfield", stats)
    od = -np.log((px + 1.0) / 256.0).sum(axis=1)
    stained = px[od > STAINED_OD]
    frac = stained.shape[0] / px.shape[0]
    stats["stained_fraction"] = frac
    if frac < MIN_STAINED_FRACTION:
        return InputCheck(True, "too little stained tissue to judge its colour", stats)
    mx, mn = stained.max(axis=1), stained.min(axis=1)
    sat = float(np.median(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1.0), 0.0)))
    green = float(np.mean(stained[:, 1] <= np.minimum(stained[:, 0], stained[:, 2]) + 2.0))
    stats.update(saturation_median=sat, green_darkest_fraction=green)
    if sat < MIN_SATURATION:
        return InputCheck(False, f"the tissue has no colour (median saturation {sat:.2f}): "
                          "a grey or single-channel image, not H&E", stats)
    if sat > MAX_SATURATION:
        return InputCheck(False, f"the colours are pure (median saturation {sat:.2f}), as in "
                          "graphics, not translucent stains", stats)
    if green < MIN_GREEN_DARKEST:
        return InputCheck(False, f"the colours are not H&E's pink and purple (green is the "
                          f"darkest channel in {green:.0%} of the stained pixels)", stats)
    return InputCheck(True, "", stats)


def check_slide(slide, lowres: tuple | None = None) -> InputCheck:
    """Check a slide on its smallest level (or on ``lowres = (image, valid, ...)``)."""
    if lowres is None:
        from .inference.reading import tissue_lowres

        lowres = tissue_lowres(slide)
    image, valid = lowres[0], lowres[1]
    return check_rgb(image, valid)
