"""Whole-slide image access (the only part of the package that touches slide files)."""

from .core import Slide, file_fingerprint, open_slide

__all__ = ["Slide", "file_fingerprint", "open_slide"]
