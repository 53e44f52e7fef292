"""Reliability: each bad input a user can meet (an unusable --out, a full disk, a damaged checkpoint, unreadable
data, files left by a kill, a second process on the same run, a hung torchrun peer) ends in one line naming the
path and the fix, and nothing saved before is lost. Every test builds its bad input in tmp_path.

Root ignores file modes, so permission problems are simulated by raising the kernel's OSError from the os-level
call; a full disk is the kernel's own ENOSPC from /dev/full. Trainings: LeNet at 28 px, 256 images, one thread."""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inceptionlab import fileio, runs
from inceptionlab.cli import main
from inceptionlab.config import TrainConfig
from inceptionlab.data import load_fashion_mnist
from inceptionlab.engine import distributed, trainer
from inceptionlab.errors import ConfigError, DatasetError, RunDirError, WriteError
from inceptionlab.fileio import atomic_write_json, atomic_write_text, atomic_write_with
from inceptionlab.models import create_model
from inceptionlab.train import TrainingDiverged, train

LENET = dict(model="lenet", image_size=28, epochs=1, batch_size=64, limit_train=256, limit_test=128, lr=0.1,
             optimizer="momentum", num_threads=1, device="cpu")
CLI_LENET = ["--model", "lenet", "--image-size", "28", "--epochs", "1", "--limit-train", "256", "--limit-test",
             "128", "--batch-size", "64", "--num-threads", "1"]


def lenet(tmp_path: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**LENET, "out": str(tmp_path / "runs"), **changes})


@pytest.fixture(scope="module")
def finished_run(fmnist, tmp_path_factory) -> Path:
    """A finished one-epoch LeNet run, trained under umask 022; tests copy it before resuming or damaging it."""
    old = os.umask(0o022)
    try:
        return train(lenet(tmp_path_factory.mktemp("finished")), data=fmnist, log=None).run_dir
    finally:
        os.umask(old)


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


@pytest.fixture
def fill_disk(monkeypatch):
    """``fill_disk(name, ...)``: from then on, writing those files fails with the kernel's own ENOSPC (their temporary
    file is created, then points at /dev/full)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to fail writes with ENOSPC")
    real_open, full = os.open, set()

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        name = os.path.basename(path)
        if name.endswith(".tmp") and any(name.startswith(f".{target}.") for target in full):
            device = real_open("/dev/full", os.O_WRONLY)
            os.dup2(device, fd)
            os.close(device)
        return fd

    monkeypatch.setattr(os, "open", open_)
    return lambda *names: full.update(names)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def one_line_cli_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"inceptionlab {command}: error: ")
    return err


# --------------------------------------------------------------------------------------------- 1. --out


@pytest.mark.parametrize("where", ["the file", "below the file"])
def test_out_that_is_a_file_or_below_one_fails_before_training(fmnist, tmp_path, monkeypatch, where):
    (tmp_path / "notes").write_text("keep me")
    out = tmp_path / "notes" if where == "the file" else tmp_path / "notes" / "runs"
    monkeypatch.setattr(trainer, "run_epochs", lambda state: pytest.fail("training started"))
    with pytest.raises(WriteError) as info:
        train(lenet(tmp_path, out=str(out)), data=fmnist, log=None)
    message = str(info.value)
    assert f"--out {out}: {tmp_path / 'notes'} is a file, not a directory" in message and "\n" not in message
    assert (tmp_path / "notes").read_text() == "keep me"


def test_out_that_is_a_file_is_one_line_from_the_cli(tmp_path, capsys):
    (tmp_path / "runs").write_text("")
    assert main(["train", *CLI_LENET, "--out", str(tmp_path / "runs")]) == 1
    assert "is a file, not a directory; pass a directory with --out" in one_line_cli_error(capsys, "train")


def test_a_missing_out_is_made_with_its_parents_and_the_run_is_named_by_its_start(tmp_path):
    out = tmp_path / "a" / "b" / "runs"
    run_dir = runs.create_run_dir(out, "lenet")
    assert run_dir.parent == out and run_dir.is_dir() and run_dir.name.endswith("-lenet")
    # runs/<YYYYmmdd-HHMMSS>-<model>/: the local time the run started, to the second
    started = datetime.datetime.strptime(run_dir.name.removesuffix("-lenet"), "%Y%m%d-%H%M%S")
    assert abs((datetime.datetime.now() - started).total_seconds()) < 60


def test_a_root_where_every_name_is_taken_is_refused_by_name(tmp_path, fail_path):
    root = tmp_path / "runs"
    fail_path("mkdir", lambda p: p.parent == root, FileExistsError(errno.EEXIST, "File exists"))
    with pytest.raises(RunDirError) as info:
        runs.create_unique_dir(root, "sweep")
    assert str(info.value) == f"could not create a new directory 'sweep' under {root}"


@pytest.mark.parametrize(("code", "reason", "fix"), [
    (errno.EROFS, "Read-only file system", "pass another --out"),
    (errno.EACCES, "Permission denied", "make it writable for you or pass another --out"),
])
def test_out_on_a_read_only_or_unwritable_file_system(tmp_path, fail_path, code, reason, fix):
    out = tmp_path / "shared"
    out.mkdir()
    fail_path("mkdir", lambda p: p.parent == out, OSError(code, reason))
    with pytest.raises(WriteError) as info:
        runs.create_run_dir(out, "lenet")
    assert str(info.value) == f"--out {out}: cannot create a directory there ({reason}); {fix}"


REAL_FILE_SYSTEMS = textwrap.dedent(
    """
    import json, os, subprocess, sys
    import torch
    from inceptionlab import fileio, runs
    from inceptionlab.errors import WriteError

    read_only, small = sys.argv[1:3]
    for options, where in (("ro", read_only), ("size=256k", small)):
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", where]).returncode:
            print(json.dumps({"skip": "mount -t tmpfs is not permitted"}))
            sys.exit(0)
    result = {}
    try:
        runs.create_run_dir(os.path.join(read_only, "runs"), "lenet")
    except WriteError as exc:
        result["read_only"] = str(exc)
    runs.save_checkpoint(small, {"epoch": 1})
    try:
        runs.save_checkpoint(small, {"epoch": 2, "w": torch.zeros(1_000_000)})  # 4 MB into 256 kB
    except WriteError as exc:
        result["full"] = str(exc)
    result["kept"] = torch.load(os.path.join(small, "checkpoint.pt"), weights_only=True)["epoch"]
    result["files"] = sorted(os.listdir(small))
    print(json.dumps(result))
    """
)


def test_a_real_read_only_and_a_real_full_file_system(tmp_path):
    """The same errors from real tmpfs mounts, in a private mount namespace that ends with the process."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root or CAP_SYS_ADMIN) to mount a read-only and a tiny tmpfs")
    (tmp_path / "ro").mkdir()
    (tmp_path / "small").mkdir()
    res = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", REAL_FILE_SYSTEMS,
                          str(tmp_path / "ro"), str(tmp_path / "small")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["read_only"] == (f"--out {tmp_path / 'ro' / 'runs'}: cannot create a directory there (Read-only "
                                   "file system); pass another --out")
    assert result["full"].startswith(f"could not write {tmp_path / 'small' / 'checkpoint.pt'} (No space left")
    assert result["kept"] == 1 and result["files"] == ["checkpoint.pt"]


# --------------------------------------------------------------------------------------------- 2. full disk


WRITERS = {
    "metrics": lambda path, version: atomic_write_text(path, f"{version}\n" * 3000),
    "summary": lambda path, version: atomic_write_json(path, {"version": version, "pad": "x" * 20_000}),
    "checkpoint": lambda path, version: runs.save_checkpoint(path.parent, {"v": version, "w": torch.zeros(100_000)}),
    "onnx": lambda path, version: atomic_write_with(path, lambda f: f.write(version.encode() * 50_000)),
}
NAMES = {"metrics": "metrics.jsonl", "summary": "summary.json", "checkpoint": "checkpoint.pt", "onnx": "model.onnx"}


@pytest.mark.parametrize("kind", WRITERS)
def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(tmp_path, fill_disk, kind):
    """torch.save turns the ENOSPC into a RuntimeError ("unexpected pos"): the file itself remembers the error."""
    path = tmp_path / NAMES[kind]
    WRITERS[kind](path, "old")
    before = path.read_bytes()
    fill_disk(path.name)
    with pytest.raises(WriteError) as info:
        WRITERS[kind](path, "new")
    assert str(info.value) == (f"could not write {path} (No space left on device); the disk is full: free some space "
                               "on it or write to another directory")
    assert path.read_bytes() == before and temp_files(tmp_path) == []


def test_a_full_disk_during_training_is_the_same_one_line_error_from_the_cli(run_copy, fill_disk, capsys):
    """The checkpoint is written on the background thread; its failure reaches the caller unchanged."""
    before = (run_copy / runs.CHECKPOINT).read_bytes()
    fill_disk(runs.CHECKPOINT)
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--num-threads", "1"]) == 1
    err = one_line_cli_error(capsys, "train")
    assert f"could not write {run_copy / runs.CHECKPOINT} (No space left on device); the disk is full" in err
    assert (run_copy / runs.CHECKPOINT).read_bytes() == before and temp_files(run_copy) == []
    assert [r["epoch"] for r in runs.read_metrics(run_copy)] == [1]  # nothing after the failed write
    runs.lock_run_dir(run_copy).release()  # and the run directory is free again


# --------------------------------------------------------------------------------------------- 3. checkpoints


def _good_checkpoint(finished_run: Path) -> dict:
    return torch.load(finished_run / runs.CHECKPOINT, weights_only=True)


DAMAGES = {
    "a list": (lambda c: [c], "it holds a list, not a dict"),
    "no model": (lambda c: {k: v for k, v in c.items() if k != "model"}, "it has no 'model'"),
    "epoch as text": (lambda c: {**c, "epoch": "1"}, "its 'epoch' is a str, not a int"),
    "model as a list": (lambda c: {**c, "model": list(c["model"].values())}, "its 'model' is a list, not a dict"),
    "model of numbers": (lambda c: {**c, "model": {k: 0.0 for k in c["model"]}},
                         "its 'model' is not a state dict of tensors"),
    "optimizer without groups": (lambda c: {**c, "optimizer": {"state": {}}},
                                 "its 'optimizer' is not an optimizer state dict"),
    "epoch 99, one row": (lambda c: {**c, "epoch": 99}, "it claims 99 finished epochs but holds 1 metrics rows"),
    "rows not dicts": (lambda c: {**c, "metrics": [[0.5]]}, "its metrics rows are not one per epoch, in order"),
    "scaler as a list": (lambda c: {**c, "scaler": []}, "its 'scaler' is a list"),
    "elapsed_s as text": (lambda c: {**c, "elapsed_s": "12.5"}, "its 'elapsed_s' is a str"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_checkpoint_with_the_wrong_structure_is_refused_by_name(finished_run, tmp_path, damage):
    change, problem = DAMAGES[damage]
    torch.save(change(_good_checkpoint(finished_run)), tmp_path / runs.CHECKPOINT)
    with pytest.raises(RunDirError) as info:
        runs.load_checkpoint(tmp_path)
    assert str(info.value) == (f"{tmp_path / runs.CHECKPOINT} is not a usable checkpoint: {problem}; the checkpoint "
                               "is damaged, start a new run")


def test_resume_refuses_a_checkpoint_of_another_model(fmnist, finished_run, run_copy):
    saved = _good_checkpoint(finished_run)
    torch.save({**saved, "model": create_model("nin", num_classes=10).state_dict()}, run_copy / runs.CHECKPOINT)
    with pytest.raises(RunDirError) as info:
        train(resume=run_copy, data=fmnist, log=None)
    assert str(info.value) == (f"{run_copy / runs.CHECKPOINT}: the checkpoint does not match this model (lenet); "
                               "start a new run")


def test_resume_refuses_a_checkpoint_with_more_epochs_than_the_run(fmnist, finished_run, run_copy):
    """Three consistent epochs in a run configured for one: today it is reported completed."""
    saved = _good_checkpoint(finished_run)
    rows = [{**saved["metrics"][0], "epoch": e} for e in (1, 2, 3)]
    torch.save({**saved, "epoch": 3, "metrics": rows}, run_copy / runs.CHECKPOINT)
    with pytest.raises(RunDirError, match=r"holds 3 epochs but the run asks for 1; resume with --epochs 3 or more"):
        train(resume=run_copy, data=fmnist, log=None)


CONFIG_DAMAGES = {  # a hand-edited config.json under --resume: (edit, what the message says)
    "image size too large": ({"image_size": 100000}, "image_size 100000 is above the largest supported, 512"),
    "epochs as text": ({"epochs": "2"}, "epochs must be a positive whole number, got '2'"),
    "unknown key": ({"colour": "red"}, "unknown config keys: colour"),
    "model null": ({"model": None}, "model must be a model name, got null"),
    "seed as text": ({"seed": "0"}, "seed must be a whole number >= 0, got str '0'"),
    "val_split too large": ({"val_split": 60000}, "val_split 60,000 leaves no training images"),
}


@pytest.mark.parametrize("given", [[], ["--epochs", "2"]], ids=["alone", "with --epochs"])
@pytest.mark.parametrize("damage", CONFIG_DAMAGES)
def test_a_damaged_config_under_resume_names_the_file_and_advises_what_resume_allows(run_copy, capsys, damage,
                                                                                      given):
    """It used to say "image_size ...: pass --image-size 512 or less", which --resume refuses, without naming the
    file; with options given it was an AttributeError or a traceback for some values."""
    edit, problem = CONFIG_DAMAGES[damage]
    path = run_copy / runs.CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
    assert main(["train", "--resume", str(run_copy), *given]) == 1
    err = one_line_cli_error(capsys, "train")
    assert str(path) in err and problem in err, err
    assert f"correct the value in {path}, or restore the run directory's original files" in err, err
    assert "--image-size" not in err and "--val-split" not in err, err
    assert {p.name: p.read_bytes() for p in run_copy.iterdir()} == before


@pytest.mark.parametrize("kind", ["fifo", "/dev/null", "directory"])
def test_a_config_json_that_is_not_a_regular_file_is_named_as_such(run_copy, capsys, kind):
    """A FIFO would block the read and /dev/null read as empty; both used to be reported as missing."""
    path = run_copy / runs.CONFIG
    path.unlink()
    {"fifo": lambda: os.mkfifo(path), "/dev/null": lambda: path.symlink_to("/dev/null"),
     "directory": path.mkdir}[kind]()
    what = {"fifo": "a FIFO", "/dev/null": "a character device", "directory": "a directory"}[kind]
    assert stat.S_ISFIFO(os.stat(path).st_mode) == (kind == "fifo")
    assert main(["train", "--resume", str(run_copy)]) == 1
    err = one_line_cli_error(capsys, "train")
    assert err.strip().endswith(f"error: {path} is not a regular file but {what}; the run directory is damaged: "
                                "restore the run directory's original files or retrain the run"), err


def test_a_trainer_refused_by_the_lock_says_nothing_before_its_refusal(fmnist, run_copy, capsys):
    """It used to print "continuing ... after epoch 1" first, as if it were going to train."""
    holder = runs.lock_run_dir(run_copy)
    lines = []
    try:
        with pytest.raises(RunDirError, match="is in use"):
            train(resume=run_copy, data=fmnist, log=lines.append)
        assert main(["train", "--resume", str(run_copy), "--num-threads", "1"]) == 1
    finally:
        holder.release()
    assert lines == []
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "is in use" in captured.err, captured
    lines.clear()
    train(resume=run_copy, data=fmnist, log=lines.append)  # the control: unlocked, it says so first
    assert lines[0] == f"continuing {run_copy} after epoch 1"


# The smallest structure load_checkpoint accepts: no epoch finished, one tensor, an empty optimizer state dict.
EMPTY_CHECKPOINT = {"epoch": 0, "model": {"w": torch.arange(3.0)}, "optimizer": {"state": {}, "param_groups": []},
                    "metrics": []}


class _RunsCode:
    """Unpickling this calls Path.touch(marker): a checkpoint that runs code when loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_missing_checkpoint_says_no_epoch_finished(tmp_path):
    with pytest.raises(RunDirError) as info:
        runs.load_checkpoint(tmp_path)
    assert str(info.value) == f"{tmp_path} has no checkpoint.pt: no epoch finished, so there is nothing to resume"


def test_a_checkpoint_loads_onto_the_device_asked_for(tmp_path):
    torch.save(EMPTY_CHECKPOINT, tmp_path / "checkpoint.pt")
    assert runs.load_checkpoint(tmp_path)["model"]["w"].device.type == "cpu"  # the default
    # torch.load's map_location: "meta" stands in for a GPU on this CPU-only test machine
    assert runs.load_checkpoint(tmp_path, map_location="meta")["model"]["w"].device.type == "meta"


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({**EMPTY_CHECKPOINT, "model": {"w": _RunsCode(marker)}}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunDirError) as info:
        runs.load_checkpoint(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'checkpoint.pt'} could not be loaded (a weights-only load refuses it: ")
    assert message.endswith("); the checkpoint is damaged, start a new run") and "GLOBAL" in message
    # torch's advice (weights_only=False, or allow-listing the global) would run the file's code: not passed on
    assert "\n" not in message and "weights_only" not in message and "safe_globals" not in message
    assert not marker.exists()


UNLOADABLE = {  # how a checkpoint.pt can fail torch.load, and the reason the one-line error gives
    "empty": (lambda good: b"", "the file is empty"),
    "cut in half": (lambda good: good[: len(good) // 2],
                    "PytorchStreamReader failed reading zip archive: failed finding central directory"),
    "not a checkpoint": (lambda good: b"GIF89a" + bytes(200),
                         r"a weights-only load refuses it: Unsupported operand \d+"),
}


@pytest.mark.parametrize("damage", UNLOADABLE)
def test_an_unloadable_checkpoint_is_one_line_without_torch_advice(finished_run, tmp_path, damage):
    """torch.load's own messages span lines and advise weights_only=False (running the file's code): neither passes."""
    change, reason = UNLOADABLE[damage]
    (tmp_path / runs.CHECKPOINT).write_bytes(change((finished_run / runs.CHECKPOINT).read_bytes()))
    with pytest.raises(RunDirError) as info:
        runs.load_checkpoint(tmp_path)
    expected = (f"{re.escape(str(tmp_path / runs.CHECKPOINT))} could not be loaded \\({reason}\\); "
                "the checkpoint is damaged, start a new run")
    assert re.fullmatch(expected, str(info.value)), str(info.value)  # one line: torch's advice is not passed on


# --------------------------------------------------------------------------------------------- 4. data


def _write_small_dataset(directory: Path) -> Path:
    directory.mkdir()
    for stem, shape in (("train-images-idx3-ubyte", (4, 28, 28)), ("train-labels-idx1-ubyte", (4,)),
                        ("t10k-images-idx3-ubyte", (2, 28, 28)), ("t10k-labels-idx1-ubyte", (2,))):
        header = (0x800 + len(shape)).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
        (directory / stem).write_bytes(header + np.zeros(shape, np.uint8).tobytes())
    return directory


def test_an_unreadable_dataset_file_says_so_and_how_to_fix_it(isolated_data_env, tmp_path, fail_path):
    directory = _write_small_dataset(tmp_path / "fmnist")
    locked = directory / "train-labels-idx1-ubyte"
    fail_path("open", lambda p: p == locked, PermissionError(errno.EACCES, "Permission denied", str(locked)))
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist(directory, verify=False, download=False)
    assert str(info.value) == (f"{locked}: permission denied; make it readable for you (its owner can run `chmod -R "
                               f"a+rX {locked}`) or pass --data-dir with a readable copy.")


def test_an_unreadable_dataset_directory_says_so_and_how_to_fix_it(isolated_data_env, tmp_path, fail_path):
    """A directory without search permission: stat of anything inside it is EACCES."""
    directory = _write_small_dataset(tmp_path / "fmnist")
    fail_path("stat", lambda p: p.parent == directory, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(DatasetError, match=rf"^{directory}: permission denied; make it readable for you"):
        load_fashion_mnist(directory, verify=False, download=False)


# --------------------------------------------------------------------------------------------- 5. leftovers


OURS = [".checkpoint.pt.k2j4_x9a.tmp", ".model.safetensors.0f3a9bc1.tmp", ".confusion.png.abcdefgh.tmp"]
NOT_OURS = [".model.onnx.0f3a9bc1.tmp", "notes.tmp", ".checkpoint.pt.tmp"]


def test_resume_removes_what_killed_writes_left_and_nothing_else(fmnist, run_copy):
    for name in OURS + NOT_OURS:
        (run_copy / name).write_bytes(b"x" * 1000)
    lines = []
    train(resume=run_copy, data=fmnist, log=lines.append)
    assert temp_files(run_copy) == sorted(NOT_OURS)
    assert f"{run_copy}: removed 3 temporary file(s) of interrupted writes" in lines


def test_a_locked_run_keeps_its_temporary_files_and_refuses_a_second_trainer(fmnist, run_copy):
    """The holder may be writing them right now. flock belongs to an open file, so this process conflicts with
    itself exactly as a second process would."""
    (run_copy / OURS[0]).write_bytes(b"a live write")
    config_before = (run_copy / runs.CONFIG).read_bytes()
    holder = runs.lock_run_dir(run_copy)
    try:
        with pytest.raises(RunDirError) as info:
            train(resume=run_copy, data=fmnist, log=None)
    finally:
        holder.release()
    assert str(info.value) == (f"{run_copy} is in use: pid {os.getpid()} on {socket.gethostname()} is training in "
                               "it; wait for it to end (or stop it), then resume, or train into another directory")
    assert (run_copy / OURS[0]).exists() and (run_copy / runs.CONFIG).read_bytes() == config_before


def test_removing_leftovers_returns_what_it_removed_and_needs_the_lock(tmp_path, monkeypatch):
    for name in OURS + NOT_OURS:
        (tmp_path / name).write_bytes(b"x")
    lock = runs.lock_run_dir(tmp_path)
    try:
        assert runs.remove_interrupted_writes(lock) == sorted(tmp_path / name for name in OURS)
        assert temp_files(tmp_path) == sorted(NOT_OURS)
        # a file gone between the listing and the unlink (another cleaner) is skipped, not an error
        monkeypatch.setattr(fileio, "leftover_temp_files", lambda directory, names: [tmp_path / OURS[0]])
        assert runs.remove_interrupted_writes(lock) == []
    finally:
        lock.release()
    with pytest.raises(RunDirError) as info:
        runs.remove_interrupted_writes(lock)
    assert str(info.value) == f"{tmp_path} is not locked by this process: its temporary files may be live writes"


# --------------------------------------------------------------------------------------------- 6. file modes


def test_every_file_of_a_run_follows_the_umask(finished_run):
    """Trained under umask 022: 0644 like any program's output (mkstemp made them 0600)."""
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in finished_run.iterdir()}
    assert set(runs.RUN_FILES) <= set(modes)
    assert modes == dict.fromkeys(modes, 0o644)


# --------------------------------------------------------------------------------------------- 7. the lock


HOLDER = "import sys, time; from inceptionlab import runs; runs.lock_run_dir(sys.argv[1]); print('locked', " \
         "flush=True); time.sleep(300)"


def test_another_process_holding_the_run_is_named_and_its_lock_dies_with_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        with pytest.raises(RunDirError, match=rf"is in use: pid {proc.pid} on {socket.gethostname()} is training"):
            runs.lock_run_dir(tmp_path)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock with the process
        proc.wait(timeout=30)
    runs.lock_run_dir(tmp_path).release()


def test_the_lock_makes_a_missing_run_directory_and_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        runs.lock_run_dir(tmp_path / "a" / "b" / "run").release()  # --run-dir below directories not made yet
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b" / "run" / runs.LOCK).stat().st_mode) == 0o644  # 0o666 & ~0o022


def test_a_run_directory_below_a_file_cannot_be_locked_and_says_why(tmp_path):
    (tmp_path / "notes").write_text("keep me")
    with pytest.raises(WriteError) as info:
        runs.lock_run_dir(tmp_path / "notes" / "run")
    assert str(info.value) == (f"could not write {tmp_path / 'notes' / 'run' / runs.LOCK} (Not a directory); "
                               f"{tmp_path / 'notes'} is a file, not a directory: write to another directory")


def test_a_holder_that_wrote_no_pid_line_or_a_garbled_one_is_still_named(tmp_path):
    holder = runs.lock_run_dir(tmp_path)
    rest = "is training in it; wait for it to end (or stop it), then resume, or train into another directory"
    try:
        os.truncate(tmp_path / runs.LOCK, 0)  # the moment between the holder's flock and its pid line
        with pytest.raises(RunDirError) as info:
            runs.lock_run_dir(tmp_path)
        assert str(info.value) == f"{tmp_path} is in use: another process {rest}"
        (tmp_path / runs.LOCK).write_bytes(b"pid 7 on h\xffst\n")  # not UTF-8
        with pytest.raises(RunDirError) as info:
            runs.lock_run_dir(tmp_path)
        assert str(info.value) == f"{tmp_path} is in use: pid 7 on h\ufffdst {rest}"
    finally:
        holder.release()


def test_a_file_system_without_locks_is_named_and_a_full_one_does_not_stop_the_lock(tmp_path, monkeypatch):
    import fcntl

    real_flock, real_pwrite = fcntl.flock, os.pwrite

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # what some network file systems answer
    with pytest.raises(RunDirError) as info:
        runs.lock_run_dir(tmp_path)
    assert str(info.value) == (f"could not lock {tmp_path / runs.LOCK} (No locks available); train in a directory "
                               "on a local disk")
    monkeypatch.setattr(fcntl, "flock", real_flock)

    def disk_full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", disk_full)  # the pid line is for messages only
    lock = runs.lock_run_dir(tmp_path)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert lock.held
    lock.release()


def _interrupt(state, epoch, stop, writes):
    state.stop_signal = signal.SIGTERM
    return None


@pytest.mark.parametrize("ending", ["completed", "interrupted", "diverged", "full disk", "config not written"])
def test_the_lock_is_released_on_every_exit(fmnist, run_copy, fill_disk, monkeypatch, ending):
    config = TrainConfig.from_dict(runs.read_config(run_copy)).replace(epochs=2)
    if ending == "interrupted":
        monkeypatch.setattr(trainer, "train_one_epoch", _interrupt)
    elif ending == "diverged":
        config = config.replace(lr=1e38, schedule="constant")
    elif ending == "full disk":
        fill_disk(runs.CHECKPOINT)
    elif ending == "config not written":
        fill_disk(runs.CONFIG)  # inside open_run_dir, after the lock was taken
    expected = {"completed": None, "interrupted": None, "diverged": TrainingDiverged}.get(ending, WriteError)
    if expected is None:
        assert train(config, resume=run_copy, data=fmnist, log=None).status == ending
    else:
        with pytest.raises(expected):
            train(config, resume=run_copy, data=fmnist, log=None)
    runs.lock_run_dir(run_copy).release()


def test_only_rank_0_locks_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "broadcast_path", lambda path, is_main: str(tmp_path))
    rank1 = SimpleNamespace(is_main=False, run_dir=None, lock=None, dist=distributed.Distributed(1, 2, 1))
    trainer.claim_run_dir(rank1)
    trainer.open_run_dir(rank1)
    assert rank1.lock is None and rank1.run_dir == tmp_path and not (tmp_path / runs.LOCK).exists()


# --------------------------------------------------------------------------------------------- 8. torchrun


@pytest.fixture
def captured_init(monkeypatch):
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize(("value", "seconds"), [(None, 600.0), ("30", 30.0), (" 2.5 ", 2.5)])
def test_the_process_group_gets_a_timeout(captured_init, monkeypatch, value, seconds):
    """A stopped peer then fails the others' next collective after that long instead of leaving them waiting."""
    if value is None:
        monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    assert distributed.init_process_group(torch.device("cpu"))
    assert captured_init == [{"backend": "gloo", "timeout": datetime.timedelta(seconds=seconds)}]


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_a_bad_timeout_is_refused_before_joining(captured_init, monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=rf"^INCEPTIONLAB_DIST_TIMEOUT_SECONDS='{value}' is not a positive number"):
        distributed.init_process_group(torch.device("cpu"))
    assert captured_init == []


# --------------------------------------------------------------------------------------------- 9. symbolic links


TEMP_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp")


def plant_links_at_temporary_names(monkeypatch, outside: Path, targets: dict[Path, bytes]) -> list[str]:
    """From now on, the first temporary name that a write of each file creates is made a symbolic link to a new file
    outside just before the kernel's open, as someone racing the write would. Returns the files whose writes met one;
    ``targets`` gets each link's target and its content."""
    real_open, met = os.open, []

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        name = TEMP_NAME.fullmatch(os.path.basename(path))
        if name and flags & os.O_CREAT and name[1] not in met:
            met.append(name[1])
            target = outside / f"temporary-{name[1]}"
            target.write_bytes(f"not {name[1]}'s to write\n".encode())
            targets[target] = target.read_bytes()
            os.symlink(target, path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", open_)
    return met


def test_a_run_writes_through_no_symbolic_link_and_a_symlinked_run_directory_still_trains(fmnist, run_copy, tmp_path,
                                                                                          monkeypatch):
    """A run directory from someone else's archive: each of its files is a link to a file outside (resume reads
    them through the links), and each temporary name is a link when the write creates it. Resumed through a linked
    run directory, the run replaces its links by files and leaves every target byte for byte."""
    outside, targets = tmp_path / "outside", {}
    outside.mkdir()
    for name in runs.RUN_FILES:
        shutil.move(run_copy / name, outside / name)
        (run_copy / name).symlink_to(outside / name)
        targets[outside / name] = (outside / name).read_bytes()
    linked_run = tmp_path / "linked-run"
    linked_run.symlink_to(run_copy, target_is_directory=True)  # legitimate: the run directory itself is a link
    config = TrainConfig.from_dict(runs.read_config(linked_run)).replace(epochs=2)
    met = plant_links_at_temporary_names(monkeypatch, outside, targets)
    result = train(config, resume=linked_run, data=fmnist, log=None)
    monkeypatch.undo()
    assert result.status == "completed" and [r["epoch"] for r in runs.read_metrics(run_copy)] == [1, 2]
    assert sorted(met) == sorted(runs.RUN_FILES)  # every file's write met a link at its temporary name
    assert {target: target.read_bytes() for target in targets} == targets
    assert not any((run_copy / name).is_symlink() for name in runs.RUN_FILES)


@pytest.mark.parametrize("kind", ["a link to a file", "a dangling link", "a named pipe"])
def test_a_lock_that_is_a_link_or_not_a_file_is_refused_and_nothing_is_written(fmnist, run_copy, tmp_path, kind):
    """`ln -s /some/file RUN/.lock` once made the holder's pid line overwrite /some/file; a dangling link would have
    created its target."""
    lock, victim = run_copy / runs.LOCK, tmp_path / "victim"
    lock.unlink()
    if kind == "a named pipe":
        os.mkfifo(lock)
    else:
        if kind == "a link to a file":
            victim.write_bytes(b"precious\n")
        lock.symlink_to(victim)
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file() and not p.is_symlink()}
    with pytest.raises(RunDirError) as info:
        train(TrainConfig.from_dict(runs.read_config(run_copy)).replace(epochs=2), resume=run_copy, data=fmnist,
              log=None)
    what = ("is not a regular file, and inceptionlab writes its lock only into one" if kind == "a named pipe" else
            "is a symbolic link, and inceptionlab never writes through one")
    assert str(info.value) == f"{lock} {what}; delete it (`rm {lock}`) and train again"
    assert (victim.read_bytes() == b"precious\n") if kind == "a link to a file" else not victim.exists()
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file() and not p.is_symlink()} == before


def test_a_symlinked_lock_is_one_line_from_the_cli(run_copy, tmp_path, capsys):
    (tmp_path / "victim").write_bytes(b"precious\n")
    (run_copy / runs.LOCK).unlink()
    (run_copy / runs.LOCK).symlink_to(tmp_path / "victim")
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--num-threads", "1"]) == 1
    err = one_line_cli_error(capsys, "train")
    assert f"{run_copy / runs.LOCK} is a symbolic link, and inceptionlab never writes through one" in err
    assert (tmp_path / "victim").read_bytes() == b"precious\n"


def test_a_hard_linked_lock_still_locks_but_its_other_name_keeps_its_content(tmp_path):
    """A hard link is the same file under two names: the pid line would land in the other one."""
    (tmp_path / "run").mkdir()
    (tmp_path / "victim").write_bytes(b"precious\n")
    os.link(tmp_path / "victim", tmp_path / "run" / runs.LOCK)
    lock = runs.lock_run_dir(tmp_path / "run")
    try:
        with pytest.raises(RunDirError, match=r"is in use: .* is training in it"):
            runs.lock_run_dir(tmp_path / "run")
    finally:
        lock.release()
    assert (tmp_path / "victim").read_bytes() == b"precious\n"


# --------------------------------------------------------------------------------------------- 10. metrics.jsonl


def test_read_metrics_skips_a_last_line_cut_short_by_a_kill(tmp_path):
    rows = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.75}]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (tmp_path / runs.METRICS_JSONL).write_text(text + '{"epoch": 3, "test_a')
    assert runs.read_metrics(tmp_path) == rows
    (tmp_path / runs.METRICS_JSONL).write_bytes(text.encode() + b'{"epoch": 3, "name": "\xc3')  # cut inside a char
    assert runs.read_metrics(tmp_path) == rows
    (tmp_path / runs.METRICS_JSONL).write_text(text + "\n")  # a blank line is no row
    assert runs.read_metrics(tmp_path) == rows


@pytest.mark.parametrize(("content", "line", "reason"), [
    ('{"epoch": 1}\n{"epoch": 2, "test_a\n{"epoch": 3}\n', 2, "Unterminated string starting at"),
    ('{"epoch": 1}\n{"epoch": 2, "test_a\n', 2, "Unterminated string starting at"),  # ended by a newline: not cut
    ('{"epoch": 1}\n\xc3(\n', 2, "not UTF-8 text"),  # a 2-byte character's first byte, then "("
    ('{"epoch": 1}\n[1, 2]\n', 2, None),
])
def test_a_damaged_line_of_metrics_jsonl_is_one_line_naming_the_file_and_the_line(tmp_path, content, line, reason):
    (tmp_path / runs.METRICS_JSONL).write_bytes(content.encode("latin-1"))
    with pytest.raises(RunDirError) as info:
        runs.read_metrics(tmp_path)
    problem = f"is not valid JSON ({reason}" if reason else "is not a JSON object"
    assert str(info.value).startswith(f"{tmp_path / runs.METRICS_JSONL}: line {line} {problem}")
    assert str(info.value).endswith(f"; {runs.RESTORE}") and "\n" not in str(info.value)
