"""tifffile's log records, counted per slide instead of printed.

tifffile reports damage it works around (and some it does not) only by logging.
While one of our slides is inside a call into tifffile, the ``tifffile`` logger's
WARNING and ERROR records are routed to that slide's :class:`LogCapture`, where
they are counted per distinct message; the slide reports them as warnings (or, at
open, refuses the file on an error).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["MAX_LOG_MESSAGES", "LogCapture"]

#: Distinct tifffile messages kept per slide; further ones are counted in one line.
MAX_LOG_MESSAGES = 20
_TIFF_REPR = re.compile(r"<tifffile\.(\w+)[^>]*>\s*")
_NUMBER = re.compile(r"\d+")
_LOG_LOCK = threading.Lock()
_ACTIVE: list[LogCapture] = []  # captures whose slide is inside a tifffile call
_LOCAL = threading.local()


def _clean(message: str) -> str:
    """A tifffile message without object reprs: ``<tifffile.TiffFile 'a.tif'> x`` -> ``x``,
    ``<tifffile.TiffPage 3 @1234> x`` -> ``TiffPage: x``."""
    text = _TIFF_REPR.sub(lambda m: "" if m.group(1) == "TiffFile" else f"{m.group(1)}: ",
                          message)
    return " ".join(text.split())[:300]


class LogCapture:
    """tifffile's WARNING/ERROR log records for one slide, counted per distinct message.

    Messages that differ only in numbers (offsets, page or IFD indexes) count as one;
    the first one is kept as the text shown.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[bool, str], list[Any]] = {}  # (is error, key) -> [text, count]

    def add(self, record: logging.LogRecord) -> None:
        text = _clean(record.getMessage())
        key = (record.levelno >= logging.ERROR, _NUMBER.sub("#", text))
        with self._lock:
            if key not in self._seen and len(self._seen) >= MAX_LOG_MESSAGES:
                key = (key[0], "")
                text = "further distinct messages"
            self._seen.setdefault(key, [text, 0])[1] += 1

    def lines(self, errors: bool = False) -> list[str]:
        """One line per distinct message: ``text`` or ``text (xN)``."""
        with self._lock:
            items = [v for (is_error, _), v in self._seen.items() if is_error == errors]
        return [text + (f" (x{n})" if n > 1 else "") for text, n in items]

    @contextmanager
    def active(self) -> Iterator[LogCapture]:
        """Route tifffile's records to this capture while the block runs (see _LogRouter)."""
        previous = getattr(_LOCAL, "capture", None)
        _LOCAL.capture = self
        with _LOG_LOCK:
            _ACTIVE.append(self)
        try:
            yield self
        finally:
            with _LOG_LOCK:
                _ACTIVE.remove(self)
            _LOCAL.capture = previous


class _LogRouter(logging.Filter):
    """A filter on the ``tifffile`` logger, installed once.

    While one of our slides is inside a call into tifffile, the logger's WARNING and
    ERROR records are counted in that slide's capture and dropped (never printed raw,
    whatever logging the application configured); anyone else's records pass untouched.
    tifffile and zarr also decode in threads they start (zarr's I/O loop): records from
    a thread without a capture of its own go to the most recently activated one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        capture = getattr(_LOCAL, "capture", None)
        if capture is None:
            with _LOG_LOCK:
                capture = _ACTIVE[-1] if _ACTIVE else None
        if capture is None:
            return True
        capture.add(record)
        return False


_ROUTER = _LogRouter()
logging.getLogger("tifffile").addFilter(_ROUTER)  # once: modules are imported once
