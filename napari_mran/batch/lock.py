"""An exclusive lock on an output folder, so that two runs never write into one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError, ResultsError
from .common import now, os_reason

__all__ = ["LOCK_NAME", "OutputLock", "prepare_out_dir"]

LOCK_NAME = ".napari-mran.lock"


class OutputLock:
    """An exclusive lock on an output folder (``<folder>/.napari-mran.lock``).

    POSIX: ``flock`` on the lock file, so a crashed (even SIGKILLed) run never leaves a
    stale lock; the file is removed on release.  Elsewhere: exclusive creation of the
    file (a stale file after a crash must then be deleted by hand; the message says so).
    Locks may not work across hosts on some network file systems.
    """

    def __init__(self, folder: str | os.PathLike, purpose: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.purpose = purpose
        self._fd: int | None = None

    def _info(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": now(), "purpose": self.purpose})

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return (f"{info.get('purpose', 'run')} pid {info.get('pid')} on "
                    f"{info.get('host')} since {info.get('started')}")
        except (OSError, ValueError, AttributeError):
            return "another process"

    def _refuse(self) -> OutputExistsError:
        return OutputExistsError(
            f"{self.folder}: this output folder is in use by another napari-mran run "
            f"({self._holder()}); wait for it to finish or choose another output folder")

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self._acquire_exclusive_create()
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ResultsError(f"{self.folder}: cannot write in the output folder: "
                                   f"{os_reason(exc)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refuse() from None
                raise ResultsError(f"{self.path}: cannot lock: {os_reason(exc)}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed by its holder meanwhile: try again
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, self._info().encode())
            except OSError as exc:
                os.close(fd)
                raise ResultsError(f"{self.path}: cannot write: {os_reason(exc)}") from None
            self._fd = fd
            return self
        raise self._refuse()

    def _acquire_exclusive_create(self) -> OutputLock:  # pragma: no cover - Windows
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            err = self._refuse()
            raise OutputExistsError(f"{err} (if no run is active, delete {self.path})") from None
        except OSError as exc:
            raise ResultsError(f"{self.folder}: cannot write in the output folder: "
                               f"{os_reason(exc)}") from None
        os.write(fd, self._info().encode())
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding the lock
        with contextlib.suppress(OSError):
            os.close(fd)  # closing releases the flock

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create *out_dir* (and parents) if needed; ResultsError if it cannot be used."""
    out = Path(out_dir).expanduser()
    if os.path.lexists(out) and not out.is_dir():
        raise ResultsError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"{out}: cannot create the output folder: {os_reason(exc)}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ResultsError(f"{out}: cannot write in the output folder: permission denied "
                           "or read-only location")
    return out.resolve()
