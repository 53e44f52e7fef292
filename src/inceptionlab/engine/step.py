"""The training step: ``step(x, y) -> (loss * batch, #correct)``, eager or replayed as one CUDA graph.

At this model size an eager step on a GPU is bound by the host (kernel launches), not by arithmetic, so on CUDA the
whole step (forward, backward, optimizer) is captured once and replayed (BENCHMARKS.md: step times). Every variant
computes the loss with :func:`inceptionlab.inputs.forward_loss`; nothing here re-derives what the model sees.

``step_mode`` (:class:`~inceptionlab.config.TrainConfig`): ``eager`` (:func:`make_train_step`; CPUs, Apple GPUs,
torchrun, fp16), ``cudagraph`` (:class:`StaticTrainStep`, what ``auto`` picks on CUDA), ``compile``
(``torch.compile`` of the model, never picked by ``auto``: its compile time exceeds a 10-epoch run's, ANCHORS.md).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from inceptionlab.config import STEP_MODES, TrainConfig
from inceptionlab.engine.cuda import BatchedCasts
from inceptionlab.errors import ConfigError
from inceptionlab.inputs import aux_loss_weight, forward_loss, make_criterion

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

WARMUP_STEPS = 3  # PyTorch's CUDA-graph recipe: a few eager iterations on a side stream before capture


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


def step_statistics(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss * batch, #correct)`` as 0-d device tensors: the trainer adds them up without a host sync."""
    return loss.detach().float() * y.shape[0], (logits.argmax(dim=1) == y).sum()


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                    scaler: torch.amp.GradScaler | None = None) -> StepFn:
    """The eager step on a [0, 1] float batch: ``step(x, y) -> (loss * batch, #correct)`` (no host sync)."""
    criterion = make_criterion(config)
    aux_weight = aux_loss_weight(model)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = forward_loss(model, x, y, criterion, config, aux_weight=aux_weight)
        # flush the gradients right before they are produced again: no memory held between steps
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return step_statistics(loss, logits, y)

    return step


def build_train_step(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, device: torch.device,
                     *, batch_size: int, scaler: torch.amp.GradScaler | None = None, world_size: int = 1,
                     batched_casts: bool = False) -> StepFn:
    """The trainer's step for ``config.step_mode``. ``batched_casts``: the resolved CUDA switch (captured step only)."""
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
        device = next(model.parameters()).device
        if capture and device.type != "cuda":
            raise ConfigError("CUDA-graph capture needs the model on a CUDA device")
        self.model, self.optimizer, self.config = model, optimizer, config
        self.batch_size, self.capture, self.warmup_steps = batch_size, capture, warmup_steps
        self.criterion = make_criterion(config)
        if batched_casts and config.precision != "bf16":
            raise ConfigError(f"batched casts make bf16 copies; the run's precision is {config.precision}")
        self.forward = BatchedCasts(model) if batched_casts else model
        self.aux_weight = aux_loss_weight(model)
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
        loss, logits = forward_loss(self.forward, self.static_x, self.static_y, self.criterion, self.config,
                                    aux_weight=self.aux_weight, cache_enabled=False)
        loss.backward()
        with self._tensor_lr():
            self.optimizer.step()
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
        loss, logits = forward_loss(self.model, x, y, self.criterion, self.config, aux_weight=self.aux_weight)
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "capturable=True but step() runs without graph capture": intended
            self.optimizer.step()  # the groups' float lr: what the schedule set for this step
        return step_statistics(loss, logits, y)
