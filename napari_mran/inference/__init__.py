"""Inference: the analysis options, device policy, bag reading and the engine that runs
MRAN over a slide (:func:`napari_mran.analysis.analyze_slide`)."""

from .options import AnalysisOptions

__all__ = ["AnalysisOptions"]
