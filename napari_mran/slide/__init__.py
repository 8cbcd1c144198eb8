"""Whole-slide image access (the only part of the package that touches slide files)."""

from .core import Slide, open_slide

__all__ = ["Slide", "open_slide"]
