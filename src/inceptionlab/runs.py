"""The run directory: what a training run leaves behind, and how other commands load it.

Layout of ``runs/<YYYYmmdd-HHMMSS>-<model>/`` (the contract every command relies on):

    config.json         the complete TrainConfig (enough to rerun)
    metrics.jsonl       one JSON object per epoch;  metrics.csv: the same as CSV
    curves.png          loss, train acc, test acc against epoch
    model.safetensors   final weights (state dict of the bare model; metadata: model name, image size)
    checkpoint.pt       model, optimizer, schedule, RNG states, epoch (tensors only; weights_only load)
    summary.json        final numbers;  confusion.png, per_class.json: evaluation of the final model
    .lock               locked (flock) by the process training in the directory; holds its pid and host

Loading never unpickles code: weights come from safetensors, checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import pickle
import re
import socket
import stat
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from inceptionlab.analysis import check_input_size
from inceptionlab.config import TrainConfig
from inceptionlab.errors import InceptionLabError, InputSizeError, RunDirError, WriteError
from inceptionlab.fileio import (
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    file_in_the_way,
    remove_leftover_temp_files,
    write_error,
)
from inceptionlab.models import create_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES = "curves.png"
CONFUSION = "confusion.png"
PER_CLASS = "per_class.json"
LOCK = ".lock"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in some torch messages
RUN_FILES = (CONFIG, METRICS_JSONL, METRICS_CSV, CURVES, WEIGHTS, CHECKPOINT, SUMMARY, CONFUSION, PER_CLASS)


def save_weights(path: str | os.PathLike, model: torch.nn.Module, metadata: dict[str, str]) -> None:
    """Write the model's state dict as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    payload = save(state, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write_with(path, lambda f: f.write(payload))


# The weights alone cannot tell these; every other key has a default or is checked against the weights' shapes.
REQUIRED_KEYS = ("model", "image_size")
RESTORE = "restore the run directory's original files or retrain the run"


def read_config(run_dir: str | os.PathLike) -> dict:
    """The run's config.json as a dict (unchecked values; :func:`read_run_config` checks them)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; pass the run directory that `inceptionlab train` made")
    path = run_dir / CONFIG
    if not path.is_file():
        if path.exists():  # a FIFO would block the read, a device never end it
            raise RunDirError(f"{path} is not a regular file but {_file_kind(path)}; the run directory is damaged: "
                              f"{RESTORE}")
        raise RunDirError(f"{run_dir} has no {CONFIG}: it is not a training run directory")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}); the run directory is damaged: {RESTORE}") from None
    if not isinstance(values, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(type(values), "a number")
        raise RunDirError(f"{path} holds {kind}, not a config object; the run directory is damaged: {RESTORE}")
    return values


def _file_kind(path: Path) -> str:
    """What a path that is not a regular file is, in words (it follows symlinks, as reading does)."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((what for test, what in kinds if test(mode)), "another kind of file")


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The run's config.json as a checked :class:`TrainConfig`; a damaged one is a :class:`RunDirError`."""
    values = read_config(run_dir)
    path = Path(run_dir) / CONFIG
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise RunDirError(f"{path} lacks {' and '.join(missing)}; the run directory is damaged: {RESTORE}")
    for key, kind, what in (("model", str, "a model name"), ("model_options", dict, "an object of options")):
        if key in values and not isinstance(values[key], kind):  # from_dict and validate assume these types
            raise RunDirError(f"{path}: {key} must be {what}, got {json.dumps(values[key])}; the run directory is "
                              f"damaged: correct the value in {path}, or {RESTORE}")
    try:
        return TrainConfig.from_dict(values).validate()
    except (InceptionLabError, TypeError, ValueError) as exc:
        raise damaged_config(run_dir, exc) from None


def damaged_config(run_dir: str | os.PathLike, exc: Exception) -> RunDirError:
    """The error for a saved config.json that ``exc`` refuses, without advice to pass an option that cannot change
    the run (config.option_error's ``problem``)."""
    path = Path(run_dir) / CONFIG
    problem = getattr(exc, "problem", exc)
    return RunDirError(f"{path} is not a valid run config ({problem}); the run directory is damaged: correct the "
                       f"value in {path}, or {RESTORE}")


def _model_skeleton(run_dir: Path, config: TrainConfig) -> nn.Module:
    """The run's model on the meta device (shapes, no memory), or a RunDirError if config.json cannot build it."""
    path = run_dir / CONFIG
    try:
        with torch.device("meta"):
            model = create_model(config.model, num_classes=config.num_classes, in_channels=config.in_channels,
                                 **config.model_options)
    except (TypeError, ValueError) as exc:  # a factory refusing unknown or bad model_options
        raise RunDirError(f"{path}: {config.model} cannot be built with model_options {config.model_options} "
                          f"({exc}); {RESTORE}") from None
    try:
        check_input_size(config.model, config.image_size, config.in_channels)
    except InputSizeError as exc:
        raise RunDirError(f"{path}: image_size {config.image_size} does not suit the model ({exc}); "
                          f"{RESTORE}") from None
    return model


def _check_weights_fit(weights: Path, config: TrainConfig, expected: dict[str, torch.Tensor]) -> None:
    """Refuse a model.safetensors whose metadata, tensor names or shapes do not fit the run's model.

    Reads only the file's header, so a mismatch costs no memory and load_state_dict never sees it.
    """
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunDirError(f"{weights} could not be read ({exc}); the file is damaged: {RESTORE}") from None
    for key, value in (("model", config.model), ("image_size", str(config.image_size))):
        if key in metadata and metadata[key] != value:
            raise RunDirError(f"{weights} was saved for {key} {metadata[key]}, but {weights.parent / CONFIG} "
                              f"says {value}: the two files come from different runs; {RESTORE}")
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if shapes[k] != tuple(expected[k].shape))
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                 f"{len(wrong)} of the wrong shape (e.g. {wrong[0]}: {list(shapes[wrong[0]])} in the file, "
                 f"{list(expected[wrong[0]].shape)} in the model)" if wrong else ""]
        raise RunDirError(f"{weights} does not fit the {config.model} of {weights.parent / CONFIG}: tensors "
                          f"{', '.join(p for p in parts if p)}; {RESTORE}")


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory, in eval mode, and its config.

    config.json and model.safetensors are checked against each other before anything is allocated: a damaged or
    mismatched pair is a :class:`RunDirError` naming the file, as are weights holding NaN or infinity.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RunDirError(
            f"{run_dir} has no {WEIGHTS}: the run has not finished. Finish it with "
            f"`inceptionlab train --resume {run_dir}`"
        )
    _check_weights_fit(weights, config, _model_skeleton(run_dir, config).state_dict())
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunDirError(f"{weights} could not be read ({exc}); the file is damaged: {RESTORE}") from None
    bad = [key for key, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise RunDirError(f"{weights}: {len(bad)} tensor(s) hold NaN or infinite values (e.g. {bad[0]}), so every "
                          f"prediction would be NaN; the training diverged or the file is damaged: {RESTORE}")
    model = create_model(config.model, num_classes=config.num_classes, in_channels=config.in_channels,
                         **config.model_options)
    model.load_state_dict(state)
    return model.to(device).eval(), config


def weights_sha256(run_dir: str | os.PathLike) -> str:
    """SHA-256 of the run's ``model.safetensors``: ties an exported ONNX file to the weights it came from."""
    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise RunDirError(
            f"{run_dir} has no {WEIGHTS}: the run has not finished (or this is not a run directory). "
            f"Finish it with `inceptionlab train --resume {run_dir}`"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def create_unique_dir(root: str | os.PathLike, stem: str) -> Path:
    """A new ``<root>/<stem>/``; ``<stem>-2``, ``<stem>-3``... when it exists already.

    ``mkdir`` without ``exist_ok`` is the atomic claim, so concurrent starts never share a directory. A root that
    cannot hold it (a file, below a file, read-only, not writable) is a :class:`WriteError` naming the root.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = root / (stem if n == 1 else f"{stem}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise _out_dir_error(root, exc) from exc
    raise RunDirError(f"could not create a new directory {stem!r} under {root}")


def _out_dir_error(root: Path, exc: OSError) -> WriteError:
    """What keeps ``--out`` from holding a new directory, and what to pass instead."""
    if (in_the_way := file_in_the_way(root)) is not None:
        return WriteError(f"--out {root}: {in_the_way} is a file, not a directory; pass a directory with --out")
    hint = "make it writable for you or " if exc.errno in (errno.EACCES, errno.EPERM) else ""
    return WriteError(f"--out {root}: cannot create a directory there ({exc.strerror or exc}); {hint}pass "
                      "another --out")


def create_run_dir(root: str | os.PathLike, model: str) -> Path:
    """A new ``<root>/<YYYYmmdd-HHMMSS>-<model>/`` (unique even when two runs start in the same second)."""
    return create_unique_dir(root, f"{time.strftime('%Y%m%d-%H%M%S')}-{model}")


def write_config(run_dir: str | os.PathLike, config: dict) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, config)


def write_metrics(run_dir: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl and metrics.csv whole (atomically) from the rows so far.

    Rewriting rather than appending keeps them equal to the checkpoint's rows after a crash and a resume.
    """
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(run_dir / METRICS_CSV, buf.getvalue())


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of metrics.jsonl. A last line cut short (no newline: a kill while it was appended) is skipped; any
    other line that is not a JSON object is a :class:`RunDirError` naming the file and the line."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
            if number == len(lines):  # after the last newline: a row whose writing was cut short
                break
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise RunDirError(f"{path}: line {number} is not valid JSON ({reason}); {RESTORE}") from None
        if not isinstance(row, dict):
            raise RunDirError(f"{path}: line {number} is not a JSON object; {RESTORE}")
        rows.append(row)
    return rows


def write_summary(run_dir: str | os.PathLike, summary: dict) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY, summary)


def write_per_class(run_dir: str | os.PathLike, report: dict) -> None:
    atomic_write_json(Path(run_dir) / PER_CLASS, report)


def read_summary(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {SUMMARY}")
    return json.loads(path.read_text())


def save_checkpoint(run_dir: str | os.PathLike, state: dict) -> None:
    """Write checkpoint.pt atomically: a kill at any moment leaves the previous complete checkpoint."""
    atomic_write_with(Path(run_dir) / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The last complete checkpoint, with the structure the trainer writes; ``weights_only=True`` so loading never
    runs code from the file. Whether it fits the model and the config is the trainer's to check."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CHECKPOINT}: no epoch finished, so there is nothing to resume")
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # damaged or foreign file
        raise RunDirError(f"{path} could not be loaded ({_load_failure(exc)}); the checkpoint is damaged, start a "
                          "new run") from None
    problem = _checkpoint_problem(saved)
    if problem is not None:
        raise RunDirError(f"{path} is not a usable checkpoint: {problem}; the checkpoint is damaged, start a new run")
    return saved


def _load_failure(exc: Exception) -> str:
    """torch.load's failure in one short line: its own messages span several lines, and a weights-only refusal
    advises ``weights_only=False`` or allow-listing the global, either of which would run the file's code."""
    lines = [ANSI_ESCAPE.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    if isinstance(exc, pickle.UnpicklingError):
        detail = next((line.split(". ")[0].rstrip(".") for line in lines if "nsupported" in line), "")
        return "a weights-only load refuses it" + (f": {detail}" if detail else "")
    if isinstance(exc, EOFError) and not lines:
        return "the file is empty"
    return lines[0].split(". ")[0] if lines else type(exc).__name__


def _checkpoint_problem(saved) -> str | None:
    """What is wrong with the structure of a loaded checkpoint (a hand-edited or foreign file), or None."""
    if not isinstance(saved, dict):
        return f"it holds a {type(saved).__name__}, not a dict"
    for key, kind in (("epoch", int), ("model", dict), ("optimizer", dict), ("metrics", list)):
        if key not in saved:
            return f"it has no {key!r}"
        if not isinstance(saved[key], kind) or isinstance(saved[key], bool):
            return f"its {key!r} is a {type(saved[key]).__name__}, not a {kind.__name__}"
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in saved["model"].items()):
        return "its 'model' is not a state dict of tensors"
    if not (isinstance(saved["optimizer"].get("state"), dict)
            and isinstance(saved["optimizer"].get("param_groups"), list)):
        return "its 'optimizer' is not an optimizer state dict"
    for key, kind in (("scaler", dict), ("elapsed_s", (int, float))):
        if key in saved and not isinstance(saved[key], kind):
            return f"its {key!r} is a {type(saved[key]).__name__}"
    epoch, rows = saved["epoch"], saved["metrics"]
    if epoch != len(rows):
        return f"it claims {epoch} finished epochs but holds {len(rows)} metrics rows"
    if not all(isinstance(row, dict) and row.get("epoch") == i + 1 for i, row in enumerate(rows)):
        return "its metrics rows are not one per epoch, in order"
    return None


# --------------------------------------------------------------------------------------------- the lock


class RunDirLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` while a process trains in the directory. The kernel drops it
    when the process ends, however it ends (SIGKILL too), so a dead holder never blocks a resume."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir = run_dir
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Idempotent: every exit path of a run may call it."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # the lock belongs to this descriptor alone: closing it unlocks


def lock_run_dir(run_dir: str | os.PathLike) -> RunDirLock:
    """Lock ``run_dir`` (made if missing) for this process; another live holder is a :class:`RunDirError` naming
    its pid and host. Non-blocking: a second ``--resume`` of a run in progress fails at once. A ``.lock`` that is a
    symbolic link or not a regular file is refused (:func:`_open_lock_file`)."""
    import fcntl  # POSIX

    run_dir = Path(run_dir)
    path = run_dir / LOCK
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise RunDirError(f"{run_dir} is in use: {holder} is training in it; wait for it to end (or stop it), "
                              "then resume, or train into another directory") from None
        raise RunDirError(f"could not lock {path} ({exc.strerror}); train in a directory on a local disk") from None
    if os.fstat(fd).st_nlink == 1:  # a hard link shares its content with another name: never overwrite that
        with contextlib.suppress(OSError):  # who holds it, for the message above; a full disk must not stop the run
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return RunDirLock(run_dir, fd)


def _open_lock_file(path: Path) -> int:
    """``path`` opened (made if missing) for reading and writing, never through a symbolic link, and only if it is a
    regular file: the holder's line written into a device or a link's target would destroy what is there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)  # a FIFO must not hang
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link, and inceptionlab never writes through one; delete it "
                              f"(`rm {path}`) and train again") from None
        raise write_error(path, exc) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path} is not a regular file, and inceptionlab writes its lock only into one; delete it "
                          f"(`rm {path}`) and train again")
    return fd


def remove_interrupted_writes(lock: RunDirLock) -> list[Path]:
    """Delete the temporary files that killed writes left in the locked run directory (a checkpoint's is ~48 MB).

    Only our own temporary names of the run's files; holding the lock means no live run is writing them."""
    if not lock.held:
        raise RunDirError(f"{lock.run_dir} is not locked by this process: its temporary files may be live writes")
    return remove_leftover_temp_files(lock.run_dir, RUN_FILES)
