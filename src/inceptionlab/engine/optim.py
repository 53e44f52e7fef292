"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch
from torch import nn

from inceptionlab.config import TrainConfig
from inceptionlab.errors import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: decaying biases and BatchNorm scales only hurts."""
    params = [p for p in model.parameters() if p.requires_grad]
    if weight_decay <= 0:
        return [{"params": params, "weight_decay": 0.0}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    # fused kernels on CUDA (one launch for all parameters); foreach elsewhere
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, **impl)
    momentum = 0.0 if config.optimizer == "sgd" else config.momentum
    return torch.optim.SGD(groups, lr=config.lr, momentum=momentum, nesterov=config.optimizer == "nesterov", **impl)


Knots = list[tuple[int, float]]  # (step, progress of the decay in [0, 1]), piecewise linear between them
# The most of a time budget's plan its warm-up may take, so a short plan still decays to 0 (EXPERIMENTS.md (12)).
WARMUP_SHARE = 1 / 3


def with_total_steps(config: TrainConfig, steps_per_epoch: int) -> TrainConfig:
    """``config`` with the epochs a step count takes (the last may be partial); unchanged without ``steps``."""
    if config.steps is None:
        return config
    if round(config.warmup_epochs * steps_per_epoch) >= config.steps:
        raise ConfigError(f"warmup_epochs {config.warmup_epochs:g} ({round(config.warmup_epochs * steps_per_epoch)} "
                          f"steps) must end before the run's {config.steps} steps")
    return config.replace(epochs=-(-config.steps // steps_per_epoch))


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The run's optimisation steps: ``config.steps`` when set, else whole epochs."""
    return config.steps if config.steps is not None else config.epochs * steps_per_epoch


def schedule_knots(config: TrainConfig, steps_per_epoch: int, total: int | None = None) -> Knots:
    """The decay's progress: 0 where the warm-up ends, 1 at ``total`` (default: :func:`total_steps`)."""
    total = total_steps(config, steps_per_epoch) if total is None else total
    warmup = round(config.warmup_epochs * steps_per_epoch)
    return [(warmup, 0.0), (max(total, warmup + 1), 1.0)]


def revise_knots(knots: Knots, at_step: int, total: int) -> Knots:
    """The schedule ending at ``total`` instead: the progress reached at ``at_step`` is kept (the learning rate
    stays continuous) and only the slope of the rest changes. Inside the warm-up, the warm-up is shortened to
    :data:`WARMUP_SHARE` of ``total`` if longer (never before ``at_step``): its ramp steepens, the decay still ends."""
    if at_step <= knots[0][0]:  # still in the warm-up: the decay has not started; it gets two thirds of a short plan
        warmup = max(at_step, min(knots[0][0], round(total * WARMUP_SHARE)))
        return [(warmup, 0.0), (max(total, warmup + 1), 1.0)]
    kept = [k for k in knots if k[0] < at_step]
    return [*kept, (at_step, progress_at(knots, at_step)), (max(total, at_step + 1), 1.0)]


def progress_at(knots: Knots, step: int) -> float:
    """Linear between the knots; 0 before the first, 1 after the last."""
    if step <= knots[0][0]:
        return knots[0][1]
    for (s0, p0), (s1, p1) in zip(knots, knots[1:], strict=False):
        if step <= s1:
            return p0 + (p1 - p0) * (step - s0) / (s1 - s0)
    return knots[-1][1]


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int, knots: Knots | None = None) -> float:
    """Learning rate of optimisation step ``step`` (0-based): linear warm-up, then the schedule.

    constant: ``lr``; cosine: half-cosine from ``lr`` to 0; onecycle: linear from ``lr`` down to 0
    (with the warm-up this is the triangular one-cycle policy). ``knots``: the decay's progress
    (default: :func:`schedule_knots`, ending at :func:`total_steps`); a time budget revises them.
    """
    knots = schedule_knots(config, steps_per_epoch) if knots is None else knots
    warmup = knots[0][0]
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    t = min(1.0, progress_at(knots, step))
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * t))
    return config.lr * (1 - t)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
