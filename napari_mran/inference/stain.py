"""Stain normalisation of a slide's bags before the model (``--stain-normalize``).

The slide's own stains are fitted once, on the tissue of the smallest pyramid level that
the input check and the tissue rule read anyway, and every bag is mapped from them to
the reference.  The reference is, in this order of precedence:

1. the user's (``--stain-reference FILE``: :func:`napari_mran.stain.user.read_stain_reference`),
   recorded as ``"user: <file>"``;
2. the model's (``model.stain_reference``: fitted on its training cohort and stored in
   its checkpoint), when it was trained with the same method: ``"checkpoint (training
   cohort)"``;
3. the built-in H&E reference of :mod:`napari_mran.stain`: ``"built-in CMU-1"``.

A slide whose stains cannot be fitted there (too little tissue, one stain) falls back to
a fit per bag; the provenance says which.  A model trained with normalisation and run
without it gets a note in the provenance and a :class:`StainWarning`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import AnalysisError

Reader = Callable[[Any], tuple]

CHECKPOINT_SOURCE = "checkpoint (training cohort)"
BUILTIN_SOURCE = "built-in CMU-1"


class StainWarning(UserWarning):
    """The analysis's stain normalisation differs from the model's training."""


def _model_method(reference: dict[str, Any] | None) -> str | None:
    if isinstance(reference, dict) and isinstance(reference.get("method"), str):
        return str(reference["method"])
    return None


def off_note(reference: dict[str, Any] | None) -> str | None:
    """The note of a model trained with normalisation analysed without it (None if not)."""
    trained = _model_method(reference)
    if trained in (None, "off"):
        return None
    return (f"this model was trained on {trained}-normalised bags (its checkpoint holds the "
            f"training cohort's reference); analysed without normalisation, its outputs may "
            f"shift with the stains: use --stain-normalize {trained}")


def choose_reference(method: str, reference: dict[str, Any] | None = None,
                     user: str | os.PathLike[str] | None = None) -> tuple[Any, str, str | None]:
    """(StainReference, where it comes from, a note or None) for *method* (module
    docstring); AnalysisError naming the file or the model when a reference is bad."""
    from ..stain import default_reference
    from ..stain.user import read_stain_reference, reference_of_document

    trained = _model_method(reference)
    if user is not None:
        try:
            ref = read_stain_reference(user, method)
        except ValueError as exc:
            raise AnalysisError(str(exc)) from None
        return ref, f"user: {os.fspath(user)}", None
    if trained == method:
        try:
            return reference_of_document(reference, method, "the model's stain reference"), \
                CHECKPOINT_SOURCE, None
        except ValueError as exc:
            raise AnalysisError(str(exc)) from None
    note = None if trained in (None, "off") else (
        f"this model was trained with {trained} normalisation; its reference does not "
        f"apply to {method}: the built-in reference is used")
    return default_reference(method), BUILTIN_SOURCE, note


#: a user's full-resolution reference region and a slide fitted on a smallest level
#: reduced more than this are warned about (their max concentrations differ)
SCALE_WARN_DOWNSAMPLE = 2.0


def scale_note(ref: Any, user: str | os.PathLike[str] | None, downsample: float | None
               ) -> str | None:
    """The note of a user reference fitted at full resolution (an image region, a
    one-level file) used on a slide whose stains are fitted on a reduced smallest level:
    Macenko's 99th-percentile concentrations and Reinhard's spreads grow with resolution
    (resolved nuclei)."""
    from ..stain.user import fitted_at_full_resolution

    if user is None or downsample is None or downsample <= SCALE_WARN_DOWNSAMPLE \
            or not fitted_at_full_resolution(ref):
        return None
    return (f"{os.fspath(user)} was fitted at its own resolution, the slide's stains at its "
            f"smallest level (downsample {downsample:.0f}); stain statistics depend on "
            f"resolution (Macenko's max concentrations 1.2-1.6x, Reinhard's spreads about 2x "
            f"between 1 and 16 um/px on synthetic slides), so the bags would come out darker "
            f"or more contrasted than the reference: export the region at that downsample, "
            f"or give a slide or a JSON reference (docs/stain.md)")


def slide_stain(method: str, lowres: np.ndarray, valid: np.ndarray | None,
                reference: dict[str, Any] | None = None,
                user: str | os.PathLike[str] | None = None,
                downsample: float | None = None,
                ) -> tuple[SlideNormaliser | None, dict[str, Any]]:
    """``(normaliser, provenance)`` for *method*; ``(None, {...})`` when off.

    *reference*: the model's ``stain_reference`` (``{"method", "reference"}``) or None;
    *user*: a ``--stain-reference`` file or None; *downsample*: of *lowres* against
    level 0 (for :func:`scale_note`), None if unknown."""
    if method == "off":
        note = off_note(reference)
        if note is None:
            return None, {"method": "off"}
        warnings.warn(note, StainWarning, stacklevel=2)
        return None, {"method": "off", "note": note}
    from ..stain import fit_reference, glass_where_no_data

    ref, ref_source, note = choose_reference(method, reference, user)
    scale = scale_note(ref, user, downsample)
    if scale is not None:
        warnings.warn(scale, StainWarning, stacklevel=2)
        note = scale if note is None else f"{note}; {scale}"
    image = glass_where_no_data(lowres, valid)
    try:
        source = fit_reference(image, method, fitted_on="the slide's smallest level")
        fitted = "the slide's smallest level"
    except ValueError as exc:  # too little tissue or a single stain: per-bag fits
        source, fitted = None, f"each bag on its own ({exc})"
    info = {"method": method, "reference": ref.to_dict(), "reference_source": ref_source,
            "source": None if source is None else source.to_dict(), "source_fitted_on": fitted}
    if note:
        info["note"] = note

    return SlideNormaliser(ref, source), info


def on_model_device(dev: Any) -> bool:
    """Normalise on the model's device (torch) rather than in the decode threads
    (numpy)?  On a GPU: the bags are already there and the decode threads stay free; on
    the CPU the decode threads do it beside the model."""
    return getattr(dev, "type", "cpu") != "cpu"


class SlideNormaliser:
    """One slide's stain normalisation: called on a uint8 bag (numpy, the decode
    threads), or :meth:`on_tensor` on the model's float input batch (torch, on its
    device).  Both map the slide's fitted stains (*source*, or each bag's own when None)
    to *reference*; they agree to within the uint8 rounding of the numpy path."""

    def __init__(self, reference: Any, source: Any) -> None:
        self.reference, self.source = reference, source

    def __call__(self, img: np.ndarray) -> np.ndarray:
        from ..stain import normalize

        return np.asarray(normalize(img, self.reference, source=self.source))

    def on_tensor(self, x: Any) -> Any:
        """(n, 3, H, W) float in [0, 1] on any device -> the same, normalised there."""
        from ..stain import normalize

        return normalize(x, self.reference, source=self.source)


def normalised_reader(read: Reader, apply: Callable[[np.ndarray], np.ndarray] | None
                      ) -> Reader:
    """*read* with its image stain-normalised (in the decode threads); *read* when off."""
    if apply is None:
        return read

    def wrapped(item: Any) -> tuple:
        img, failures, valid_fraction = read(item)
        return (img if failures else apply(img)), failures, valid_fraction

    return wrapped


def preview(slide: Any, method: str, reference: dict[str, Any] | None = None,
            user: str | os.PathLike[str] | None = None
            ) -> tuple[np.ndarray, dict[str, Any], tuple[float, float]]:
    """What ``--stain-normalize`` *method* does to *slide*, to look at before analysing:
    its smallest level (the level the slide's stains are fitted on; glass where it has
    no data) normalised with the same fit and reference as analysis would use.

    Returns ``(uint8 RGB, provenance as analysis records it, (sx, sy) level-0 px per
    preview px)``.  A swapped or failed fit shows at once (nuclei pink, no change); the
    provenance says which reference and fit were used.  AnalysisError for a bad
    reference, ValueError for ``method="off"``."""
    from ..stain import glass_where_no_data
    from .reading import tissue_lowres

    if method == "off":
        raise ValueError("choose a stain normalisation (macenko or reinhard) to preview")
    img, valid, downsample = tissue_lowres(slide)
    rgb = np.ascontiguousarray(glass_where_no_data(img, valid))  # masked once, fitted on
    normaliser, info = slide_stain(method, rgb, None, reference, user,
                                   downsample=max(downsample))
    assert normaliser is not None
    return np.ascontiguousarray(normaliser(rgb)), info, \
        (float(downsample[0]), float(downsample[1]))
