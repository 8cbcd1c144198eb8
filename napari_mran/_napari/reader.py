"""npe2 reader contribution: whole-slide images as one lazy multiscale RGB layer."""

from __future__ import annotations

import os

from ..errors import SlideError, UnsupportedFormatError
from ..slide import open_slide
from .layers import slide_layer_data


def get_reader(path):
    """Return a reader for ``path`` when it is a slide we can open, else None.

    Unsupported files are declined (None) so other readers may try them.  A file
    that looks like a slide but is damaged gets a reader that shows a napari
    notification with the reason and adds nothing (never a traceback dialog).
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    try:
        slide = open_slide(path)
    except UnsupportedFormatError:
        return None
    except SlideError as exc:
        return _notifying_reader(exc)
    return _slide_reader(slide)


def _slide_reader(slide):
    def read(_path):
        return [slide_layer_data(slide)]
    return read


def _notifying_reader(exc: SlideError):
    def read(_path):
        from napari.utils.notifications import show_error

        show_error(f"napari-mran could not open the slide: {exc}")
        return [(None,)]  # napari's "nothing to add" sentinel
    return read
