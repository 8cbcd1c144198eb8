"""The project's exceptions.

Every failure that reaches a user is one of these, with a message that names the
file (or object) involved and the reason.  Third-party exceptions (tifffile,
imagecodecs, zarr, OpenSlide, torch, the OS) are mapped onto them at the boundary
where they happen.
"""

from __future__ import annotations

import os


class MRANError(Exception):
    """Base class of every error raised on purpose by napari-mran."""


class SlideError(MRANError):
    """A slide cannot be opened or read."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class UnsupportedFormatError(SlideError):
    """The file is not a slide format this tool can read (or it is not a file)."""


class CorruptSlideError(SlideError):
    """The file claims to be a supported slide but its structure or data is damaged."""


class ResourceLimitError(SlideError):
    """A read would exceed the memory/size budget (e.g. a decompression bomb)."""


class UnsupportedPixelsError(SlideError):
    """The pixel layout (bit depth, channels) cannot be shown or analysed as RGB."""


class CheckpointError(MRANError):
    """A model checkpoint is missing, malformed, unsafe or incompatible."""


class LabelsError(MRANError):
    """A labels.csv or split file is missing, malformed or inconsistent."""


class AnalysisError(MRANError):
    """An analysis could not be completed (e.g. too many bags failed to decode)."""


class ResultsError(MRANError):
    """A results store is missing, incomplete or cannot be written."""


class OutputExistsError(ResultsError):
    """Writing would overwrite something; the caller must ask explicitly."""
