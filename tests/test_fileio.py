"""inceptionlab.fileio: atomic writes and the background writer the trainer uses for its per-epoch files."""

from __future__ import annotations

import threading

import pytest

from inceptionlab.fileio import BackgroundWrites, atomic_write_text


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    from inceptionlab.fileio import atomic_write_with

    target = tmp_path / "checkpoint.pt"
    atomic_write_text(target, "good")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(target, broken)
    assert target.read_text() == "good" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("enabled", [True, False])
def test_background_writes_run_in_order_and_are_done_when_the_block_ends(tmp_path, enabled):
    done, threads = [], set()

    def write(i):
        atomic_write_text(tmp_path / "log.txt", "".join(f"{j}\n" for j in [*done, i]))
        done.append(i)
        threads.add(threading.current_thread().name)

    with BackgroundWrites(enabled=enabled) as writes:
        for i in range(20):
            writes.submit(write, i)
    assert done == list(range(20))
    assert (tmp_path / "log.txt").read_text().split() == [str(i) for i in range(20)]
    assert threads == ({"inceptionlab-writes"} if enabled else {threading.current_thread().name})


def test_a_failed_background_write_is_raised_and_nothing_after_it_is_written(tmp_path):
    done = []

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWrites() as writes:
            writes.submit(done.append, 1)
            writes.submit(fail)
            writes.submit(done.append, 3)  # a later file of the same run: must not land without the failed one
    assert done == [1]


def test_an_error_in_the_block_wins_but_the_writes_before_it_finish(tmp_path):
    done = []
    with pytest.raises(KeyError):
        with BackgroundWrites() as writes:
            writes.submit(done.append, "checkpoint")
            raise KeyError("diverged")
    assert done == ["checkpoint"]
