"""The trainer: the chapter's recipe end to end, plus what a real run needs (resume, signals, DDP, AMP).

Read top to bottom: :func:`train` resolves the config and the device, :func:`setup` builds the run state (model,
data on the device, optimizer, the step, the run directory), then for each epoch :func:`train_one_epoch`,
:func:`~inceptionlab.engine.evaluate.evaluate` and :func:`save_epoch`, then :func:`finish`.

Speed: no host synchronisation per step (loss and correct counts stay device tensors, read at epoch end and every
``config.sync_every`` steps). Reproducibility: data order and augmentation depend only on (seed, epoch) and the global
RNG is reseeded from (seed, epoch) at each epoch, so a run resumed after epoch k ends exactly where an
uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inceptionlab import runs
from inceptionlab.analysis import check_input_size
from inceptionlab.argcheck import FLAG, FUNCTION, PATH, check, optional
from inceptionlab.config import DERIVED, RESUMABLE, TrainConfig, as_config
from inceptionlab.data import DeviceLoader, ImageDataset
from inceptionlab.data.dataset import DATASET
from inceptionlab.devices import resolve_device, resolve_precision
from inceptionlab.engine import budget, distributed
from inceptionlab.engine.cuda import cuda_switches, resolve_cuda_options
from inceptionlab.engine.evaluate import evaluate_in_run, one_view
from inceptionlab.engine.observers import Observer, in_notebook, make_observers, require_tensorboard
from inceptionlab.engine.optim import (
    Knots,
    build_optimizer,
    lr_at,
    schedule_knots,
    set_lr,
    total_steps,
    with_total_steps,
)
from inceptionlab.engine.recovery import (
    checkpoint_state,
    host_copy,
    recovery_due,
    restore_checkpoint,
    save_recovery_point,
    set_rng,
)
from inceptionlab.engine.results import build_summary, plot_curves_file, write_results
from inceptionlab.engine.rundata import RunData, build_data, with_data, write_data_files
from inceptionlab.engine.step import build_train_step, resolve_step_mode
from inceptionlab.engine.threads import ThreadTuner
from inceptionlab.errors import ConfigError, InceptionLabError
from inceptionlab.fileio import BackgroundWrites
from inceptionlab.inputs import load_run_dataset, prepare_model
from inceptionlab.models import create_model, init_xavier_

PLOT_EVERY_SECONDS = 15.0  # curves.png is redrawn at most this often (and at the end): a figure costs ~0.3 s


class TrainingDiverged(InceptionLabError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`train` returns. ``status``: "completed" or "interrupted" (``signal`` says which)."""

    run_dir: Path | None
    status: str
    metrics: list[dict]
    summary: dict
    model: nn.Module = field(repr=False)
    signal: int | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.signal is None else 128 + self.signal


class PhaseTimer:
    """Seconds per named phase, added up: ``with timer("data"): ...`` or ``timer.add("train", s)``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def since_start(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class RunState:
    """Everything :func:`setup` builds and the loop reads or updates."""

    config: TrainConfig
    dist: distributed.Distributed
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    step_fn: Callable
    step_mode: str
    cuda_opts: dict[str, bool]
    loader: DeviceLoader
    test_images: torch.Tensor
    test_labels: torch.Tensor
    run_dir: Path | None
    say: Callable[[str], None]
    timer: PhaseTimer
    show_bar: bool = False
    start_epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    elapsed_before: float = 0.0
    last_eval: dict | None = None
    stop_signal: int | None = None
    last_plot: float = -math.inf
    plotted: int = 0
    precision_reason: str | None = None  # why precision "auto" chose what it chose
    tuner: ThreadTuner | None = None  # CPU threads chosen by measurement when --num-threads is unset
    lock: runs.RunDirLock | None = None  # rank 0's lock on run_dir, from claim_run_dir to the end of the run
    observers: list[Observer] = field(default_factory=list)  # TensorBoard, live notebook curves
    partial: dict | None = None  # a mid-epoch recovery point to continue from (resume)
    last_recovery: float = field(default_factory=time.perf_counter)
    val_images: torch.Tensor | None = None  # the held-out training images (config.val_split), None without them
    val_labels: torch.Tensor | None = None
    last_val: dict | None = None
    source: ImageDataset | None = None  # the data as loaded (CPU): its split and skipped files go into the run dir
    total_steps: int = 0  # optimisation steps of the whole run (config.steps, or whole epochs)
    knots: Knots = field(default_factory=list)  # the schedule's decay progress (engine.optim.schedule_knots)
    budget: budget.BudgetTracker | None = None  # the time budget's plan and its revisions (config.time_budget)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def steps_in_epoch(self, epoch: int) -> int:
        """The steps of epoch ``epoch`` (0-based): all of them but in a last, partial epoch of a step count."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    @property
    def counts_steps(self) -> bool:
        """The run's length is a step count (``steps``, or a time budget's plan), so its last epoch may be partial."""
        return self.config.steps is not None or self.config.time_budget is not None

    def elapsed(self) -> float:
        return self.elapsed_before + self.timer.since_start()

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()


# --------------------------------------------------------------------------------------------- train


def train(
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    resume: str | os.PathLike | None = None,
    data: ImageDataset | None = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
    live: bool | None = None,
) -> TrainResult:
    """Train ``config`` (a TrainConfig or a mapping of its fields; None: the chapter's recipe) or resume the run
    directory ``resume``, and return a :class:`TrainResult`.

    - ``resume``: continue from the run's last complete checkpoint; ``config`` then defaults to the run's
      config.json (pass one to change e.g. ``epochs`` or ``device``).
    - ``data``: an already loaded :class:`~inceptionlab.data.ImageDataset` (any device), else the one ``config``
      names (``config.data``: a folder or CSV; unset: Fashion-MNIST from ``config.data_dir``). The run takes its
      classes, channels and statistics from it.
    - ``run_dir``: write into this directory instead of a new ``<out>/<timestamp>-<model>/``; if it already holds a
      checkpoint of this run (e.g. torchrun restarted the job), continue from it.
    - ``progress``: a tqdm bar while an epoch runs; default: when stderr is a terminal or inside a notebook.
    - ``log``: where the per-epoch lines go (``None``: silent).
    - ``live``: curves redrawn in the notebook cell as training goes; default: only inside a Jupyter notebook.

    Raises :class:`ConfigError` before any work for invalid options, :class:`TrainingDiverged` on a NaN/inf
    loss. SIGINT/SIGTERM end the run cleanly with ``status == "interrupted"``.
    """
    check(resume=(resume, optional(PATH)), data=(data, optional(DATASET)),
          run_dir=(run_dir, optional(PATH)), progress=(progress, optional(FLAG)), log=(log, optional(FUNCTION)),
          live=(live, optional(FLAG)))
    config = None if config is None else as_config(config)
    if resume is not None:
        config = config if config is not None else runs.read_run_config(resume)  # names config.json if damaged
        run_dir = Path(resume)
    config = (config if config is not None else TrainConfig()).validate()
    dist_info = distributed.distributed_from_env()
    device = resolve_device(config.device, dist_info.local_rank)
    if resume is None and run_dir is not None and (Path(run_dir) / runs.CHECKPOINT).is_file():
        config, resume = continued_config(config, Path(run_dir), device), run_dir  # e.g. torchrun restarted us
    check_runtime(config, device, dist_info.world_size)
    with _torch_threads(config.num_threads), _process_group(dist_info, device), \
            distributed.peer_failures_reported(dist_info.enabled):
        state = setup(config, dist_info, device, data=data, run_dir=run_dir, resume=resume is not None,
                      progress=progress, log=log, live=live)
        try:
            return run_epochs(state)
        finally:
            state.release_lock()  # diverged, a failed write, a second Ctrl-C: no exit leaves the directory locked
            if dist_info.enabled:  # DDP goes before the group: a reducer freeing gloo's group under the GIL can hang
                state.step_fn = None
                gc.collect()


def continued_config(config: TrainConfig, run_dir: Path, device: torch.device) -> TrainConfig:
    """``run_dir`` holds a checkpoint: continue it when ``config`` is that run's (options that may change on a
    resume aside), else refuse, so a restarted job never mixes two runs in one directory."""
    saved = runs.read_run_config(run_dir)
    given, _ = resolve_precision(config, device)
    differ = [k for k, v in given.to_dict().items()
              if k not in (*RESUMABLE, *DERIVED, "preset") and v != getattr(saved, k)]
    if differ:
        what = ", ".join(f"{k} {getattr(saved, k)!r} there, {getattr(given, k)!r} here" for k in differ[:3])
        raise ConfigError(f"{run_dir} holds another run ({what}); continue it with --resume {run_dir}, or train "
                          "in another --run-dir")
    return saved.replace(**{k: getattr(config, k) for k in RESUMABLE})  # DERIVED: the saved run's


def check_runtime(config: TrainConfig, device: torch.device, world_size: int) -> None:
    """What only the device and the process count can rule out, before any work."""
    if config.precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU (GradScaler); on a CPU use --precision bf16 or fp32")
    if config.batch_size % world_size:
        raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the number of "
                          f"processes ({world_size})")
    resolve_step_mode(config, device, world_size)
    check_input_size(config.model, config.image_size, config.in_channels)  # before the data is read
    if config.tensorboard:
        require_tensorboard()


@contextlib.contextmanager
def _torch_threads(num_threads: int | None):
    old = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _process_group(dist_info: distributed.Distributed, device: torch.device):
    owns_group = distributed.init_process_group(device) if dist_info.enabled else False
    try:
        yield
    finally:
        if owns_group:
            distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------- setup


def setup(config: TrainConfig, dist_info: distributed.Distributed, device: torch.device, *,
          data: ImageDataset | None = None, run_dir=None, resume: bool = False, progress: bool | None = None,
          log: Callable[[str], None] | None = print, live: bool | None = None,
          allow_unverified_streams: bool = False) -> RunState:
    """The run state: model, data on the device, optimizer and step, then (rank 0) the run directory. ``config`` may
    say precision "auto": it is resolved for ``device`` here, and the resolved config is the run's.
    ``allow_unverified_streams``: see :func:`~inceptionlab.engine.cuda.resolve_cuda_options` (benchmarks only)."""
    timer = PhaseTimer()
    config, precision_reason = resolve_precision(config, device)
    say = log if (log is not None and dist_info.is_main) else (lambda _line: None)
    with timer("data"):  # read + verify (a folder: decode once, then from the cache), to the device, resize once
        show = bool(progress if progress is not None else sys.stderr.isatty()) and dist_info.is_main
        config, run_data = load_data_for(config, dist_info, device, data, run_dir if resume else None, show, say)
        config = with_total_steps(config, len(run_data.loader))
    with timer("model"):  # incl. the size check and the device's first use
        model = build_model(config, device)
        step_mode = resolve_step_mode(config, device, dist_info.world_size)
        cuda_opts = resolve_cuda_options(config, device, step_mode, model,  # refuses what is known to be wrong
                                         allow_unverified_streams=allow_unverified_streams)
    with timer("step"):  # optimizer and step function (a graph is captured at the first step)
        optimizer = build_optimizer(model, config, device)
        scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
        step_fn = build_train_step(_wrap_ddp(model, dist_info, device), optimizer, config, device, scaler=scaler,
                                   batch_size=config.batch_size // dist_info.world_size,
                                   world_size=dist_info.world_size, batched_casts=cuda_opts["batched_casts"])
    state = RunState(config, dist_info, device, model, optimizer, scaler, step_fn, step_mode, cuda_opts,
                     run_data.loader, run_data.test_images, run_data.test_labels, run_dir, say, timer,
                     precision_reason=precision_reason, val_images=run_data.val_images, val_labels=run_data.val_labels,
                     source=run_data.dataset)
    if device.type == "cpu" and config.num_threads is None:
        state.tuner = ThreadTuner(torch.get_num_threads())
    state.total_steps = total_steps(config, state.steps_per_epoch)
    state.knots = schedule_knots(config, state.steps_per_epoch)
    with timer("run_dir"):  # the lock, resume state, run directory, config.json
        claim_run_dir(state)  # first: a trainer the lock refuses says nothing before its refusal
        try:
            if resume:
                restore_checkpoint(state)
            state.budget = budget.start(state)  # before config.json: a budget's provisional epochs are in it
            open_run_dir(state)
            state.observers = make_observers(config, state.run_dir, live=live, is_main=dist_info.is_main)
        except BaseException:
            state.release_lock()  # setup fails here, so train never gets the state to release it
            raise
    default_bar = sys.stderr.isatty() or in_notebook()
    state.show_bar = bool(progress if progress is not None else default_bar) and dist_info.is_main
    say(describe_run(state))
    return state


def load_data_for(config: TrainConfig, dist_info: distributed.Distributed, device: torch.device,
                  data: ImageDataset | None, resumed_dir, progress: bool, say) -> tuple[TrainConfig, RunData]:
    """The config completed from the data, and the data on the device. A resumed run's saved values that the data
    refuses (a validation split larger than the data) name config.json, whose value is what must change."""
    try:
        data = data if data is not None else load_run_dataset(config, resumed_dir, progress=progress, log=say)
        config = with_data(config, data.info)
        return config, build_data(config, dist_info, device, data)
    except ConfigError as exc:
        if resumed_dir is None or not hasattr(exc, "problem"):
            raise
        raise runs.damaged_config(resumed_dir, exc) from None


def build_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """The seeded model (d2l's Xavier init by default), in the run's memory layout, after a shape-only size check."""
    check_input_size(config.model, config.image_size, config.in_channels)
    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=config.num_classes, in_channels=config.in_channels,
                         **config.model_options)
    if config.init == "xavier":
        init_xavier_(model)
    return prepare_model(model.to(device), config)


def _wrap_ddp(model: nn.Module, dist_info: distributed.Distributed, device: torch.device) -> nn.Module:
    if not dist_info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def claim_run_dir(state: RunState) -> None:
    """Rank 0 creates (or reopens) the run directory and locks it."""
    if state.is_main:
        run_dir = state.run_dir
        run_dir = Path(run_dir) if run_dir is not None else runs.create_run_dir(state.config.out, state.config.model)
        state.lock = runs.lock_run_dir(run_dir)
        state.run_dir = run_dir


def open_run_dir(state: RunState) -> None:
    """Rank 0 removes what killed writes left in the locked run directory and writes config.json; the other ranks
    learn its path."""
    if state.is_main:
        run_dir = state.run_dir
        if removed := runs.remove_interrupted_writes(state.lock):
            state.say(f"{run_dir}: removed {len(removed)} temporary file(s) of interrupted writes")
        runs.write_config(run_dir, state.config.to_dict())
        write_data_files(run_dir, state.source)
        if state.start_epoch:
            runs.write_metrics(run_dir, state.rows)  # realign with the checkpoint after a crash between the writes
    if state.dist.enabled:
        state.run_dir = Path(distributed.broadcast_path(state.run_dir, state.is_main))


def describe_run(state: RunState) -> str:
    config, dist_info = state.config, state.dist
    num_params = sum(p.numel() for p in state.model.parameters())
    return (
        f"training {config.model} ({num_params:,} parameters) on {state.device}"
        + (f" x {dist_info.world_size} processes" if dist_info.enabled else "")
        + f": {len(state.loader.labels):,} training"
        + (f" / {len(state.val_labels):,} validation" if state.val_labels is not None else "")
        + f" / {len(state.test_labels):,} test images at {config.image_size}x"
        f"{config.image_size}, batch {config.batch_size}, {config.optimizer} lr {config.lr:g} ({config.schedule}), "
        f"{config.precision}{f' ({state.precision_reason})' if state.precision_reason else ''}"
        f"{f', {config.steps:,} steps' if config.steps else ''}"
        f"{f', time budget {budget.format_duration(config.time_budget)}' if config.time_budget else ''}"
        f"{', channels_last' if config.channels_last else ''}, {state.step_mode} step"
        + "".join(f", {k.replace('_', ' ')}" for k, on in state.cuda_opts.items() if on)
        + f" -> {state.run_dir}"
    )


# --------------------------------------------------------------------------------------------- the loop


def run_epochs(state: RunState) -> TrainResult:
    """The loop: per epoch train, evaluate, save; then :func:`finish`. Per-epoch files are written on a worker
    thread (rank 0), in order; leaving the block waits for them."""
    config = state.config
    with _StopFlag() as stop, cuda_switches(state.model, state.cuda_opts), \
            BackgroundWrites(enabled=state.is_main) as writes:
        epoch = state.start_epoch
        while epoch < state.config.epochs:  # a while: a time budget's plan may change the epochs as it goes
            train_metrics = train_one_epoch(state, epoch, stop, writes)
            if train_metrics is None:  # stopped by a signal
                break
            with budget.epoch_end(state.budget, epoch * state.steps_per_epoch + train_metrics["steps"]):
                with state.timer("eval"):  # the last epoch's is the run's closing evaluation (shift_tta's views)
                    evaluate_test_and_validation(state, final=epoch + 1 >= state.config.epochs)
                save_epoch(state, epoch, train_metrics, writes)
            epoch += 1
        if state.is_main and state.rows and state.plotted != len(state.rows):
            writes.submit(plot_curves_file, state.run_dir, [dict(r) for r in state.rows], config)
        wait_start = time.perf_counter()
    state.timer.add("write_wait", time.perf_counter() - wait_start)  # writes still queued after the last epoch
    return finish(state)


def evaluate_test_and_validation(state: RunState, *, final: bool) -> None:
    """``state.last_eval`` and ``state.last_val``: the test set and the held-out training images (preprocessed exactly
    as the test set, no augmentation; None without them). ``final``: the run's closing evaluation."""
    state.last_eval = evaluate_in_run(state, state.test_images, state.test_labels, final=final)
    state.last_val = (None if state.val_images is None
                      else evaluate_in_run(state, state.val_images, state.val_labels, final=final))


@dataclass
class EpochTally:
    """The running sums of an epoch, on the device (read at sync points only); restored from a recovery point."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    start_step: int = 0
    seen_before: int = 0  # images of this epoch trained by an earlier process (not in this process's images/s)


def start_epoch(state: RunState, epoch: int) -> tuple[EpochTally, object]:
    """Seed the epoch (dropout and augmentation depend only on (seed, epoch)) and return its tally and batches,
    continuing from the run's mid-epoch recovery point when it is in this epoch."""
    device = state.device
    torch.manual_seed(_epoch_seed(state.config.seed, epoch))
    state.loader.set_epoch(epoch)
    state.model.train()
    tally = EpochTally(torch.zeros((), dtype=torch.float32, device=device),
                       torch.zeros((), dtype=torch.int64, device=device))
    partial, state.partial = state.partial, None
    if partial is None:
        return tally, state.loader.iterate()
    tally.loss_sum.copy_(partial["loss_sum"])
    tally.correct.copy_(partial["correct"])
    tally.seen = tally.seen_before = int(partial["seen"])
    tally.start_step = int(partial["step"])
    set_rng(partial["rng"])
    loader_rng = partial.get("loader_rng")
    return tally, state.loader.iterate(tally.start_step, None if loader_rng is None else loader_rng.cpu())


def train_one_epoch(state: RunState, epoch: int, stop: _StopFlag, writes: BackgroundWrites) -> dict | None:
    """One pass over the shuffled training set; ``None`` when a signal stopped it (every rank at the same step)."""
    config, device, steps = state.config, state.device, state.steps_per_epoch
    tally, batches = start_epoch(state, epoch)
    lr, bar, i = config.lr, _progress_bar(state, epoch, tally.start_step), tally.start_step - 1
    epoch_start = time.perf_counter()
    for i, (x, y) in enumerate(batches, start=tally.start_step):
        if i >= state.steps_in_epoch(epoch):  # the run's last steps are done (a step count ends inside an epoch)
            i -= 1
            break
        lr = lr_at(config, epoch * steps + i, steps, state.knots)
        set_lr(state.optimizer, lr)
        step_start = time.perf_counter()
        batch_loss, batch_correct = state.step_fn(x, y)
        if state.tuner is not None:
            state.tuner.step_done(len(y), time.perf_counter() - step_start)
        tally.loss_sum += batch_loss
        tally.correct += batch_correct
        tally.seen += len(y)
        check_budget(state, epoch, i, sync=False)
        if (i + 1) % config.sync_every == 0 or stop.signum is not None:
            if sync_point(state, tally, epoch, i, lr, stop, bar, writes):
                break
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if state.stop_signal is not None:
        return None
    totals = torch.stack([tally.loss_sum.double(), tally.correct.double(),
                          torch.tensor(float(tally.seen), device=device, dtype=torch.float64)])
    if state.dist.enabled:
        distributed.all_reduce_sum(totals)
    train_loss, train_acc = float(totals[0] / totals[2]), float(totals[1] / totals[2])
    check_finite(state, train_loss, epoch, i, lr)
    seconds = time.perf_counter() - epoch_start  # after the float() reads above, which synchronise
    state.timer.add("train", seconds)
    images_here = float(totals[2]) - tally.seen_before * state.dist.world_size
    return {"train_loss": train_loss, "train_acc": train_acc, "lr": lr, "images": images_here,
            "seconds": seconds, "start": epoch_start, "steps": i + 1}


def sync_point(state: RunState, tally: EpochTally, epoch: int, i: int, lr: float, stop: _StopFlag, bar,
               writes: BackgroundWrites) -> bool:
    """The host reads the running loss: stop agreement, divergence check, progress, and now and then a mid-epoch
    recovery point. True when the epoch must stop here."""
    state.stop_signal = distributed.agree_on_stop(stop.signum, state.device) if state.dist.enabled else stop.signum
    if (i + 1) % state.config.sync_every == 0:  # every rank at the same steps (a signal's extra sync is one rank's)
        check_budget(state, epoch, i, sync=True)
    running = float(tally.loss_sum) / tally.seen
    check_finite(state, running, epoch, i, lr)
    if bar is not None or state.observers:
        acc = int(tally.correct) / tally.seen
        for observer in state.observers:
            observer.progress(epoch + (i + 1) / state.steps_per_epoch, running, acc, lr)
        if bar is not None:
            bar.set_postfix(loss=f"{running:.3f}", acc=f"{acc:.3f}", refresh=False)
    if state.stop_signal is None and recovery_due(state) and i + 1 < state.steps_in_epoch(epoch):
        save_recovery_point(state, epoch, i + 1, tally, writes)
    return state.stop_signal is not None


def check_budget(state: RunState, epoch: int, i: int, *, sync: bool) -> None:
    """A time budget's plan is made after its timed steps and revised at sync points (engine.budget)."""
    tracker, step = state.budget, epoch * state.steps_per_epoch + i + 1
    if tracker is not None and (tracker.at_sync(step, epoch) if sync else tracker.step_done(step, epoch)):
        budget.follow(state, tracker)


def _progress_bar(state: RunState, epoch: int, start: int):
    if not state.show_bar:
        return None
    from tqdm.auto import tqdm  # a notebook widget inside Jupyter, text in a terminal

    return tqdm(total=state.steps_in_epoch(epoch), initial=start, desc=f"epoch {epoch + 1}/{state.config.epochs}",
                leave=False, file=sys.stderr, dynamic_ncols=True)


def save_epoch(state: RunState, epoch: int, train_metrics: dict, writes: BackgroundWrites) -> None:
    """Append the epoch's metrics row; rank 0 queues checkpoint (first), metrics and, now and then, curves.png."""
    test, val = one_view(state.last_eval), state.last_val and one_view(state.last_val)  # the curves: one view
    row = {
        "epoch": epoch + 1,
        "train_loss": train_metrics["train_loss"],
        "train_acc": train_metrics["train_acc"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        # only with a validation split, so the rows of runs without one keep their keys
        **({"val_loss": val["loss"], "val_acc": val["acc"]} if val else {}),
        "lr": train_metrics["lr"],
        "images_per_sec": train_metrics["images"] / train_metrics["seconds"],
        "epoch_seconds": time.perf_counter() - train_metrics["start"],
        "elapsed_seconds": state.elapsed(),
        # a step count's run: the steps so far and how much of the epoch ran (its last epoch may be partial)
        **({"steps": epoch * state.steps_per_epoch + train_metrics["steps"],
            "epoch_fraction": train_metrics["steps"] / state.steps_per_epoch} if state.counts_steps else {}),
    }
    state.rows.append(row)
    for observer in state.observers:
        observer.epoch(row)
    if not state.is_main:
        return
    with state.timer("write"):
        # the state is copied to the host now (training goes on changing the tensors); the disk work is queued
        snapshot = host_copy(checkpoint_state(state, epoch + 1, row["elapsed_seconds"]))
        writes.submit(runs.save_checkpoint, state.run_dir, snapshot)
        writes.submit(runs.write_metrics, state.run_dir, snapshot["metrics"])  # the snapshot's copy of the rows
        now = state.last_recovery = time.perf_counter()  # the epoch's checkpoint is the newest recovery point
        if now - state.last_plot >= PLOT_EVERY_SECONDS:
            writes.submit(plot_curves_file, state.run_dir, snapshot["metrics"], state.config)
            state.last_plot, state.plotted = now, len(state.rows)
    val = f"val acc {row['val_acc']:.3f}  " if "val_acc" in row else ""
    state.say(f"epoch {epoch + 1:>3}/{state.config.epochs}  loss {row['train_loss']:.3f}  train acc "
              f"{row['train_acc']:.3f}  {val}test acc {row['test_acc']:.3f}  {row['images_per_sec']:,.0f} img/s  "
              f"elapsed {_format_time(row['elapsed_seconds'])}")


def finish(state: RunState) -> TrainResult:
    """The summary (and, for a completed run on rank 0, the weights and the final evaluation's files)."""
    status = "completed" if state.stop_signal is None else "interrupted"
    if status == "completed" and state.last_eval is None:  # resumed a finished run: evaluate the final model
        evaluate_test_and_validation(state, final=True)
    summary = build_summary(state, status)
    if state.is_main:
        write_results(state, summary)
        state.release_lock()
    confusion = state.last_eval["confusion"] if status == "completed" else None
    for observer in state.observers:
        observer.finish(summary, confusion)
    if state.dist.enabled:
        distributed.barrier()  # no rank tears the group down while rank 0 is still writing the results
    return TrainResult(state.run_dir, status, state.rows, summary, state.model, state.stop_signal)


# --------------------------------------------------------------------------------------------- helpers


def check_finite(state: RunState, loss: float, epoch: int, step: int, lr: float) -> None:
    """A NaN/inf loss stops the run with the fix in the message; the last good checkpoint stays."""
    if math.isfinite(loss):
        return
    config, rows, run_dir = state.config, state.rows, state.run_dir
    good = f"the last good checkpoint (epoch {len(rows)}) is kept in {run_dir}" if rows else "no epoch finished"
    if state.is_main and run_dir is not None:
        runs.write_summary(run_dir, {"status": "diverged", "model": config.model, "epochs": config.epochs,
                                     "epochs_completed": len(rows),
                                     "diverged_at": {"epoch": epoch + 1, "step": step + 1, "lr": lr}})
    raise TrainingDiverged(
        f"the training loss became {loss} in epoch {epoch + 1} (step {step + 1}): the learning rate "
        f"{config.lr:g} is most likely too high for {config.model} with this recipe; try --lr {config.lr / 10:g}"
        f"{' or --warmup-epochs 1' if config.warmup_epochs == 0 else ''}. {good[0].upper() + good[1:]}."
    )


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def _format_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class _StopFlag:
    """SIGINT/SIGTERM set a flag the loop reads between steps; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
