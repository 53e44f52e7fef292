"""Does the captured step compute what the eager step computes? Float64 checks, run on the CPU by the tests and on a
GPU by ``benchmarks/gpu_check.sh`` (BENCHMARKS.md has the readings).

:func:`graph_vs_eager_max_diff` trains a fresh seeded model a few steps both ways and compares the parameter
changes; :func:`lr_sensitivity` gives the scale (how far two eager trainings drift when the lr differs by 1e-7).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from inceptionlab.config import TrainConfig
from inceptionlab.engine.cuda import apply_block_switches
from inceptionlab.engine.optim import build_optimizer
from inceptionlab.engine.step import StaticTrainStep, make_train_step
from inceptionlab.models import create_model, init_xavier_


def _check_batches(steps: int, batch_size: int, image_size: int, dtype: torch.dtype) -> list:
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(n, 1, image_size, image_size, generator=gen).to(dtype),
             torch.randint(0, 10, (n,), generator=gen)) for n in [batch_size] * steps + [batch_size // 2]]


def _parameter_change(device: torch.device, config: TrainConfig, batches: list, dtype: torch.dtype, *,
                      captured: bool = False, branch_streams: bool = False, fuse_1x1: bool = False,
                      batched_casts: bool = False, compiled: bool = False, lr_scale: float = 1.0) -> torch.Tensor:
    """Train a fresh seeded ``config.model`` on ``batches`` (lr 2^-8 * (1 + i): exact in float32, so the captured
    step's float32 lr tensor holds the very value the eager step uses) and return the change of all parameters."""
    torch.manual_seed(0)
    net = init_xavier_(create_model(config.model)).to(device=device, dtype=dtype)
    net.to(memory_format=torch.channels_last)
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # the graph's RNG offsets need not match eager ones: compare the arithmetic only
    apply_block_switches(net, streams=branch_streams, fuse_1x1=fuse_1x1)
    start = torch.cat([p.detach().flatten().double() for p in net.parameters()])
    optimizer = build_optimizer(net, config, device)
    step = (StaticTrainStep(net, optimizer, config, batch_size=config.batch_size, capture=device.type == "cuda",
                            batched_casts=batched_casts)
            if captured else make_train_step(torch.compile(net) if compiled else net, optimizer, config))
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
    compiled: bool = False,
    precision: str = "fp32",
    dtype: torch.dtype | None = None,
) -> float:
    """How far the captured step's training drifts from the eager step's: ``|d_graph - d_eager| / |d_eager|``, where
    ``d`` is the change of all parameters (one vector) after ``steps`` full batches (lr changing every step) and one
    partial batch. Deterministic algorithms, no TF32, dropout off, random data. The switches apply to the captured
    side only (the eager side is the plain step): ``branch_streams``, ``fuse_1x1``, ``batched_casts`` (needs
    ``precision="bf16"``). On a CPU the "captured" side is :class:`StaticTrainStep` without a graph.
    ``compiled``: the other side is the eager step on ``torch.compile`` of the model (step mode "compile").

    ``dtype`` (default: float64 for ``precision="fp32"``, float32 master weights under bf16 autocast) is the
    arithmetic of model and data. Why float64: the short training of a BatchNorm model is chaotic, so in float32 any
    reordered sum reads as O(1) drift, while in float64 rounding stays far below the tests' 1e-4 and a real error
    (a race, a missing gradient) does not (BENCHMARKS.md, "What that float32 check can tell").
    An identical computation gives exactly 0.
    """
    config, dtype = _check_setup(model, precision, dtype, batch_size, image_size)
    batches = _check_batches(steps, batch_size, image_size, dtype)
    with _exact_arithmetic():
        eager = _parameter_change(device, config, batches, dtype)
        graph = _parameter_change(device, config, batches, dtype, captured=not compiled,
                                  branch_streams=branch_streams, fuse_1x1=fuse_1x1, batched_casts=batched_casts,
                                  compiled=compiled)
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
