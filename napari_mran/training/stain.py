"""Stain handling in training (docs/stain.md, "Training").

* ``--stain-normalize macenko|reinhard``: a reference is fitted on the **training
  cohort**: the tissue pixels of every training slide's smallest pyramid level (the level
  analysis fits each slide's own stains on), pooled by
  :func:`napari_mran.stain.fit_reference` (an equal share of at most 2**20 pixels per
  slide, at a fixed stride).  Validation and test slides are never used.  Every bag (train,
  validation, test) is then normalised the way analysis does it: the slide's stains fitted
  once on its smallest level, mapped to that reference
  (:func:`napari_mran.inference.stain.slide_stain`).  The reference is stored in the
  run's checkpoint.pt and in model.safetensors (``model.stain_reference``), so analysis
  normalises to the same target.
* ``--stain-augment hed``: HED jitter (:class:`napari_mran.stain.HedJitter`) of each
  upstream bag, after normalisation; one seed per bag read, drawn from
  ``numpy.random.default_rng([seed, epoch, 3])``, so a run and its resume draw the same
  factors whatever the order the decode threads finish in.
"""

from __future__ import annotations

import json
from typing import Any, Generator

import numpy as np

from ..errors import MRANError
from .config import EpochEvent, TrainConfig

#: a training slide's smallest level is read at a stride that leaves at most this many
#: pixels per side (the fit pools at most 2**20 tissue pixels over the whole cohort)
MAX_FIT_SIDE = 1024
#: the purpose index of the augmentation seeds in ``default_rng([seed, epoch, purpose])``
AUGMENT_PURPOSE = 3


def smallest_level_pixels(path: str) -> np.ndarray:
    """uint8 RGB of a slide's smallest level, glass where it has no data, read at a
    stride down to at most ``MAX_FIT_SIDE`` px per side (whole pixels, no blending)."""
    from ..inference.reading import tissue_lowres
    from ..slide import open_slide
    from ..stain import glass_where_no_data

    with open_slide(path) as slide:
        img, valid, _ = tissue_lowres(slide)
    img = glass_where_no_data(img, valid)
    step = max(1, -(-max(img.shape[:2]) // MAX_FIT_SIDE))
    return np.ascontiguousarray(img[::step, ::step])


def cohort_reference(method: str, paths: list[str]) -> dict[str, Any]:
    """``{"method", "reference"}``: *method*'s reference fitted on the tissue of the
    training slides *paths* (their smallest levels, pooled)."""
    from ..stain import fit_reference

    images = [smallest_level_pixels(p) for p in paths]
    label = (f"training cohort: {len(paths)} slide(s), tissue of their smallest levels "
             f"(napari-mran train --stain-normalize {method})")
    try:
        ref = fit_reference(images, method, fitted_on=label)
    except ValueError as exc:
        raise MRANError(f"cannot fit the training cohort's {method} stain reference on "
                        f"{len(paths)} training slide(s): {exc}") from None
    return {"method": method, "reference": ref.to_dict()}


def training_stain(ctx: Any, saved: dict[str, Any] | None
                   ) -> Generator[EpochEvent, None, None]:
    """Set ``ctx.stain_reference`` (from the checkpoint being resumed, else fitted on
    the training slides; None when off) and give the bag reader its stain steps."""
    cfg = ctx.cfg
    if cfg.stain_normalize != "off":
        kept = None if saved is None else json.loads(saved.get("stain_reference", "null"))
        if kept is not None and kept.get("method") == cfg.stain_normalize:
            ctx.stain_reference = kept
        else:
            yield EpochEvent(0, cfg.epochs, "prepare",
                             message=f"fitting the training cohort's {cfg.stain_normalize} "
                                     f"stain reference ({len(ctx.train_slides)} slides)")
            ctx.stain_reference = cohort_reference(cfg.stain_normalize,
                                                   [s.path for s in ctx.train_slides])
    reader = ctx.bag_reader()
    reader.stain_reference = ctx.stain_reference
    reader.method = cfg.stain_normalize
    reader.augment = augmenter(cfg)


def augmenter(cfg: TrainConfig) -> Any:
    """The HED jitter of ``--stain-augment hed`` (None when off)."""
    if cfg.stain_augment == "off":
        return None
    from ..stain import HedJitter

    return HedJitter(sigma=cfg.stain_augment_sigma, bias=cfg.stain_augment_bias)


def augment_seeds(cfg: TrainConfig, epoch: int, n: int) -> list[int | None]:
    """One seed per upstream bag read of *epoch* (None each when augmentation is off)."""
    if cfg.stain_augment == "off":
        return [None] * n
    rng = np.random.default_rng([cfg.seed, epoch, AUGMENT_PURPOSE])
    return [int(v) for v in rng.integers(0, 2 ** 63 - 1, n)]


def stain_provenance(cfg: TrainConfig, reference: dict[str, Any] | None) -> dict[str, Any]:
    """What the model's provenance records of the run's stain handling."""
    out: dict[str, Any] = {"normalize": cfg.stain_normalize}
    if reference is not None:
        out["reference"] = reference["reference"]
        out["reference_source"] = "training cohort (smallest levels of the training slides)"
    if cfg.stain_augment != "off":
        out["augment"] = {
            "method": cfg.stain_augment, "sigma": cfg.stain_augment_sigma,
            "bias": cfg.stain_augment_bias,
            "seeds": f"one per upstream bag read: numpy default_rng([seed={cfg.seed}, epoch, "
                     f"{AUGMENT_PURPOSE}])"}
    else:
        out["augment"] = {"method": "off"}
    return out
