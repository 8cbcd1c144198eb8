"""Stain normalisation (Macenko, Reinhard) and HED stain augmentation for H&E bags.

Two pixel layouts, chosen by the type of what is passed (docs/stain.md):

* numpy ``uint8`` RGB ``(n, H, W, 3)`` or ``(H, W, 3)``: decoded bags, as the reader
  gives them; the result is uint8 of the same shape;
* torch float RGB in ``[0, 1]``, ``(n, 3, H, W)`` or ``(3, H, W)``, on any device: the
  model's input (``RGB / 255``); the result has the same shape, dtype and device and is
  computed there (float32).

API::

    ref = fit_reference(bags, "macenko", fitted_on="cohort X, 200 bags")  # or
    ref = default_reference("macenko")            # built-in H&E (CMU-1 sample)
    out = normalize(bags, ref)                    # each bag fitted on its own, or
    src = fit_reference(some_bags_of_the_slide, "macenko")
    out = normalize(bags, ref, source=src)        # one transform for the whole slide
    json_safe = ref.to_dict(); StainReference.from_dict(json_safe)
    aug = hed_jitter(bags, np.random.default_rng(0), sigma=0.05, bias=0.05)

numpy and torch only (torch imported when a tensor is passed); reads no files.
"""

from __future__ import annotations

from ._ops import glass_where_no_data
from .augment import DEFAULT_BIAS, DEFAULT_SIGMA, RUIFROK_HED, HedJitter, hed_jitter
from .macenko import DegenerateStains
from .normalize import normalize
from .reference import (DEFAULT_REFERENCES, STAIN_METHODS, StainReference, as_reference,
                        default_reference, fit_reference)

__all__ = [
    "DEFAULT_BIAS",
    "DEFAULT_REFERENCES",
    "DEFAULT_SIGMA",
    "DegenerateStains",
    "HedJitter",
    "RUIFROK_HED",
    "STAIN_METHODS",
    "StainReference",
    "as_reference",
    "default_reference",
    "fit_reference",
    "glass_where_no_data",
    "hed_jitter",
    "normalize",
]
