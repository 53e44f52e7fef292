"""The fast training step: the whole step (forward, backward, optimizer) replayed as one CUDA graph.

Why this and not more arithmetic tricks: at this model size an eager step is bound by the host, not the GPU.
Measured by us on one H200 (BENCHMARKS.md, googlenet, batch 128, 96 px): d2l's eager fp32 step 23.4 ms; eager
bf16 + channels_last is *slower* (29.9 ms, more launches); the same step captured in one CUDA graph takes 6.35 ms
in bf16 + channels_last (3.7x), about the sum of its 835 kernels (6.0 ms): once graphed, the step is GPU-bound.

The pieces (``step_mode`` in :class:`~inceptionlab.config.TrainConfig`):

- ``eager``: :func:`inceptionlab.train.make_train_step`, unchanged. Used on CPUs and Apple GPUs, where there
  is no graph replay and the host is not the bottleneck (a CPU step is ~1-2 s of arithmetic).
- ``cudagraph`` (what ``auto`` picks on CUDA): :class:`StaticTrainStep`. Static input buffers; the step is
  warmed up on a side stream, the model/optimizer state rolled back to before the warm-up, then captured
  once with ``torch.cuda.graph`` and replayed for every full batch. Gradients are *produced* inside the graph,
  not accumulated (they are ``None`` at capture, so the captured backward writes them), which also drops the
  per-step ``zero_grad`` memset (1.75 ms of GPU time per step in the H200 eager profile). The learning rate
  lives in a float32 device tensor per param group that the fused / capturable optimizer reads, so schedules
  work: before each replay the group's float ``lr`` (set by the trainer as usual) is copied into it. Loss and
  correct count land in static 0-d device tensors; nothing in the step synchronises with the host.
  The last, smaller batch of an epoch (60,000 = 468 x 128 + 96) is run *eagerly* on the same parameters,
  gradients and optimizer state, so every image is seen every epoch, exactly as in d2l.
- ``compile``: ``torch.compile`` on the model, eager step. Never chosen by ``auto``: default-mode compilation
  took ~110 s on the H200 and gave no speed-up without graphs (ANCHORS.md), more than a 10-epoch run costs.

Not graph-captured: fp16 (GradScaler reads the inf check on the host every step) and torchrun/DDP (the
all-reduce hooks need their own capture rules); ``auto`` falls back to eager for both.

On every device, :func:`pre_resize` also resizes each split once at the start (uint8, the exact pixels of
d2l's PIL resize) so a training batch is one gather and one division instead of the two resampling matmuls.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from inceptionlab.config import STEP_MODES, TrainConfig
from inceptionlab.errors import ConfigError

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

WARMUP_STEPS = 3  # PyTorch's CUDA-graph recipe: a few eager iterations on a side stream before capture
PRE_RESIZE_MAX_BYTES = 4 << 30  # 60,000 x 96 x 96 uint8 is 553 MB; at 299 px (5.4 GB) keep resizing per batch

__all__ = ["STEP_MODES", "StaticTrainStep", "build_train_step", "cuda_options", "pre_resize", "resolve_cuda_options",
           "resolve_step_mode", "set_branch_streams", "want_pre_resize"]


def resolve_step_mode(config: TrainConfig, device: torch.device, world_size: int = 1) -> str:
    """``config.step_mode`` made concrete for ``device``: "eager", "cudagraph" or "compile".

    ``auto`` = cudagraph on CUDA (bf16/fp32, one process), eager everywhere else. Asking for ``cudagraph``
    where it cannot work is a :class:`ConfigError` naming the fix, not a silent fallback.
    """
    mode = config.step_mode
    if mode not in STEP_MODES:
        raise ConfigError(f"unknown step_mode {mode!r}; choose from: {', '.join(STEP_MODES)}")
    if mode == "auto":
        ok = device.type == "cuda" and config.precision != "fp16" and world_size == 1
        return "cudagraph" if ok else "eager"
    if mode == "cudagraph":
        if device.type != "cuda":
            raise ConfigError(f"--step-mode cudagraph needs a CUDA device, not {device.type}; use eager (or auto)")
        if config.precision == "fp16":
            raise ConfigError("--step-mode cudagraph cannot capture fp16's GradScaler (it syncs the host each step); "
                              "use --precision bf16")
        if world_size > 1:
            raise ConfigError("--step-mode cudagraph is not supported under torchrun (DDP); use eager (or auto)")
    return mode


# What ``None`` (auto) means for the two CUDA switches, per resolved step mode. Measured on one H200 (PyTorch 2.11,
# cuDNN 9.19, 2026-11-28, benchmarks/gpu_check.sh; BENCHMARKS.md), googlenet 96 px batch 128 bf16 channels_last:
# - cudnn.benchmark: 6.35 ms per graph-replayed step with and without it (4.72 / 4.72 with branch streams): off.
# - branch streams: 6.35 -> 4.72 ms per step (1.35x), and the captured training matches the eager step for
#   googlenet (relative drift 7.8e-6), but NOT for the models with BatchNorm (googlenet-bn 0.60, inception-v3 0.84,
#   inception-resnet 0.62, where the plain graph gives 0.0). Suspected cause, found after the lease: backward
#   gradients crossing streams were not recorded for the allocator, so inside the graph their memory was reused
#   by unordered nodes. models._blocks._CrossStream now records them; that fix is NOT yet measured, so the models
#   with BatchNorm still refuse the switch, and auto leaves it off everywhere until a GPU run shows the checks
#   (benchmarks/bench_train.py --probe --checks-only) below 1e-4 for every model and an end-to-end run with it.
AUTO_BRANCH_STREAMS = {"cudagraph": False}
AUTO_CUDNN_BENCHMARK = {"cudagraph": False}


def resolve_cuda_options(config: TrainConfig, device: torch.device, step_mode: str,
                         model: nn.Module | None = None) -> dict[str, bool]:
    """``branch_streams`` and ``cudnn_benchmark`` made concrete: both off off CUDA; ``None`` = the measured default.

    Branch streams only pay inside a CUDA graph (eagerly, each fork and join is more host work for a step that
    is already bound by the host). Asking for them with a ``model`` that has BatchNorm is a :class:`ConfigError`
    (see the measurements above ``AUTO_BRANCH_STREAMS``).
    """
    if device.type != "cuda":
        return {"branch_streams": False, "cudnn_benchmark": False}
    streams = config.branch_streams
    benchmark = config.cudnn_benchmark
    if streams and model is not None and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            f"--branch-streams is refused for {config.model}: with BatchNorm, graph-captured training on parallel "
            "streams drifted from the eager step on an H200 (relative drift 0.6-0.8; 0.0 without the switch). "
            "Use --no-branch-streams (the default); it works for the chapter's googlenet."
        )
    return {
        "branch_streams": AUTO_BRANCH_STREAMS.get(step_mode, False) if streams is None else bool(streams),
        "cudnn_benchmark": AUTO_CUDNN_BENCHMARK.get(step_mode, False) if benchmark is None else bool(benchmark),
    }


def set_branch_streams(model: nn.Module, enabled: bool) -> int:
    """Switch the parallel-stream branches of every multi-branch block of ``model``; returns how many blocks."""
    from inceptionlab.models._blocks import MultiBranch

    blocks = [m for m in model.modules() if isinstance(m, MultiBranch)]
    for block in blocks:
        block.branch_streams = enabled
    return len(blocks)


@contextlib.contextmanager
def cuda_options(model: nn.Module, options: dict[str, bool]):
    """Apply :func:`resolve_cuda_options`'s result for the duration of a run and restore the global flag after."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = options["cudnn_benchmark"]
    set_branch_streams(model, options["branch_streams"])
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def build_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    *,
    batch_size: int,
    scaler: torch.amp.GradScaler | None = None,
    world_size: int = 1,
) -> StepFn:
    """The trainer's step function for ``config.step_mode``: ``step(x, y) -> (loss * batch, #correct)``."""
    from inceptionlab.train import make_train_step

    mode = resolve_step_mode(config, device, world_size)
    if mode == "cudagraph":
        return StaticTrainStep(model, optimizer, config, batch_size=batch_size, capture=True)
    if mode == "compile":
        return make_train_step(torch.compile(model), optimizer, config, scaler)
    return make_train_step(model, optimizer, config, scaler)


class StaticTrainStep:
    """One training step on static buffers, replayed as a CUDA graph (``capture=True``) or run as is.

    ``capture=False`` runs the very same body (static buffers, warm-up and roll-back, tensor learning rate,
    in-place outputs) without a graph: that is how the CPU test checks it against the eager step.
    Call it like the eager step: ``loss_times_batch, correct = step(x, y)``. The returned tensors are the
    static outputs, overwritten by the next call: add them into an accumulator before calling again.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        *,
        batch_size: int,
        capture: bool = True,
        warmup_steps: int = WARMUP_STEPS,
    ):
        from inceptionlab.train import make_criterion, make_train_step

        device = next(model.parameters()).device
        if capture and device.type != "cuda":
            raise ConfigError("CUDA-graph capture needs the model on a CUDA device")
        self.model, self.optimizer, self.config = model, optimizer, config
        self.batch_size, self.capture, self.warmup_steps = batch_size, capture, warmup_steps
        self.criterion = make_criterion(config)
        self.aux_loss_weight = getattr(model, "aux_loss_weight", 0.3)
        shape = (batch_size, config.in_channels, config.image_size, config.image_size)
        self.static_x = torch.zeros(shape, device=device)
        self.static_y = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.static_loss = torch.zeros((), dtype=torch.float32, device=device)  # loss x batch of the last step
        self.static_correct = torch.zeros((), dtype=torch.int64, device=device)
        # float32: the fused CUDA kernels read the learning rate through a float pointer
        self.lr_tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)
                           for g in optimizer.param_groups]
        self._lr_values = [float(g["lr"]) for g in optimizer.param_groups]
        # Graphs need the tensor lr; on the CPU only SGD takes one (foreach Adam refuses it without capturable).
        self._use_tensor_lr = device.type == "cuda" or isinstance(optimizer, torch.optim.SGD)
        self._eager = make_train_step(model, optimizer, config)  # the last, smaller batch of an epoch
        self.graph: torch.cuda.CUDAGraph | None = None
        self.prepare_seconds: float | None = None  # warm-up + capture, once (the trainer reports it)
        self._ready = False

    # ----------------------------------------------------------------------------------------- the body

    def _body(self) -> None:
        """Forward, loss, backward, optimizer step and the two statistics, all on the static buffers."""
        from inceptionlab.models import classification_loss
        from inceptionlab.train import autocast_context, prepare_input

        x = prepare_input(self.static_x, self.config)
        with autocast_context(self.config, x.device, cache_enabled=False):
            output = self.model(x)
            loss = classification_loss(output, self.static_y, self.criterion, self.aux_loss_weight)
        loss.backward()
        with self._tensor_lr():
            self.optimizer.step()
        logits = output[0] if isinstance(output, tuple) else output
        self.static_loss.copy_(loss.detach().float() * self.batch_size)
        self.static_correct.copy_((logits.argmax(dim=1) == self.static_y).sum())

    @contextlib.contextmanager
    def _tensor_lr(self):
        """The param groups hold the device lr tensors only while the step runs (captured or not), so the rest
        of the trainer keeps seeing and writing plain floats (checkpoints, logs, the schedule)."""
        if not self._use_tensor_lr:
            yield
            return
        groups = self.optimizer.param_groups
        saved = [g["lr"] for g in groups]
        for group, lr in zip(groups, self.lr_tensors, strict=True):
            group["lr"] = lr
        try:
            yield
        finally:
            for group, lr in zip(groups, saved, strict=True):
                group["lr"] = lr

    def _sync_lr(self) -> None:
        """Copy the groups' float lr (what the schedule set) into the device tensors, only when it changed."""
        for i, group in enumerate(self.optimizer.param_groups):
            value = float(group["lr"])
            if value != self._lr_values[i]:
                self.lr_tensors[i].fill_(value)  # an async kernel argument: no host sync
                self._lr_values[i] = value

    # ----------------------------------------------------------------------------------------- set-up

    def _snapshot(self) -> tuple[dict, dict]:
        model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        optim_state = {
            id(p): {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in self.optimizer.state.items()
        }
        return model_state, optim_state

    @torch.no_grad()
    def _restore(self, model_state: dict, optim_state: dict) -> None:
        """Undo the warm-up steps *in place* (the graph records addresses, so no tensor may be replaced).

        Optimizer state created by the warm-up is zeroed, which is exactly a first step: SGD's momentum buffer
        (dampening 0) becomes ``0 * m + g = g`` as on its first step, Adam's step count and moments restart at 0.
        """
        for key, value in self.model.state_dict().items():
            value.copy_(model_state[key])
        for p, state in self.optimizer.state.items():
            before = optim_state.get(id(p), {})
            for key, value in state.items():
                if not torch.is_tensor(value):
                    continue
                if key in before:
                    value.copy_(before[key])
                else:
                    value.zero_()

    def _graph_ready_optimizer(self) -> None:
        """Fused kernels (they read the tensor lr on the device) and Adam's ``capturable`` flag. Done at the
        first call, not in ``__init__``: resuming loads the param groups (and their flags) after this is built."""
        for group in self.optimizer.param_groups:
            if "fused" in group and not group["fused"]:
                group["fused"], group["foreach"] = True, False
            if "capturable" in group:  # Adam/AdamW refuse capture unless the group says capturable
                group["capturable"] = True
            if not (group.get("fused") or group.get("capturable")):
                raise ConfigError(f"{type(self.optimizer).__name__} cannot be graph-captured; use --step-mode eager")
        # Adam warns once when a capturable optimizer steps outside a graph: that is our partial batch.
        self.optimizer._warned_capturable_if_run_uncaptured = True

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Warm up on the first real batch, roll the state back, then capture (on CUDA)."""
        started = time.perf_counter()
        if self.capture:
            self._graph_ready_optimizer()
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state() if self.capture else None
        model_state, optim_state = self._snapshot()
        stream = torch.cuda.Stream() if self.capture else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        # cuDNN/oneDNN pick their kernels and the optimizer creates its state here, outside the capture
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
        self._restore(model_state, optim_state)
        torch.set_rng_state(rng)  # dropout masks as if the warm-up had not happened
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
        self.optimizer.zero_grad(set_to_none=True)  # None at capture: the graph's backward writes fresh grads
        if self.capture:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._body()
            # the capture ran nothing: the first replay (in __call__) is the first real step
            torch.cuda.synchronize()
        self.prepare_seconds = time.perf_counter() - started
        self._ready = True

    # ----------------------------------------------------------------------------------------- the call

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] != self.batch_size:
            return self._eager_partial(x, y)
        if not self._ready:
            self._prepare(x, y)
        self._sync_lr()
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._body()
        return self.static_loss, self.static_correct

    def _eager_partial(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of another size (the epoch's last): eager, on the same parameters and optimizer state.

        The gradients must stay the tensors the graph writes, so they are zeroed in place instead of freed
        (``make_train_step`` frees them: that is only safe before the graph exists).
        """
        if self.graph is None:
            return self._eager(x, y)
        self.optimizer.zero_grad(set_to_none=False)
        from inceptionlab.models import classification_loss
        from inceptionlab.train import autocast_context, prepare_input

        x = prepare_input(x, self.config)
        with autocast_context(self.config, x.device):
            output = self.model(x)
            loss = classification_loss(output, y, self.criterion, self.aux_loss_weight)
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "capturable=True but step() runs without graph capture": intended
            self.optimizer.step()  # the groups' float lr: what the schedule set for this step
        logits = output[0] if isinstance(output, tuple) else output
        return loss.detach().float() * y.shape[0], (logits.argmax(dim=1) == y).sum()


# --------------------------------------------------------------------------------------------- data


def want_pre_resize(config: TrainConfig, device: torch.device, num_images: int) -> bool:
    """Resize each split once, on any device, when the resized uint8 copy is small enough.

    The pixels are the same either way; once per run instead of once per batch of every epoch. Measured on the
    2-core CPU (BENCHMARKS.md): batches from the pre-resized split 199,508 images/s vs 16,115 with the exact
    per-batch resize, for a one-time 8.3 s at 96 px (527 MiB of uint8).
    """
    return num_images * config.image_size**2 <= PRE_RESIZE_MAX_BYTES


@torch.no_grad()
def pre_resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 N x 28 x 28 -> uint8 N x size x size with the pixels :func:`inceptionlab.data.resize_batch` gives.

    ``resize_batch`` returns PIL's rounded 8-bit result divided by 255, so storing ``round(x * 255)`` as uint8
    loses nothing: feeding the result back through ``resize_batch`` (which then only divides by 255) gives
    the identical float batch. Resampling is deterministic and augmentation runs after it, so one pass over
    the split replaces the per-batch resampling matmuls of every epoch.
    """
    from inceptionlab.data import resize_batch

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((len(images), size, size), dtype=torch.uint8, device=images.device)
    for start in range(0, len(images), chunk):
        x = resize_batch(images[start : start + chunk], size)
        out[start : start + chunk] = x.squeeze(1).mul_(255).round_().to(torch.uint8)
    return out


def graph_vs_eager_max_diff(
    device: torch.device,
    steps: int = 5,
    batch_size: int = 32,
    image_size: int = 32,
    *,
    model: str = "googlenet-bn",
    branch_streams: bool = False,
) -> float:
    """How far the captured step's training drifts from the eager step's: ``|d_graph - d_eager| / |d_eager|``, where
    ``d`` is the change of all parameters (one vector) after ``steps`` full batches (lr changing every step) and one
    partial batch. fp32 without TF32, deterministic cuDNN algorithms, dropout off, random data: both sides do the
    same arithmetic, so the result is rounding-level (or 0). ``branch_streams``: the captured side runs each block's
    branches on parallel streams (the eager side never).

    Why this measure: an earlier version reported the largest per-tensor difference relative to the tensor's largest
    value, with TF32 on and lr 0.05; on an H200 that read 1.5 for googlenet-bn (BatchNorm shifts start at 0, so any
    rounding looks large next to them) although the graph-trained models reach the eager accuracy.
    """
    from inceptionlab.models import create_model, init_xavier_
    from inceptionlab.train import build_optimizer, make_train_step

    config = TrainConfig(model=model, image_size=image_size, batch_size=batch_size, optimizer="nesterov",
                         weight_decay=5e-4, channels_last=True)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(n, 1, image_size, image_size, generator=gen), torch.randint(0, 10, (n,), generator=gen))
               for n in [batch_size] * steps + [batch_size // 2]]
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        deltas = []
        for graphed in (False, True):
            torch.manual_seed(0)
            net = init_xavier_(create_model(config.model)).to(device).to(memory_format=torch.channels_last)
            for module in net.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0  # the graph's RNG offsets need not match eager ones: compare the arithmetic only
            set_branch_streams(net, graphed and branch_streams)
            start = torch.cat([p.detach().flatten().double() for p in net.parameters()])
            optimizer = build_optimizer(net, config, device)
            step = (StaticTrainStep(net, optimizer, config, batch_size=batch_size, capture=device.type == "cuda")
                    if graphed else make_train_step(net, optimizer, config))
            for i, (x, y) in enumerate(batches):
                for group in optimizer.param_groups:
                    group["lr"] = 0.01 * (1 + i) / len(batches)
                step(x.to(device), y.to(device))
            deltas.append(torch.cat([p.detach().flatten().double() for p in net.parameters()]) - start)
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = flags
    eager, graph = deltas
    return float((graph - eager).norm() / eager.norm().clamp_min(1e-30))
