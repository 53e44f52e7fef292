"""Atomic writes: a file a user keeps is either the old complete version or the new complete version.

Every write goes to a temporary sibling ``.<name>.<random>.tmp``, is flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows). The temporary file is created with mode 0666 less the
umask, as ``open()`` creates a file, so the result is as readable as any other program's output. It is a new file
(``O_EXCL | O_NOFOLLOW``), so a symbolic link planted at its name is never written through, and the rename replaces
a link at the target's name instead of following it. A write holds a ``flock`` on its temporary file until the
rename, so :func:`remove_leftover_temp_files` tells a killed write's file from a live one. A write that
fails (disk full, read-only file system, no permission) removes its temporary file, keeps the previous file and
raises :class:`~inceptionlab.errors.WriteError`: one line naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from inceptionlab.errors import InceptionLabError, WriteError

try:
    import fcntl  # POSIX; elsewhere a temporary file carries no lock
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_FIXES = {
    errno.ENOSPC: "the disk is full: free some space on it or write to another directory",
    errno.EDQUOT: "the disk quota is used up: free some space or write to another directory",
    errno.EROFS: "the file system is read-only: write to another directory",
    errno.EACCES: "you may not write there: make the directory writable for you or write to another directory",
    errno.EPERM: "you may not write there: make the directory writable for you or write to another directory",
    errno.EISDIR: "a directory has that name: move it away or write to another directory",
}


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """The one-line :class:`WriteError` for ``exc`` raised while writing ``path``: the system's reason and the fix."""
    fix = _FIXES.get(exc.errno, "check the disk and the path, or write to another directory")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and (blocker := file_in_the_way(Path(path).parent)) is not None:
        fix = f"{blocker} is a file, not a directory: write to another directory"
    error = WriteError(f"could not write {path} ({exc.strerror or exc}); {fix}")
    error.errno, error.strerror, error.filename = exc.errno, exc.strerror, str(path)
    return error


def file_in_the_way(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists but is not a directory (mkdir's EEXIST or ENOTDIR)."""
    return next((p for p in (path, *path.parents) if os.path.lexists(p) and not os.path.isdir(p)), None)


class _TempFile(io.FileIO):
    """The temporary file: remembers the first failed write, which torch.save re-raises as a RuntimeError."""

    write_error: OSError | None = None

    def write(self, data) -> int:
        try:
            return super().write(data)
        except OSError as exc:
            self.write_error = self.write_error or exc
            raise


def _create_temp(path: Path) -> tuple[_TempFile, Path]:
    """A new empty ``.<name>.<random>.tmp`` beside ``path``, locked (see the module doc); 0666 less the umask
    (mkstemp's 0600 hid runs from teammates and from a serving process running as another user)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # a name taken, by a symbolic link too: O_EXCL never follows one
            continue
        if _try_lock(fd) is not False and os.path.lexists(tmp):
            return _TempFile(fd, "wb"), tmp
        os.close(fd)  # a cleaner took it between the open and the lock: it is gone, try another name
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _try_lock(fd: int) -> bool | None:
    """Take ``fd``'s flock without waiting: True, False if another open file holds it, None if there are no locks
    (Windows, some network file systems)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary sibling of ``path`` for writing (``mode`` "wb" or "w"); on success it replaces ``path``.

    Failing to write the file raises :class:`WriteError`; an error of the block that is not about the file (a
    network error while downloading into it) passes through unchanged. Either way ``path`` keeps its old content.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        raw, tmp = _create_temp(path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    f = io.BufferedWriter(raw) if mode == "wb" else io.TextIOWrapper(io.BufferedWriter(raw))
    in_block = True
    try:
        yield f
        in_block = False
        f.flush()
        os.fsync(raw.fileno())
        if os.name != "posix":
            f.close()  # Windows renames no open file
        os.replace(tmp, path)
        f.close()  # after the rename: the lock marks the temporary file live until it has its final name
        _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            raw.close()  # before f: closing f would flush its buffer again, onto the same full disk
        f.close()  # its raw file is closed: nothing is flushed
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = raw.write_error or (None if in_block else exc)
        if isinstance(exc, Exception) and not isinstance(exc, InceptionLabError) and isinstance(cause, OSError):
            raise write_error(path, cause) from exc
        raise


def leftover_temp_files(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """The temporary files that interrupted writes of ``names`` left in ``directory`` (a kill before the rename).

    Only the names this module makes (``.<name>.<8 random characters>.tmp``, mkstemp's or ours), nothing else."""
    pattern = re.compile(rf"\.({'|'.join(map(re.escape, names))})\.[a-z0-9_]{{8}}\.tmp")
    with os.scandir(directory) as entries:
        return sorted(Path(directory) / e.name for e in entries
                      if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False))


def remove_leftover_temp_files(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that killed writes of ``names`` left in ``directory`` and return them.

    A live write holds the lock on its temporary file, so it keeps it; a file gone meanwhile is skipped."""
    return [path for path in leftover_temp_files(directory, names) if _remove_if_abandoned(path)]


def _remove_if_abandoned(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, PermissionError):  # gone, or not ours to judge: keep it
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symbolic link meanwhile: not a temporary file of ours
            return False
        raise
    try:
        # without a lock there is no telling a live write from a killed one: keep it
        if not (stat.S_ISREG(os.fstat(fd).st_mode) and _try_lock(fd)):
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_with(path: str | os.PathLike, writer, mode: str = "wb") -> None:
    """``writer(file_object)`` writes the content; used for torch.save, PNGs and safetensors bytes."""
    f: IO
    with atomic_open(path, mode) as f:
        writer(f)


class BackgroundWrites:
    """Writes run one after another, in submission order, on one worker thread, so a training loop does not wait for
    the disk (each atomic write fsyncs a file and its directory) or for matplotlib.

    Use as a context manager: leaving the block waits for every submitted write. A write that fails is raised in the
    caller's thread, at the next :meth:`submit` or when the block ends; the writes after it are skipped (they are
    the same run's later files, which must not land without the earlier ones). If the block itself raises, that
    exception wins and a pending write error is dropped. ``enabled=False`` runs each write at once, in the caller.
    Arguments must not change after submission (pass copies). A full disk reaches the caller as the atomic write's
    one-line :class:`WriteError`, the same as a write in the caller's thread.
    """

    def __init__(self, enabled: bool = True):
        import queue
        import threading

        self._error: BaseException | None = None  # raised once, in the caller's thread
        self._failed = False  # stays set: nothing after a failed write is written
        self._queue: queue.Queue | None = queue.Queue() if enabled else None
        self._thread = threading.Thread(target=self._work, name="inceptionlab-writes", daemon=True) if enabled \
            else None

    def __enter__(self) -> BackgroundWrites:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if exc_type is None:
            self._raise_pending()
        return False

    def submit(self, fn, *args) -> None:
        self._raise_pending()
        if self._queue is None:
            if not self._failed:
                try:
                    fn(*args)
                except BaseException:
                    self._failed = True
                    raise
        else:
            self._queue.put((fn, args))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            if not self._failed:
                fn, args = job
                try:
                    fn(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._error, self._failed = exc, True

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
