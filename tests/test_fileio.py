"""inceptionlab.fileio: atomic writes and the background writer the trainer uses for its per-epoch files."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

from inceptionlab.errors import WriteError
from inceptionlab.fileio import BackgroundWrites, atomic_write_text, leftover_temp_files


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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_written_files_follow_the_umask_like_any_other_program(tmp_path, umask):
    """mkstemp made every file 0600: a teammate or a serving process running as another user could not read it."""
    from inceptionlab.fileio import atomic_write_with

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}")
        atomic_write_with(tmp_path / "model.onnx", lambda f: f.write(b"onnx"))  # the exporter's writer
        with open(tmp_path / "reference", "w") as f:  # what open() gives under the same umask
            f.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(os.stat(tmp_path / "reference").st_mode) == expected
    for name in ("summary.json", "model.onnx"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_is_a_one_line_write_error_and_keeps_the_old_file(tmp_path, monkeypatch, step):
    target = tmp_path / "metrics.jsonl"
    atomic_write_text(target, "old\n")

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, step, fail)
    with pytest.raises(WriteError) as info:
        atomic_write_text(target, "new\n")
    monkeypatch.undo()
    message = str(info.value)
    assert str(target) in message and "Input/output error" in message and "\n" not in message
    assert isinstance(info.value, OSError) and info.value.errno == errno.EIO  # `except OSError` code still works
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_file_in_the_way_of_the_parent_directory_is_a_write_error(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    with pytest.raises(WriteError, match=r"could not write .*runs/model\.onnx .*is a file"):
        atomic_write_text(tmp_path / "runs" / "model.onnx", "x")


def test_an_error_of_the_block_that_is_not_about_the_file_passes_through_unchanged(tmp_path):
    """A download streams into atomic_open: a network timeout is not a disk problem and must not read as one."""
    from inceptionlab.fileio import atomic_open

    with pytest.raises(TimeoutError) as info:
        with atomic_open(tmp_path / "train-images-idx3-ubyte.gz") as f:
            f.write(b"partial")
            raise TimeoutError("timed out")
    assert not isinstance(info.value, WriteError)
    assert os.listdir(tmp_path) == []


def test_leftover_temp_files_are_only_our_temporary_names_of_the_given_files(tmp_path):
    ours = [".checkpoint.pt.k2j4_x9a.tmp", ".checkpoint.pt.0f3a9bc1.tmp", ".confusion.png.abcdefgh.tmp"]
    others = [".checkpoint.pt.tmp", ".checkpoint.pt.toolong123.tmp", ".model.onnx.0f3a9bc1.tmp", "checkpoint.pt",
              ".checkpoint.pt.0f3a9bc1.tmp.keep", "x.checkpoint.pt.0f3a9bc1.tmp"]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    (tmp_path / ".curves.png.0f3a9bc1.tmp").mkdir()  # not a file: never ours
    found = leftover_temp_files(tmp_path, ["checkpoint.pt", "confusion.png", "curves.png"])
    assert sorted(p.name for p in found) == sorted(ours)


def test_a_symbolic_link_at_the_target_or_the_temporary_name_is_never_written_through(tmp_path, monkeypatch):
    """The rename replaces a link at the target; a link at the temporary name (O_EXCL) makes the write take another."""
    import secrets

    victims = {name: tmp_path / f"victim-{name}" for name in ("target", "temporary")}
    for victim in victims.values():
        victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").symlink_to(victims["target"])
    (run / ".summary.json.00000000.tmp").symlink_to(victims["temporary"])
    names = iter(["00000000", "11111111"])
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: next(names))
    atomic_write_text(run / "summary.json", "{}")
    assert [victim.read_text() for victim in victims.values()] == ["precious", "precious"]
    assert not (run / "summary.json").is_symlink() and (run / "summary.json").read_text() == "{}"
    assert next(names, "both names tried") == "both names tried"


def test_removing_leftovers_takes_a_killed_writes_file_and_leaves_a_live_ones(tmp_path, write_in_a_process):
    """A live write holds a flock on its temporary file until the rename; the kernel drops it with a killed one."""
    from inceptionlab.fileio import remove_leftover_temp_files

    write_in_a_process(tmp_path / "model.onnx", live=False)
    [leftover] = leftover_temp_files(tmp_path, ["model.onnx"])
    live = write_in_a_process(tmp_path / "model.onnx", live=True)
    try:
        assert len(leftover_temp_files(tmp_path, ["model.onnx"])) == 2
        assert remove_leftover_temp_files(tmp_path, ["model.onnx"]) == [leftover]
        [kept] = leftover_temp_files(tmp_path, ["model.onnx"])
        assert kept != leftover and kept.read_bytes() == b"half"
    finally:
        live.kill()
        live.wait(timeout=60)
    assert remove_leftover_temp_files(tmp_path, ["model.onnx"]) == [kept] and os.listdir(tmp_path) == []
