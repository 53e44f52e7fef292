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

from inceptionlab.config import CUDA_SWITCHES, STEP_MODES, TrainConfig
from inceptionlab.errors import ConfigError

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

WARMUP_STEPS = 3  # PyTorch's CUDA-graph recipe: a few eager iterations on a side stream before capture
PRE_RESIZE_MAX_BYTES = 4 << 30  # 60,000 x 96 x 96 uint8 is 553 MB; at 299 px (5.4 GB) keep resizing per batch

__all__ = ["STEP_MODES", "BatchedCasts", "StaticTrainStep", "build_train_step", "cuda_options",
           "graph_vs_eager_max_diff", "lr_sensitivity", "pre_resize", "resolve_cuda_options", "resolve_step_mode",
           "set_branch_streams", "set_fuse_1x1", "want_pre_resize"]


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


# What ``None`` (auto) means for the CUDA switches, per resolved step mode. Measured on one H200 (PyTorch 2.11,
# cuDNN 9.19, 2026-11-28, benchmarks/gpu_check.sh; BENCHMARKS.md), googlenet 96 px batch 128 bf16 channels_last:
# - cudnn.benchmark: 6.35 ms per graph-replayed step with and without it (4.72 / 4.72 with branch streams): off.
# - branch streams: 6.35 -> 4.72 ms per step (1.35x), and the captured training matches the eager step for
#   googlenet (relative drift 7.8e-6 in float32). For the models with BatchNorm that float32 check read 0.60
#   (googlenet-bn), 0.84 (inception-v3), 0.62 (inception-resnet), so the trainer refuses the switch for them. Found on
#   the CPU since: that check cannot tell rounding from error for BatchNorm models. Their short training is chaotic
#   (an lr nudged by 1e-7 moves googlenet-bn's result by 0.36), and fuse_1x1, which only changes rounding, reads
#   0.63 there in float32 but 4e-10 in float64 (graph_vs_eager_max_diff, now float64). With streams the arithmetic
#   differs by rounding too (googlenet's 7.8e-6 is not 0; e.g. a block's input gradients summed in another order),
#   so the 0.6-0.8 was most likely that, not a race; the refusal stays until the float64 check has passed on a GPU
#   (tests/test_fast.py). Auto stays off everywhere until an end-to-end run with streams is measured.
# - batched casts and fuse_1x1 (added after that lease): NOT yet measured on a GPU, so auto leaves them off. Both
#   cut kernels from the 835 of a step (about 230 per-tensor weight/gradient casts become a few multi-tensor
#   kernels; about 19 kernels fewer per Inception block, nine blocks); both compute what the plain step computes
#   (tests/test_fast.py). On the 2-core CPU fuse_1x1 gains little (benchmarks/bench_threads.py --ab-fuse-1x1,
#   googlenet 96 px, medians of alternating rounds: bf16 754 vs 765 ms per step, ranges overlapping; fp32 1,325 vs
#   1,369 ms, 3 %): too little to change the default there, so it is a CUDA switch like the others.
AUTO_BRANCH_STREAMS = {"cudagraph": False}
# The refusal described above; benchmarks/bench_train.py --unverified-streams lifts it in its own child processes
# to time a candidate (only after the float64 checks passed on that card), never in the library's own runs.
REFUSE_STREAMS_WITH_BATCHNORM = True
AUTO_CUDNN_BENCHMARK = {"cudagraph": False}
AUTO_BATCHED_CASTS = {"cudagraph": False}
AUTO_FUSE_1X1 = {"cudagraph": False}
_AUTO = {"branch_streams": AUTO_BRANCH_STREAMS, "cudnn_benchmark": AUTO_CUDNN_BENCHMARK,
         "batched_casts": AUTO_BATCHED_CASTS, "fuse_1x1": AUTO_FUSE_1X1}


def resolve_cuda_options(config: TrainConfig, device: torch.device, step_mode: str,
                         model: nn.Module | None = None) -> dict[str, bool]:
    """The CUDA switches (:data:`~inceptionlab.config.CUDA_SWITCHES`) made concrete: all off off CUDA; ``None`` =
    the measured default for the step mode (the table above).

    Branch streams only pay inside a CUDA graph (eagerly, each fork and join is more host work for a step that
    is already bound by the host). Asking for them with a ``model`` that has BatchNorm is a :class:`ConfigError`
    (see the measurements above ``AUTO_BRANCH_STREAMS``). Batched casts replace autocast's per-layer casts, so they
    exist only for the captured bf16 step; asked for elsewhere they resolve to off.
    """
    if device.type != "cuda":
        return {name: False for name in CUDA_SWITCHES}
    if config.branch_streams and REFUSE_STREAMS_WITH_BATCHNORM and model is not None and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise ConfigError(
            f"--branch-streams is refused for {config.model} until it is verified with BatchNorm: the float32 check "
            "on an H200 read a drift of 0.6-0.8 from the eager step, within that check's rounding noise for BatchNorm "
            "models, and the float64 check that decides has not run on a GPU yet. Use --no-branch-streams (the "
            "default); the switch is verified for the chapter's googlenet."
        )
    options = {}
    for name in CUDA_SWITCHES:
        value = getattr(config, name)
        options[name] = _AUTO[name].get(step_mode, False) if value is None else bool(value)
    if step_mode != "cudagraph" or config.precision != "bf16":
        options["batched_casts"] = False
    return options


def _set_block_flag(model: nn.Module, flag: str, enabled: bool) -> int:
    blocks = [m for m in model.modules() if hasattr(type(m), flag)]
    for block in blocks:
        setattr(block, flag, enabled)
    return len(blocks)


def set_branch_streams(model: nn.Module, enabled: bool) -> int:
    """Switch the parallel-stream branches of every multi-branch block of ``model``; returns how many blocks."""
    return _set_block_flag(model, "branch_streams", enabled)


def set_fuse_1x1(model: nn.Module, enabled: bool) -> int:
    """Switch the fused 1x1 convolutions of every googlenet Inception block of ``model``; returns how many blocks."""
    return _set_block_flag(model, "fuse_1x1", enabled)


@contextlib.contextmanager
def cuda_options(model: nn.Module, options: dict[str, bool]):
    """Apply :func:`resolve_cuda_options`'s result to ``model`` for the duration of a run; the global cuDNN flag and
    the blocks' switches are restored after (so an exported or evaluated model runs its plain forward).
    (``batched_casts`` belongs to the step: :func:`build_train_step`.)"""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = options["cudnn_benchmark"]
    set_branch_streams(model, options["branch_streams"])
    set_fuse_1x1(model, options["fuse_1x1"])
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved
        set_branch_streams(model, False)
        set_fuse_1x1(model, False)


# --------------------------------------------------------------------------------------------- batched casts


class _CastAll(torch.autograd.Function):
    """Copies of many tensors in ``dtype``, made by one multi-tensor kernel (``torch._foreach_copy_``, which takes
    mixed dtypes on CUDA); the backward turns their gradients back into the originals' dtype the same way.

    Under autocast every conv/linear call casts its fp32 weight and bias to bf16 on its own, and each cast's
    backward is another cast: two small kernels per tensor and step (googlenet: 116 tensors). Casting all of them
    up front gives autocast bf16 tensors it passes through untouched: the same values, the same arithmetic.
    """

    @staticmethod
    def forward(ctx, dtype, *tensors):
        ctx.set_materialize_grads(False)
        ctx.dtypes = [t.dtype for t in tensors]
        copies = [torch.empty_like(t, dtype=dtype) for t in tensors]
        torch._foreach_copy_(copies, list(tensors))
        return tuple(copies)

    @staticmethod
    def backward(ctx, *grads):
        present = [i for i, g in enumerate(grads) if g is not None]
        out: list[torch.Tensor | None] = [None] * len(grads)
        if present:
            back = [torch.empty_like(grads[i], dtype=ctx.dtypes[i]) for i in present]
            torch._foreach_copy_(back, [grads[i] for i in present])
            for i, g in zip(present, back, strict=True):
                out[i] = g
        return (None, *out)


class BatchedCasts:
    """``model(x)`` with every conv/linear weight and bias cast to ``dtype`` up front by :class:`_CastAll`, then
    passed in through ``torch.func.functional_call``. Only the captured bf16 step uses it (``--batched-casts``): the
    Python work happens once, at capture, and the replayed graph keeps only the multi-tensor kernels."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.model, self.dtype = model, dtype
        self.names, self.params = [], []
        for module_name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):  # the layers autocast runs in bf16
                for name, param in module.named_parameters(recurse=False):
                    if param.requires_grad and param.is_floating_point():
                        self.names.append(f"{module_name}.{name}" if module_name else name)
                        self.params.append(param)

    def __call__(self, x: torch.Tensor):
        copies = _CastAll.apply(self.dtype, *self.params)
        return torch.func.functional_call(self.model, dict(zip(self.names, copies, strict=True)), (x,))


def build_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    *,
    batch_size: int,
    scaler: torch.amp.GradScaler | None = None,
    world_size: int = 1,
    batched_casts: bool = False,
) -> StepFn:
    """The trainer's step function for ``config.step_mode``: ``step(x, y) -> (loss * batch, #correct)``.
    ``batched_casts``: :func:`resolve_cuda_options`'s value (used by the captured step only)."""
    from inceptionlab.train import make_train_step

    mode = resolve_step_mode(config, device, world_size)
    if mode == "cudagraph":
        return StaticTrainStep(model, optimizer, config, batch_size=batch_size, capture=True,
                               batched_casts=batched_casts)
    if mode == "compile":
        return make_train_step(torch.compile(model), optimizer, config, scaler)
    return make_train_step(model, optimizer, config, scaler)


class StaticTrainStep:
    """One training step on static buffers, replayed as a CUDA graph (``capture=True``) or run as is.

    ``capture=False`` runs the very same body (static buffers, warm-up and roll-back, tensor learning rate,
    in-place outputs) without a graph: that is how the CPU test checks it against the eager step.
    ``batched_casts``: the full-batch body runs the model through :class:`BatchedCasts` (bf16 only).
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
        batched_casts: bool = False,
    ):
        from inceptionlab.train import make_criterion, make_train_step

        device = next(model.parameters()).device
        if capture and device.type != "cuda":
            raise ConfigError("CUDA-graph capture needs the model on a CUDA device")
        self.model, self.optimizer, self.config = model, optimizer, config
        self.batch_size, self.capture, self.warmup_steps = batch_size, capture, warmup_steps
        self.criterion = make_criterion(config)
        if batched_casts and config.precision != "bf16":
            raise ConfigError(f"batched casts make bf16 copies; the run's precision is {config.precision}")
        self.forward = BatchedCasts(model) if batched_casts else model
        self.aux_loss_weight = getattr(model, "aux_loss_weight", 0.3)
        shape = (batch_size, config.in_channels, config.image_size, config.image_size)
        self.static_x = torch.zeros(shape, device=device, dtype=next(model.parameters()).dtype)
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
            output = self.forward(x)
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


def _check_batches(steps: int, batch_size: int, image_size: int, dtype: torch.dtype) -> list:
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, image_size, image_size, generator=gen).to(dtype),
             torch.randint(0, 10, (n,), generator=gen)) for n in [batch_size] * steps + [batch_size // 2]]


def _parameter_change(device: torch.device, config: TrainConfig, batches: list, dtype: torch.dtype, *,
                      captured: bool = False, branch_streams: bool = False, fuse_1x1: bool = False,
                      batched_casts: bool = False, lr_scale: float = 1.0) -> torch.Tensor:
    """Train a fresh seeded ``config.model`` on ``batches`` (lr 2^-8 * (1 + i): exact in float32, so the captured
    step's float32 lr tensor holds the very value the eager step uses) and return the change of all parameters."""
    from inceptionlab.models import create_model, init_xavier_
    from inceptionlab.train import build_optimizer, make_train_step

    torch.manual_seed(0)
    net = init_xavier_(create_model(config.model)).to(device=device, dtype=dtype)
    net.to(memory_format=torch.channels_last)
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # the graph's RNG offsets need not match eager ones: compare the arithmetic only
    set_branch_streams(net, branch_streams)
    set_fuse_1x1(net, fuse_1x1)
    start = torch.cat([p.detach().flatten().double() for p in net.parameters()])
    optimizer = build_optimizer(net, config, device)
    step = (StaticTrainStep(net, optimizer, config, batch_size=config.batch_size, capture=device.type == "cuda",
                            batched_casts=batched_casts)
            if captured else make_train_step(net, optimizer, config))
    for i, (x, y) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = 2.0**-8 * (1 + i) * lr_scale
        step(x.to(device), y.to(device))
    return torch.cat([p.detach().flatten().double() for p in net.parameters()]) - start


@contextlib.contextmanager
def _exact_arithmetic():
    """No TF32, deterministic cuDNN algorithms, no autotuning; the flags are restored after."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = flags


def _check_setup(model: str, precision: str, dtype: torch.dtype | None, batch_size: int, image_size: int):
    if dtype is None:
        dtype = torch.float64 if precision == "fp32" else torch.float32  # autocast needs float32 master weights
    config = TrainConfig(model=model, image_size=image_size, batch_size=batch_size, optimizer="nesterov",
                         weight_decay=5e-4, channels_last=True, precision=precision)
    return config, dtype


def graph_vs_eager_max_diff(
    device: torch.device,
    steps: int = 5,
    batch_size: int = 32,
    image_size: int = 32,
    *,
    model: str = "googlenet-bn",
    branch_streams: bool = False,
    fuse_1x1: bool = False,
    batched_casts: bool = False,
    precision: str = "fp32",
    dtype: torch.dtype | None = None,
) -> float:
    """How far the captured step's training drifts from the eager step's: ``|d_graph - d_eager| / |d_eager|``, where
    ``d`` is the change of all parameters (one vector) after ``steps`` full batches (lr changing every step) and one
    partial batch. Deterministic algorithms, no TF32, dropout off, random data. The switches apply to the captured
    side only (the eager side is the plain step): ``branch_streams``, ``fuse_1x1``, ``batched_casts`` (needs
    ``precision="bf16"``). On a CPU the "captured" side is :class:`StaticTrainStep` without a graph.

    ``dtype`` (default: float64 for ``precision="fp32"``, float32 master weights under bf16 autocast) is the
    arithmetic of model and data. Why float64: this short training is chaotic for the models with BatchNorm. Measured
    on the CPU (:func:`lr_sensitivity`): scaling the lr by (1 + 1e-7) moves googlenet-bn's parameter change by
    0.36 (float32) / 0.24 (float64) but googlenet's by 2.4e-4 / 9.7e-8. So any rounding difference, such as gradients
    summed in another order, reads as O(1) drift in float32 for those models; in float64 rounding (1e-16) stays
    far below the 1e-4 that the tests use, while a wrong result (a race, a missing gradient) does not.
    An identical computation gives exactly 0.
    """
    config, dtype = _check_setup(model, precision, dtype, batch_size, image_size)
    batches = _check_batches(steps, batch_size, image_size, dtype)
    with _exact_arithmetic():
        eager = _parameter_change(device, config, batches, dtype)
        graph = _parameter_change(device, config, batches, dtype, captured=True, branch_streams=branch_streams,
                                  fuse_1x1=fuse_1x1, batched_casts=batched_casts)
    return float((graph - eager).norm() / eager.norm().clamp_min(1e-30))


def lr_sensitivity(
    device: torch.device,
    rel: float = 1e-7,
    steps: int = 5,
    batch_size: int = 32,
    image_size: int = 32,
    *,
    model: str = "googlenet-bn",
    precision: str = "fp32",
    dtype: torch.dtype | None = None,
) -> float:
    """The scale of :func:`graph_vs_eager_max_diff`: the same relative drift between two *eager* trainings whose
    learning rates differ by the factor ``1 + rel``. Large values mean the check cannot tell rounding from error."""
    config, dtype = _check_setup(model, precision, dtype, batch_size, image_size)
    batches = _check_batches(steps, batch_size, image_size, dtype)
    with _exact_arithmetic():
        base = _parameter_change(device, config, batches, dtype)
        nudged = _parameter_change(device, config, batches, dtype, lr_scale=1 + rel)
    return float((nudged - base).norm() / base.norm().clamp_min(1e-30))
