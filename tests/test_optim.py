"""inceptionlab.engine.optim: which parameters are decayed, checked by name against the modules that own them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inceptionlab.config import TrainConfig
from inceptionlab.engine.optim import build_optimizer, parameter_groups
from inceptionlab.models import create_model

BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def expected_decay(model: nn.Module) -> tuple[set[str], set[str]]:
    """(decayed, not decayed) parameter names: conv and linear weights are decayed; biases and BatchNorm's
    scale and shift are not (decided here from the owning module's type, not from tensor shapes)."""
    decay, no_decay = set(), set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            weight_of_conv_or_linear = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            assert weight_of_conv_or_linear or name == "bias" or isinstance(module, BN), full  # nothing unforeseen
            (decay if weight_of_conv_or_linear else no_decay).add(full)
    return decay, no_decay


def group_names(model: nn.Module, groups: list[dict]) -> list[tuple[float, set[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in groups]


@pytest.mark.parametrize("name", ["googlenet", "googlenet-bn", "inception-v3", "lenet"])
def test_weight_decay_falls_on_conv_and_linear_weights_only(name):
    with torch.device("meta"):
        model = create_model(name)
    decay, no_decay = expected_decay(model)
    assert decay and no_decay
    if name != "lenet":  # conv biases (googlenet) or BatchNorm parameters (the BN models) are among the exempt
        assert any(".bn." in n or n.endswith(".bias") for n in no_decay)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=5e-4), torch.device("cpu"))
    groups = group_names(model, optimizer.param_groups)
    assert sorted(groups, key=lambda g: -g[0]) == [(5e-4, decay), (0.0, no_decay)]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))  # each once


def test_batchnorm_parameters_are_exempt_by_name():
    with torch.device("meta"):
        model = create_model("googlenet-bn")
    groups = dict(group_names(model, parameter_groups(model, 5e-4)))
    assert {"b3.0.b2_2.bn.weight", "b3.0.b2_2.bn.bias", "head.bias"} <= groups[0.0]
    assert {"b3.0.b2_2.conv.weight", "b1.0.conv.weight", "head.weight"} <= groups[5e-4]


def test_no_weight_decay_is_one_group_of_every_parameter():
    with torch.device("meta"):
        model = create_model("googlenet-bn")
    groups = group_names(model, parameter_groups(model, 0.0))
    assert groups == [(0.0, {n for n, _ in model.named_parameters()})]


def test_a_decayed_sgd_step_shrinks_only_the_decayed_weights():
    """With zero gradients, plain SGD with weight decay wd multiplies each decayed weight by (1 - lr * wd) and
    leaves every other parameter where it was (torch.optim.SGD's documented update)."""
    torch.manual_seed(0)
    model = create_model("googlenet-bn")
    decay, _ = expected_decay(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    build_optimizer(model, TrainConfig(lr=0.5, weight_decay=0.1), torch.device("cpu")).step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.5 * 0.1) if n in decay else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=n)


@pytest.mark.parametrize(
    ("optimizer", "kind", "momentum", "nesterov"),
    [("sgd", torch.optim.SGD, 0.0, False), ("momentum", torch.optim.SGD, 0.9, False),
     ("nesterov", torch.optim.SGD, 0.9, True), ("adamw", torch.optim.AdamW, None, None)],
)
def test_optimizer_names_build_the_optimizers_they_name(optimizer, kind, momentum, nesterov):
    model = nn.Linear(3, 2)
    built = build_optimizer(model, TrainConfig(optimizer=optimizer, lr=0.25), torch.device("cpu"))
    assert type(built) is kind and all(g["lr"] == 0.25 for g in built.param_groups)
    if momentum is not None:
        assert [(g["momentum"], g["nesterov"]) for g in built.param_groups] == [(momentum, nesterov)]
