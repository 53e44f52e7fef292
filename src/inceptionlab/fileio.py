"""Atomic writes: a file a user keeps is either the old complete version or the new complete version.

Every write goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed over the
target (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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
    Arguments must not change after submission (pass copies).
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
