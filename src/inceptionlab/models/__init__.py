"""The model registry and the Inception family. Importing a family module registers its models."""

from torch import nn

from inceptionlab.models import googlenet as _googlenet  # noqa: F401  (registers its models)
from inceptionlab.models._registry import (
    ModelSpec,
    create_model,
    get_model_spec,
    list_models,
    register_model,
)


def init_xavier_(model: nn.Module) -> nn.Module:
    """The chapter's init (d2l ``init_cnn``): Xavier-uniform on every Conv2d/Linear weight; biases untouched."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
    return model


__all__ = ["ModelSpec", "create_model", "get_model_spec", "init_xavier_", "list_models", "register_model"]
