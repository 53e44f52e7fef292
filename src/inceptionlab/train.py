"""The trainer: the chapter's recipe end to end, plus what a real run needs (resume, faults, DDP, AMP).

Read top to bottom: :func:`train` loads the data onto the device, builds the model, optimizer and the
one-function training step (:func:`make_train_step`), then for each epoch trains on the shuffled training set,
evaluates on the full test set, writes the checkpoint and the metrics. Everything a run leaves behind goes
through :mod:`inceptionlab.runs`.

Speed rules the loop keeps (they matter more than FLOPs at this model size, see ANCHORS.md):
- no host synchronisation per step: loss and correct counts accumulate as device tensors and are read at
  epoch end (and every ``SYNC_EVERY`` steps for the progress bar and the divergence check);
- channels_last, normalisation and autocast are applied in one place (:func:`prepare_model`, :func:`prepare_input`,
  :func:`autocast_context`) so a compiled / CUDA-graph step can replace :func:`make_train_step` whole.

Reproducibility: data order and augmentation depend only on (seed, epoch) (``DeviceLoader.set_epoch``) and the
global RNG (dropout) is reseeded from (seed, epoch) at the start of every epoch, so a run resumed from the
checkpoint after epoch k ends exactly where an uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab import data as data_module
from inceptionlab import fast, runs
from inceptionlab.config import TrainConfig
from inceptionlab.errors import ConfigError, InceptionLabError
from inceptionlab.fileio import BackgroundWrites
from inceptionlab.models import classification_loss, create_model, init_xavier_

SYNC_EVERY = 50  # steps between host reads of the running loss (progress bar, NaN check)
CHECKPOINT_FORMAT = 1
# curves.png is redrawn after an epoch only if this long has passed since the last drawing (and always at the end):
# matplotlib takes ~0.3 s per figure, which is 10% of a 3-second GPU epoch.
PLOT_EVERY_SECONDS = 15.0


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


# --------------------------------------------------------------------------------------------- devices


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA, then Apple MPS, then the CPU. Under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available; use --device cpu (or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple MPS is not available here; use --device cpu (or auto)")
    return torch.device(name)


@dataclass
class Distributed:
    """The process group seen by this process; ``world_size == 1`` when not started by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT for the rendezvous)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def _init_process_group(dist_info: Distributed, device: torch.device) -> bool:
    """Join torchrun's group (NCCL on GPUs, Gloo on CPUs); False if it was already initialised by the caller."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, **kwargs)
    return True


# --------------------------------------------------------------------------------------------- the step


def autocast_context(config: TrainConfig, device: torch.device, *, cache_enabled: bool = True):
    """The one place mixed precision is switched on (bf16 on CPU uses AVX-512 BF16 where the CPU has it).

    ``cache_enabled=False`` inside CUDA-graph capture, as PyTorch's graph notes ask (no cast cache kept across
    the capture boundary); every weight is cast once per forward here anyway, so the cache saves nothing.
    """
    if config.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def prepare_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The model's side of :func:`prepare_input`: the run's memory layout (it changes the rounding, so a reloaded
    model evaluates exactly as the trainer's did only in the same layout)."""
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def prepare_input(x: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Float [0, 1] batch -> what the model sees: optional standardisation, optional channels_last."""
    if config.normalize:
        x = data_module.normalize(x)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def make_criterion(config: TrainConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    scaler: torch.amp.GradScaler | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One optimisation step on a [0, 1] float batch: ``step(x, y) -> (loss * batch, #correct)``, both 0-d
    device tensors (no host sync). Swap this function to compile or graph-capture the whole step."""
    criterion = make_criterion(config)
    aux_loss_weight = getattr(getattr(model, "module", model), "aux_loss_weight", 0.3)  # DDP wraps in .module

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = prepare_input(x, config)
        with autocast_context(config, x.device):
            output = model(x)
            loss = classification_loss(output, y, criterion, aux_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        logits = output[0] if isinstance(output, tuple) else output
        return loss.detach().float() * y.shape[0], (logits.argmax(dim=1) == y).sum()

    return step


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Weight decay only on conv/linear weights (decaying biases and BatchNorm scales only hurts)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.weight_decay > 0:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": 0.0}]
    # Fused kernels on CUDA (one launch for all parameters); foreach elsewhere.
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, **impl)
    momentum = 0.0 if config.optimizer == "sgd" else config.momentum
    return torch.optim.SGD(groups, lr=config.lr, momentum=momentum, nesterov=config.optimizer == "nesterov", **impl)


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warm-up, then the schedule.

    constant: ``lr``; cosine: half-cosine from ``lr`` to 0; onecycle: linear from ``lr`` down to 0
    (with the warm-up this is the triangular one-cycle policy).
    """
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * t))
    return config.lr * (1 - t)


# --------------------------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    flip: bool = False,
) -> dict:
    """Accuracy, mean cross-entropy and the confusion matrix of ``model`` on uint8 ``images``.

    ``flip``: test-time augmentation, each image's logits averaged with those of its mirror image (left-right; the
    two in one forward pass). Training never uses it; ``inceptionlab evaluate --flip-tta`` reports it.

    With ``world_size > 1`` each rank evaluates a strided shard and the sums are all-reduced.
    Returns tensors: ``correct``, ``count``, ``loss_sum``, ``confusion`` (num_classes x num_classes, on CPU),
    and floats ``acc``, ``loss``.
    """
    was_training = model.training
    model.eval()
    device = images.device
    batch_size = batch_size or config.eval_batch_size
    index = torch.arange(len(labels), device=device)[rank::world_size]
    k = config.num_classes
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(k * k, dtype=torch.int64, device=device)
    for start in range(0, len(index), batch_size):
        idx = index[start : start + batch_size]
        x = prepare_input(data_module.resize_batch(images[idx], config.image_size), config)
        y = labels[idx]
        with autocast_context(config, device):
            logits = model(torch.cat([x, x.flip(-1)]) if flip else x)
        logits = logits.float()
        if flip:
            logits = logits.view(2, len(y), k).mean(dim=0)
        pred = logits.argmax(dim=1)
        correct += (pred == y).sum()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        # scatter_add_, not bincount: on CUDA bincount reads its input's min and max on the host (syncs every batch)
        confusion.scatter_add_(0, y * k + pred, torch.ones_like(pred))
    count = torch.tensor(len(index), dtype=torch.int64, device=device)
    if world_size > 1:
        import torch.distributed as dist

        for t in (correct, loss_sum, confusion, count):
            dist.all_reduce(t)
    model.train(was_training)
    n = max(1, int(count))
    return {
        "correct": int(correct), "count": int(count), "acc": int(correct) / n, "loss": float(loss_sum) / n,
        "confusion": confusion.view(k, k).cpu(),
    }


def per_class_report(confusion: torch.Tensor, class_names=data_module.CLASS_NAMES) -> dict:
    """per_class.json: per-class accuracy (recall) and the confusion matrix (rows: true, columns: predicted)."""
    confusion = confusion.cpu().long()
    totals = confusion.sum(dim=1).clamp_min(1)
    names = list(class_names) if len(class_names) == confusion.shape[0] else [str(i) for i in range(len(confusion))]
    return {
        "test_acc": float(confusion.diag().sum()) / max(1, int(confusion.sum())),
        "per_class_acc": {name: float(confusion[i, i]) / float(totals[i]) for i, name in enumerate(names)},
        "class_names": names,
        "confusion": confusion.tolist(),
    }


# --------------------------------------------------------------------------------------------- checks


def check_input_size(config: TrainConfig) -> None:
    """Fail before any work if the model cannot take ``image_size`` (a feature map would collapse to 0x0)."""
    from inceptionlab.analysis import check_input_size as analysis_check

    analysis_check(config.model, config.image_size, config.in_channels)


def _build_transform(config: TrainConfig):
    if config.crop_padding == 0 and not config.flip and config.erasing == 0:
        return None
    try:
        from inceptionlab.augment import build_transform
    except ImportError:
        raise ConfigError("augmentation options need inceptionlab.augment, which is not installed") from None
    return build_transform(crop_padding=config.crop_padding, flip=config.flip, erasing=config.erasing)


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


# --------------------------------------------------------------------------------------------- train


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | os.PathLike | None = None,
    data: data_module.FashionMNIST | None = None,
    run_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train ``config`` (or resume the run directory ``resume``) and return a :class:`TrainResult`.

    - ``resume``: continue from the run's last complete checkpoint; ``config`` then defaults to the run's
      config.json (pass one to change e.g. ``epochs`` or ``device``).
    - ``data``: an already loaded :class:`~inceptionlab.data.FashionMNIST` (any device), else loaded from
      ``config.data_dir``.
    - ``run_dir``: write into this directory instead of a new ``<out>/<timestamp>-<model>/``.
    - ``progress``: a tqdm bar while an epoch runs; default: only when stderr is a terminal.
    - ``log``: where the per-epoch lines go (``None``: silent).

    Raises :class:`ConfigError` before any work for invalid options, :class:`TrainingDiverged` on a NaN/inf
    loss. SIGINT/SIGTERM end the run cleanly with ``status == "interrupted"``.
    """
    if resume is not None:
        resume = Path(resume)
        saved = TrainConfig.from_dict(runs.read_config(resume))
        config = config or saved
        run_dir = resume
    if config is None:
        config = TrainConfig()
    config.validate()
    dist_info = distributed_from_env()
    device = resolve_device(config.device, dist_info.local_rank)
    if config.precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU (GradScaler); on a CPU use --precision bf16 or fp32")
    if config.batch_size % dist_info.world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} (the global batch) must be divisible by the number of processes "
            f"({dist_info.world_size})"
        )
    fast.resolve_step_mode(config, device, dist_info.world_size)  # an impossible step mode fails here, not later
    old_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    owns_group = _init_process_group(dist_info, device) if dist_info.enabled else False
    try:
        return _train(config, dist_info, device, resume, data, run_dir, progress, log)
    finally:
        torch.set_num_threads(old_threads)
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(config, dist_info, device, resume, data, run_dir, progress, log) -> TrainResult:
    is_main = dist_info.is_main
    say = log if (log is not None and is_main) else (lambda _line: None)
    started = time.perf_counter()

    # the model: seeded init (d2l's Xavier), after checking the input size (a shape-only pass)
    check_input_size(config)
    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=config.num_classes, in_channels=config.in_channels,
                         **config.model_options)
    if config.init == "xavier":
        init_xavier_(model)
    prepare_model(model.to(device), config)
    step_mode = fast.resolve_step_mode(config, device, dist_info.world_size)
    cuda_opts = fast.resolve_cuda_options(config, device, step_mode, model)  # refuses what is known to be wrong
    transform = _build_transform(config)
    setup = {"model_seconds": time.perf_counter() - started}  # incl. the size check and the device's first use
    mark = time.perf_counter()

    # the data lives on the device as uint8; batches are resized there
    if data is None:
        data = data_module.load_fashion_mnist(config.data_dir)
    data = data.to(device)
    train_images, train_labels = data.train_images, data.train_labels
    test_images, test_labels = data.test_images, data.test_labels
    if config.limit_train:
        train_images, train_labels = train_images[: config.limit_train], train_labels[: config.limit_train]
    if config.limit_test:
        test_images, test_labels = test_images[: config.limit_test], test_labels[: config.limit_test]
    if fast.want_pre_resize(config, device, len(train_images) + len(test_images)):
        # resample once, not every batch of every epoch: the same pixels (see fast.pre_resize)
        train_images = fast.pre_resize(train_images, config.image_size)
        test_images = fast.pre_resize(test_images, config.image_size)
    loader = data_module.DeviceLoader(
        train_images, train_labels, config.batch_size // dist_info.world_size, image_size=config.image_size,
        shuffle=True, seed=config.seed, rank=dist_info.rank, world_size=dist_info.world_size, transform=transform,
        drop_last=config.drop_last,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"--drop-last leaves no training batch: {len(train_labels):,} training images"
            + (f" over {dist_info.world_size} processes" if dist_info.enabled else "")
            + f" are fewer than one batch of {config.batch_size}; use --no-drop-last or a smaller --batch-size"
        )
    setup["data_seconds"] = time.perf_counter() - mark  # read + verify, to the device, resize once
    mark = time.perf_counter()

    optimizer = build_optimizer(model, config, device)
    scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
    train_model = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_fn = fast.build_train_step(train_model, optimizer, config, device, scaler=scaler,
                                    batch_size=config.batch_size // dist_info.world_size,
                                    world_size=dist_info.world_size,
                                    batched_casts=cuda_opts["batched_casts"])  # eager, or one CUDA graph (step_mode)

    setup["step_seconds"] = time.perf_counter() - mark  # optimizer, step function (a graph is captured later)
    mark = time.perf_counter()

    # the run directory (rank 0 creates it; the others learn its path)
    start_epoch, rows, elapsed_before = 0, [], 0.0
    if resume is not None:
        state = runs.load_checkpoint(run_dir, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, rows = int(state["epoch"]), list(state["metrics"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        if start_epoch >= config.epochs and is_main:
            say(f"{run_dir}: all {config.epochs} epochs were already done; writing the final results")
    if is_main:
        run_dir = Path(run_dir) if run_dir is not None else runs.create_run_dir(config.out, config.model)
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_config(run_dir, config.to_dict())
        if resume is not None:
            runs.write_metrics(run_dir, rows)  # realign with the checkpoint after a crash between the writes
    if dist_info.enabled:
        import torch.distributed as dist

        holder = [str(run_dir) if is_main else None]
        dist.broadcast_object_list(holder, src=0)
        run_dir = Path(holder[0])

    num_params = sum(p.numel() for p in model.parameters())
    say(
        f"training {config.model} ({num_params:,} parameters) on {device}"
        + (f" x {dist_info.world_size} processes" if dist_info.enabled else "")
        + f": {len(train_labels):,} training / {len(test_labels):,} test images at {config.image_size}x"
        f"{config.image_size}, batch {config.batch_size}, {config.optimizer} lr {config.lr:g} ({config.schedule}), "
        f"{config.precision}{', channels_last' if config.channels_last else ''}, {step_mode} step"
        + "".join(f", {k.replace('_', ' ')}" for k, on in cuda_opts.items() if on)
        + f" -> {run_dir}"
    )
    show_bar = progress if progress is not None else sys.stderr.isatty()
    show_bar = show_bar and is_main

    status, stop_signal, last_eval = "completed", None, None
    setup["run_dir_seconds"] = time.perf_counter() - mark  # resume state, run directory, config.json
    timings = {"setup_seconds": time.perf_counter() - started, "setup": setup, "train_seconds": 0.0,
               "eval_seconds": 0.0, "write_seconds": 0.0}
    last_plot, plotted = -math.inf, len(rows)
    # the per-epoch files are written on a worker thread (rank 0 only), in order; leaving the block waits for them
    with _StopFlag() as stop, fast.cuda_options(model, cuda_opts), BackgroundWrites(enabled=is_main) as writes:
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(_epoch_seed(config.seed, epoch))  # dropout etc. depend only on (seed, epoch)
            loader.set_epoch(epoch)
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float32, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0
            bar = None
            if show_bar:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                           file=sys.stderr, dynamic_ncols=True)
            epoch_start = time.perf_counter()
            lr = config.lr
            for i, (x, y) in enumerate(loader):
                lr = lr_at(config, epoch * steps_per_epoch + i, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch_loss, batch_correct = step_fn(x, y)
                loss_sum += batch_loss
                correct += batch_correct
                seen += len(y)
                if (i + 1) % SYNC_EVERY == 0 or stop.signum is not None:
                    if dist_info.enabled:
                        stop_signal = _agree_on_stop(stop.signum, device)
                    else:
                        stop_signal = stop.signum
                    running = float(loss_sum) / seen
                    _check_finite(running, epoch, i, lr, config, run_dir, rows, is_main)
                    if bar is not None:
                        bar.set_postfix(loss=f"{running:.3f}", acc=f"{int(correct) / seen:.3f}", refresh=False)
                    if stop_signal is not None:
                        break
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            if stop_signal is not None:
                status = "interrupted"
                break
            totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device,
                                                                                    dtype=torch.float64)])
            if dist_info.enabled:
                import torch.distributed as dist

                dist.all_reduce(totals)
            train_loss, train_acc = float(totals[0] / totals[2]), float(totals[1] / totals[2])
            _check_finite(train_loss, epoch, steps_per_epoch - 1, lr, config, run_dir, rows, is_main)
            train_seconds = time.perf_counter() - epoch_start  # after the float() reads above, which synchronise
            last_eval = evaluate(model, test_images, test_labels, config, rank=dist_info.rank,
                                 world_size=dist_info.world_size)
            timings["train_seconds"] += train_seconds
            timings["eval_seconds"] += time.perf_counter() - epoch_start - train_seconds
            elapsed = elapsed_before + time.perf_counter() - started
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": last_eval["loss"],
                "test_acc": last_eval["acc"],
                "lr": lr,
                "images_per_sec": float(totals[2]) / train_seconds,
                "epoch_seconds": time.perf_counter() - epoch_start,
                "elapsed_seconds": elapsed,
            }
            rows.append(row)
            if is_main:
                write_start = time.perf_counter()
                # checkpoint first: the metrics files are rebuilt from it on resume. The state is copied to the
                # host now (training goes on changing the tensors); the disk work happens on the writer thread.
                state = _host_copy(_checkpoint_state(model, optimizer, scaler, epoch + 1, rows, elapsed,
                                                     steps_per_epoch))
                writes.submit(runs.save_checkpoint, run_dir, state)
                writes.submit(runs.write_metrics, run_dir, state["metrics"])  # the snapshot's copy of the rows
                if write_start - last_plot >= PLOT_EVERY_SECONDS:
                    writes.submit(_plot_curves, run_dir, state["metrics"], config)
                    last_plot, plotted = write_start, len(rows)
                timings["write_seconds"] += time.perf_counter() - write_start
                say(
                    f"epoch {epoch + 1:>3}/{config.epochs}  loss {train_loss:.3f}  train acc {train_acc:.3f}  "
                    f"test acc {row['test_acc']:.3f}  {row['images_per_sec']:,.0f} img/s  "
                    f"elapsed {_format_time(elapsed)}"
                )
        if is_main and rows and plotted != len(rows):
            writes.submit(_plot_curves, run_dir, [dict(r) for r in rows], config)
        wait_start = time.perf_counter()
    timings["write_wait_seconds"] = time.perf_counter() - wait_start  # the writes still queued after the last epoch
    elapsed = elapsed_before + time.perf_counter() - started
    if status == "completed" and last_eval is None:  # resumed a finished run: evaluate the final model
        last_eval = evaluate(model, test_images, test_labels, config, rank=dist_info.rank,
                             world_size=dist_info.world_size)
    summary = {
        "status": status,
        "model": config.model,
        "preset": config.preset,
        "epochs": config.epochs,
        "epochs_completed": len(rows),
        "num_parameters": num_params,
        "device": str(device),
        "world_size": dist_info.world_size,
        "step_mode": step_mode,
        **cuda_opts,
        "elapsed_seconds": elapsed,
        # this process only (a resumed run's earlier processes are in elapsed_seconds alone)
        "timings": {**timings, "graph_capture_seconds": getattr(step_fn, "prepare_seconds", None)},
    }
    if rows:
        last = rows[-1]
        summary.update(
            train_loss=last["train_loss"], train_acc=last["train_acc"], test_acc=last["test_acc"],
            best_test_acc=max(r["test_acc"] for r in rows),
            images_per_sec=sum(r["images_per_sec"] for r in rows) / len(rows),
        )
    if stop_signal is not None:
        summary["signal"] = signal.Signals(stop_signal).name
    if is_main:
        if status == "completed":
            runs.save_weights(run_dir / runs.WEIGHTS, model,
                              {"model": config.model, "image_size": config.image_size})
            report = per_class_report(last_eval["confusion"])
            summary["per_class_acc"] = report["per_class_acc"]
            runs.write_per_class(run_dir, report)
            _plot_confusion(run_dir, last_eval["confusion"], config)
        runs.write_summary(run_dir, summary)
        if status == "completed" and rows:
            say(f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, "
                f"test acc {summary['test_acc']:.3f}")
            say(f"{summary['images_per_sec']:.1f} examples/sec on {device}")
        elif status == "interrupted":
            say(f"interrupted by {summary['signal']} after {len(rows)} complete epoch(s); resume with "
                f"`inceptionlab train --resume {run_dir}`")
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()  # no rank leaves (and tears the group down) while rank 0 is still writing the results
    return TrainResult(run_dir, status, rows, summary, model, stop_signal)


def _agree_on_stop(signum: int | None, device: torch.device) -> int | None:
    """Every rank must leave the loop at the same step, or the next collective hangs."""
    import torch.distributed as dist

    flag = torch.tensor(signum or 0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag) or None


def _check_finite(loss, epoch, step, lr, config, run_dir, rows, is_main) -> None:
    if math.isfinite(loss):
        return
    good = f"the last good checkpoint (epoch {len(rows)}) is kept in {run_dir}" if rows else "no epoch finished"
    if is_main and run_dir is not None:
        summary = {"status": "diverged", "model": config.model, "epochs": config.epochs,
                   "epochs_completed": len(rows), "diverged_at": {"epoch": epoch + 1, "step": step + 1, "lr": lr}}
        runs.write_summary(run_dir, summary)
    raise TrainingDiverged(
        f"the training loss became {loss} in epoch {epoch + 1} (step {step + 1}): the learning rate "
        f"{config.lr:g} is most likely too high for {config.model} with this recipe; try --lr {config.lr / 10:g}"
        f"{' or --warmup-epochs 1' if config.warmup_epochs == 0 else ''}. {good[0].upper() + good[1:]}."
    )


def _host_copy(obj):
    """``obj`` with every tensor copied to host memory (a snapshot the training loop cannot change any more)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


def _checkpoint_state(model, optimizer, scaler, epoch, rows, elapsed, steps_per_epoch) -> dict:
    """Tensors and plain containers only, so ``torch.load(weights_only=True)`` can read it."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "schedule": {"step": epoch * steps_per_epoch, "steps_per_epoch": steps_per_epoch},
        "rng": rng,
        "metrics": rows,
        "elapsed_s": elapsed,
    }


def _plot_curves(run_dir: Path, rows, config) -> None:
    from inceptionlab.plots import plot_curves

    plot_curves(run_dir / runs.CURVES, rows, title=f"{config.model}, {config.image_size}px")


def _plot_confusion(run_dir: Path, confusion, config) -> None:
    from inceptionlab.plots import plot_confusion

    names = data_module.CLASS_NAMES if confusion.shape[0] == len(data_module.CLASS_NAMES) else \
        [str(i) for i in range(confusion.shape[0])]
    plot_confusion(run_dir / runs.CONFUSION, confusion, names, title=f"{config.model}: test set")
