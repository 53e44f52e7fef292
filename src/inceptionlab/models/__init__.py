"""The model registry and the Inception family. Importing a family module registers its models."""

import importlib

import torch
from torch import nn

from inceptionlab.models._registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)

# Importing a family module registers its models; this order is the order of ``list_models()`` (the Inception
# family first, the earlier chapters' comparators last).
FAMILY_MODULES = ("googlenet", "googlenet28", "googlenet_paper", "inception_v3", "inception_resnet", "classic")
for _module in FAMILY_MODULES:
    importlib.import_module(f"{__name__}.{_module}")


def init_xavier_(model: nn.Module) -> nn.Module:
    """The chapter's init (d2l ``init_cnn``): Xavier-uniform on every Conv2d/Linear weight; biases untouched."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
    return model


def classification_loss(output, target: torch.Tensor, criterion, aux_loss_weight: float = 0.3) -> torch.Tensor:
    """The training loss for any model's output.

    ``googlenet-paper`` in training mode returns ``(logits, (aux1, aux2))``; the paper adds the auxiliary losses
    with weight 0.3 (pass the model's ``aux_loss_weight`` to change it). Every other output is a logits tensor:
    ``criterion(output, target)``.
    ``criterion`` must return a scalar (mean reduction) so the weighted sum is meaningful.
    """
    if isinstance(output, tuple):
        logits, aux_logits = output
        return criterion(logits, target) + aux_loss_weight * sum(criterion(aux, target) for aux in aux_logits)
    return criterion(output, target)


__all__ = [
    "FAMILY_MODULES",
    "ModelSpec",
    "classification_loss",
    "create_model",
    "get_model_spec",
    "init_xavier_",
    "list_models",
    "register_model",
]
