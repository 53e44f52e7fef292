"""inceptionlab.fileio, what the mutation run on fileio.py (docs/testing.md) found unchecked: the content of
atomic_write_with / atomic_write_json, the fsync order that makes a rename durable, and BackgroundWrites' defaults."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

from inceptionlab.fileio import BackgroundWrites, atomic_write_json, atomic_write_with


def test_atomic_write_with_and_atomic_write_json_write_the_whole_content(tmp_path):
    payload = os.urandom(100_000)
    atomic_write_with(tmp_path / "weights.bin", lambda f: f.write(payload))
    assert hashlib.sha256((tmp_path / "weights.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()
    summary = {"status": "completed", "test_acc": 0.8125, "per_class": {"bag": [1, 2]}, "z_first": None}
    atomic_write_json(tmp_path / "summary.json", summary)
    text = (tmp_path / "summary.json").read_text()
    assert text == json.dumps(summary, indent=2) + "\n"  # indented, key order kept, one trailing newline
    assert json.loads(text) == summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "weights.bin"]  # no temporary left


def test_the_file_is_fsynced_before_the_rename_and_its_directory_after(tmp_path, monkeypatch):
    """POSIX durability: data on disk before the rename makes it visible, the directory entry on disk after."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "run" / "checkpoint.pt"
    atomic_write_with(target, lambda f: f.write(b"state"))
    monkeypatch.undo()
    file_ino, dir_ino = os.stat(target).st_ino, os.stat(target.parent).st_ino
    assert events == [("fsync", "file", file_ino), ("replace", "checkpoint.pt"), ("fsync", "dir", dir_ino)]


def test_background_writes_default_to_a_daemon_worker_thread():
    seen = []
    with BackgroundWrites() as writes:
        writes.submit(lambda: seen.append((threading.current_thread().name, threading.current_thread().daemon)))
    assert seen == [("inceptionlab-writes", True)]  # a daemon: interpreter exit does not wait for it (below)


def test_a_failed_synchronous_write_stops_the_later_ones():
    done = []

    def fail():
        raise OSError("disk full")

    with BackgroundWrites(enabled=False) as writes:
        writes.submit(done.append, 1)
        with pytest.raises(OSError, match="disk full"):
            writes.submit(fail)
        writes.submit(done.append, 3)  # a later file of the same run: must not land without the failed one
    assert done == [1]


def test_a_write_that_never_finishes_does_not_keep_the_process_alive(tmp_path):
    """The writer thread is a daemon: a process that gives up without leaving the block still exits."""
    script = textwrap.dedent(
        """
        import threading
        from inceptionlab.fileio import BackgroundWrites

        writes = BackgroundWrites().__enter__()
        writes.submit(threading.Event().wait)  # blocks forever
        print("main thread done", flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the code this process runs
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode == 0 and res.stdout == "main thread done\n", res.stderr
