"""The optimizer and the learning-rate schedule of a run."""

from __future__ import annotations

import math

import torch
from torch import nn

from inceptionlab.config import TrainConfig


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
