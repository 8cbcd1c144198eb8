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
- Stale leftovers of a killed writer (SIGKILL, power loss) are removed by the next
  write of the *same* name, and only when all of these hold (POSIX; elsewhere nothing
  is ever removed): the name is exactly ``.<name>.partial-<pid>-<8 hex>`` for that
  name; it is a plain file (file writers) or a real folder (folder writers) whose
  content the caller's ``stale_check`` recognises as its own output; the process
  ``<pid>`` is not running on this machine; and no process holds the exclusive
  ``flock`` every writer keeps on its temporary file/folder while writing (the
  kernel drops it when the writer dies, SIGKILL included; on a shared network
  folder it also protects writers on other machines).  Anything else, other
  names, ``.old-`` folders and foreign files included, is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from napari_mran.errors import OutputExistsError, ResultsError

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_path",
    "check_destination",
    "remove_stale_partials",
    "temp_sibling",
]

PARTIAL_TAG = "partial"


def temp_sibling(path: str | os.PathLike, tag: str = PARTIAL_TAG) -> Path:
    """Return a fresh hidden sibling name ``.<name>.<tag>-<pid>-<random>`` of *path*."""
    path = Path(path)
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _lock(path: Path, *, directory: bool) -> int | None:
    """Open *path* (never through a symlink) and take its exclusive ``flock`` without
    waiting; the descriptor holding it, or None when another process holds it or
    locks are not available here."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    if directory:
        flags |= getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the last descriptor releases the flock


def _pid_running(pid: int) -> bool:
    """Whether process *pid* runs on this machine (True when it cannot be told)."""
    if os.name != "posix" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_partials(
    path: str | os.PathLike,
    *,
    directory: bool,
    stale_check: Callable[[Path], str | None] | None = None,
) -> list[Path]:
    """Remove the stale ``.<name>.partial-<pid>-<hex>`` leftovers of *path*'s own name.

    The rule is the module's (see its docstring); ``stale_check(leftover)`` must
    return None for a folder to be removed (folders are never removed without it).
    Best effort: errors are ignored.  Returns what was removed.
    """
    path = Path(path)
    if os.name != "posix" or (directory and stale_check is None):
        return []
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\." + PARTIAL_TAG
                         + r"-(?P<pid>\d+)-[0-9a-f]{8}$")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or int(m["pid"]) == os.getpid() or _pid_running(int(m["pid"])):
            continue
        leftover = Path(entry.path)
        try:
            if entry.is_symlink() or (entry.is_dir(follow_symlinks=False) != directory):
                continue
            if not directory and not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        fd = _lock(leftover, directory=directory)
        if fd is None:  # a live writer holds it (or it cannot be locked): keep it
            continue
        try:
            if directory:
                if stale_check is not None and stale_check(leftover) is None:
                    shutil.rmtree(leftover)
                    removed.append(leftover)
            else:
                os.unlink(leftover)
                removed.append(leftover)
        except OSError:
            pass
        finally:
            _unlock(fd)
    return removed


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


class _Guard:
    """What a writer holds on its temporary sibling: the lock, an open file."""

    lock: int | None = None
    fh: IO[Any] | None = None


@contextlib.contextmanager
def _removed_on_error(final: Path, tmp: Path, remove: Callable[[Path], None]
                      ) -> Iterator[_Guard]:
    """Around the writing of *tmp* for *final*: on any exception close the file, remove
    *tmp* (OSError: reworded for *final*); the lock is released in every case."""
    guard = _Guard()
    try:
        yield guard
    except BaseException as exc:
        if guard.fh is not None:
            with contextlib.suppress(Exception):
                guard.fh.close()
        remove(tmp)
        if isinstance(exc, OSError):
            raise _os_error(final, exc, "write") from exc
        raise
    finally:
        _unlock(guard.lock)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path to write; publish it onto *path* on success.

    For writers that want a file name (e.g. tifffile).  The temporary file is
    removed if the body raises.
    """
    final = check_destination(path, overwrite=overwrite, kind="file")
    remove_stale_partials(final, directory=False)
    tmp = temp_sibling(final)
    with _removed_on_error(final, tmp, _unlink_quietly) as guard:
        # create it (O_EXCL) and hold its lock while the writer fills it by name
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        guard.lock = _lock(tmp, directory=False)
        yield tmp
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise ResultsError(f"{final}: the writer produced no file")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish_file(tmp, final, overwrite)
        _fsync_dir(final.parent)


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
    remove_stale_partials(final, directory=False)
    tmp = temp_sibling(final)
    with _removed_on_error(final, tmp, _unlink_quietly) as guard:
        # O_EXCL: never reuse or follow something already at the temporary name;
        # 0o666 so the final file gets the usual umask-derived permissions.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        guard.lock = _lock(tmp, directory=False)
        fh: IO[Any]
        if mode == "wb":
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        guard.fh = fh
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        _publish_file(tmp, final, overwrite)
        _fsync_dir(final.parent)


def _rmtree_ours(path: Path) -> None:
    """Remove a folder this process created (temporary or verified-replaceable)."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    replace_check: Callable[[Path], str | None] | None = None,
    stale_check: Callable[[Path], str | None] | None = None,
) -> Iterator[Path]:
    """Yield a fresh temporary sibling folder; rename it onto *path* on success.

    With ``overwrite=True`` an existing folder at *path* is replaced only when
    ``replace_check(path)`` returns None (it returns the reason otherwise, e.g.
    "holds files that are not part of a results store"); without a check nothing is
    ever replaced.  The old folder is moved aside first and deleted only after the
    new one is in place.  ``stale_check(folder)`` returns None when a leftover
    ``.partial-`` folder of this name holds only what this writer writes: then it is
    removed if it is stale (:func:`remove_stale_partials`); without it none is.
    """
    final = check_destination(path, overwrite=overwrite, kind="dir")
    remove_stale_partials(final, directory=True, stale_check=stale_check)

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
    with _removed_on_error(final, tmp, _rmtree_ours) as guard:
        guard.lock = _lock(tmp, directory=True)  # held until published or removed
        yield tmp
        _publish_dir(tmp, final, overwrite, _replace_reason)
        _fsync_dir(final.parent)


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
