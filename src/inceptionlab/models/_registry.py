"""One registry for every model: ``@register_model`` on a factory, ``create_model(name)``, ``list_models()``.

The CLI, the trainer, the analysis functions and the tests all go through this module, so a new variant is
one file and one decorator.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from inceptionlab.argcheck import NAME, check, whole
from inceptionlab.errors import UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[..., nn.Module]
    natural_size: int  # the input size the model is meant for (side of a square image)
    family: str
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, natural_size: int = 96, family: str = "", description: str = ""):
    """Decorator: register ``factory(num_classes, in_channels, **options) -> nn.Module`` under ``name``."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if not description and factory.__doc__:
            doc = factory.__doc__.strip().splitlines()[0]
        else:
            doc = description
        _REGISTRY[name] = ModelSpec(name, factory, natural_size, family or name, doc)
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, in registration order."""
    return list(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    check(name=(name, NAME))
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Available models: {', '.join(_REGISTRY)}"
        ) from None


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, **options) -> nn.Module:
    """Build a registered model. ``options`` go to the model's factory (e.g. ``dropout=0.4``)."""
    check(name=(name, NAME), num_classes=(num_classes, whole(1)), in_channels=(in_channels, whole(1)))
    spec = get_model_spec(name)
    return spec.factory(num_classes=num_classes, in_channels=in_channels, **options)
