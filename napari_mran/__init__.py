"""napari-mran: whole-slide images and MRAN multi-scale attention, headless core + napari plugin.

The public headless API is importable without napari, Qt or a display::

    import napari_mran
    slide = napari_mran.open_slide("slide.svs")

Heavy modules (torch, dask) are imported only when the names that need them are used.
"""

from __future__ import annotations

from importlib import import_module

from .errors import (AnalysisError, CheckpointError, CorruptSlideError,  # noqa: F401
                     LabelsError, MRANError, OutputExistsError, ResourceLimitError,
                     ResultsError, SlideError, UnsupportedFormatError, UnsupportedPixelsError)

from ._version import __version__  # noqa: F401

_LAZY = {
    "open_slide": "napari_mran.slide",
    "Slide": "napari_mran.slide",
    "load_model": "napari_mran.model",
    "save_model": "napari_mran.model",
    "MRAN": "napari_mran.model",
    "analyze_slide": "napari_mran.analysis",
    "predict_slide": "napari_mran.analysis",
    "SlideResult": "napari_mran.results",
}

__all__ = sorted([*_LAZY, "AnalysisError", "CheckpointError", "CorruptSlideError",
                  "LabelsError", "MRANError",
                  "OutputExistsError", "ResourceLimitError", "ResultsError", "SlideError",
                  "UnsupportedFormatError", "UnsupportedPixelsError", "__version__"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_mran' has no attribute {name!r}")


def __dir__():
    return __all__
