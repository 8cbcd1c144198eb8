"""Atomic writes and overwrite refusal for every file or folder napari-mran writes.

Rules (docs/reliability.md rows 14, 15, 17, 22):

- Output is built under a hidden temporary sibling name
  ``.<name>.partial-<pid>-<random>`` in the destination folder and moved onto the
  final name only when complete (``os.link``/``os.replace`` for files, ``os.rename``
  for folders).  A SIGKILL at any point leaves the final name absent or complete;
  at worst a hidden ``.partial-`` sibling remains.
- Nothing that exists is overwritten unless the caller passed ``overwrite=True``
  (:class:`~napari_mran.errors.OutputExistsError`).  Existence is checked before any
  work (fail early) and again at the moment of publishing (another process may have
  written the same name meanwhile): without ``overwrite`` the final step is a
  no-clobber ``os.link`` for files and a rename that fails on a non-empty folder.
- Folders are replaced only when a caller-supplied check says the existing folder
  is one of ours (and holds nothing else); foreign files are never deleted.
- Temporary files/folders are removed when the write fails (any exception,
  KeyboardInterrupt included); OS errors (read-only folder, full disk, missing
  folder) become :class:`~napari_mran.errors.ResultsError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from napari_mran.errors import OutputExistsError, ResultsError

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_path",
    "check_destination",
    "temp_sibling",
]

PARTIAL_TAG = "partial"


def temp_sibling(path: str | os.PathLike, tag: str = PARTIAL_TAG) -> Path:
    """Return a fresh hidden sibling name ``.<name>.<tag>-<pid>-<random>`` of *path*."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _os_error(path: Path, exc: OSError, action: str) -> ResultsError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"permission denied or read-only location ({reason})"
    return ResultsError(f"{path}: cannot {action}: {reason}")


def check_destination(path: str | os.PathLike, *, overwrite: bool, kind: str = "file") -> Path:
    """Fail early when *path* cannot be written.

    Raises OutputExistsError when *path* exists and ``overwrite`` is false,
    ResultsError when the parent folder is missing / not a folder, or when an
    existing *path* is the wrong kind of thing (a folder where a file is written or
    the reverse) -- even with ``overwrite=True``.
    """
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise ResultsError(f"{path}: cannot write: the folder {parent} does not exist")
    if not parent.is_dir():
        raise ResultsError(f"{path}: cannot write: {parent} is not a folder")
    if os.path.lexists(path):
        if not overwrite:
            raise OutputExistsError(
                f"{path}: already exists; refusing to overwrite (pass overwrite=True to replace it)"
            )
        if kind == "file" and path.is_dir():
            raise OutputExistsError(
                f"{path}: is a folder; refusing to replace a folder with a file"
            )
        if kind == "dir" and not path.is_dir():
            raise OutputExistsError(f"{path}: exists and is not a folder; refusing to replace it")
    return path


def _fsync_dir(folder: Path) -> None:
    """Best effort: persist a rename in *folder* (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        os.unlink(path)


def _publish_file(tmp: Path, final: Path, overwrite: bool) -> None:
    if overwrite:
        if final.is_dir() and not final.is_symlink():
            raise OutputExistsError(
                f"{final}: is a folder; refusing to replace a folder with a file"
            )
        os.replace(tmp, final)
        return
    # No-clobber publish: link() fails if the name exists, even if it appeared
    # since the early check (two runs writing the same output).
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputExistsError(
            f"{final}: already exists (created while writing); refusing to overwrite"
        ) from None
    except OSError:
        # File systems without hard links (FAT, some network shares): check + replace.
        if os.path.lexists(final):
            raise OutputExistsError(f"{final}: already exists; refusing to overwrite") from None
        os.replace(tmp, final)
        return
    _unlink_quietly(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write; publish it onto *path* on success.

    For writers that want a file name (e.g. tifffile).  The temporary file is
    removed if the body raises.
    """
    final = check_destination(path, overwrite=overwrite, kind="file")
    tmp = temp_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise ResultsError(f"{final}: the writer produced no file")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish_file(tmp, final, overwrite)
        _fsync_dir(final.parent)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _os_error(final, exc, "write") from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    overwrite: bool = False,
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO]:
    """Open a temporary sibling of *path* for writing; publish it on success.

    ``mode`` is ``"w"`` (text, *encoding*, *newline*) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w' or 'wb', not {mode!r}")
    final = check_destination(path, overwrite=overwrite, kind="file")
    tmp = temp_sibling(final)
    fh = None
    try:
        # O_EXCL: never reuse or follow something already at the temporary name;
        # 0o666 so the final file gets the usual umask-derived permissions.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if mode == "wb":
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        _publish_file(tmp, final, overwrite)
        _fsync_dir(final.parent)
    except OSError as exc:
        if fh is not None:
            with contextlib.suppress(Exception):
                fh.close()
        _unlink_quietly(tmp)
        raise _os_error(final, exc, "write") from exc
    except BaseException:
        if fh is not None:
            with contextlib.suppress(Exception):
                fh.close()
        _unlink_quietly(tmp)
        raise


def _rmtree_ours(path: Path) -> None:
    """Remove a folder this process created (temporary or verified-replaceable)."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    replace_check: Callable[[Path], str | None] | None = None,
) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder; rename it onto *path* on success.

    With ``overwrite=True`` an existing folder at *path* is replaced only when
    ``replace_check(path)`` returns None (it returns the reason otherwise, e.g.
    "holds files that are not part of a results store"); without a check nothing is
    ever replaced.  The old folder is moved aside first and deleted only after the
    new one is in place.
    """
    final = check_destination(path, overwrite=overwrite, kind="dir")

    def _replace_reason() -> str | None:
        if replace_check is None:
            return "no check is available to prove it is safe to delete"
        return replace_check(final)

    if overwrite and os.path.lexists(final):
        reason = _replace_reason()
        if reason is not None:
            raise OutputExistsError(f"{final}: refusing to replace it: {reason}")

    tmp = temp_sibling(final)
    try:
        os.mkdir(tmp)
    except OSError as exc:
        raise _os_error(final, exc, "create a folder next to") from exc
    try:
        yield tmp
        _publish_dir(tmp, final, overwrite, _replace_reason)
        _fsync_dir(final.parent)
    except OSError as exc:
        _rmtree_ours(tmp)
        raise _os_error(final, exc, "write") from exc
    except BaseException:
        _rmtree_ours(tmp)
        raise


def _publish_dir(
    tmp: Path, final: Path, overwrite: bool, replace_reason: Callable[[], str | None]
) -> None:
    if not os.path.lexists(final):
        try:
            # Fails with ENOTEMPTY/EEXIST/ENOTDIR if something non-empty appeared.
            os.rename(tmp, final)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise OutputExistsError(
                    f"{final}: already exists (created while writing); refusing to overwrite"
                ) from None
            raise
        return
    if not overwrite:
        raise OutputExistsError(
            f"{final}: already exists (created while writing); refusing to overwrite"
        )
    reason = replace_reason()  # re-check: the folder may have changed since the start
    if reason is not None:
        raise OutputExistsError(f"{final}: refusing to replace it: {reason}")
    old = temp_sibling(final, "old")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, final)
        raise
    _rmtree_ours(old)
