"""inceptionlab.inputs: the criterion and the one forward-and-loss function, against PyTorch's functional
cross-entropy on real Fashion-MNIST images (the model's input statistics computed here from the training split); the
rest of the module (class names, standardisation, layout, autocast, aux weight, the pixel wrapper) against references
written in the tests."""

from __future__ import annotations

import importlib
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab.config import TrainConfig
from inceptionlab.data import DataInfo
from inceptionlab.errors import ConfigError
from inceptionlab.inputs import (
    PixelInput,
    autocast_context,
    aux_loss_weight,
    class_names,
    forward_loss,
    make_criterion,
    normalization,
    normalize,
    pixel_model,
    prepare_input,
    prepare_model,
)
from inceptionlab.models import create_model, init_xavier_

# Fashion-MNIST's class names as Zalando publishes them (github.com/zalandoresearch/fashion-mnist, "Labels").
PUBLISHED_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def _train_stats(fmnist) -> tuple[float, float]:
    pixels = fmnist.train_images.double() / 255
    return float(pixels.mean()), float(pixels.std())


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_criterion_is_functional_cross_entropy_with_the_configs_smoothing(fmnist, smoothing):
    torch.manual_seed(0)
    logits, y = 3 * torch.randn(64, 10), fmnist.train_labels[:64]
    got = make_criterion(TrainConfig(label_smoothing=smoothing))(logits, y)
    assert torch.equal(got, F.cross_entropy(logits, y, label_smoothing=smoothing))
    other = F.cross_entropy(logits, y, label_smoothing=0.2 if smoothing != 0.2 else 0.0)
    assert abs(float(got - other)) > 1e-3  # the smoothing changes this loss: the comparison can tell


@pytest.mark.parametrize("normalize", [False, True])
def test_forward_loss_is_cross_entropy_of_the_models_logits(fmnist, normalize):
    config = TrainConfig(model="lenet", image_size=28, label_smoothing=0.1, normalize=normalize, precision="fp32")
    torch.manual_seed(0)
    model = init_xavier_(create_model("lenet")).double()
    x, y = fmnist.test_images[:32].double() / 255, fmnist.test_labels[:32]
    loss, logits = forward_loss(model, x, y, make_criterion(config), config)
    if normalize:  # d2l feeds [0, 1]; normalize=True standardises with the training split's statistics
        pixels = fmnist.train_images.double() / 255
        x = (x - pixels.mean()) / pixels.std()
    with torch.no_grad():
        expected_logits = model(x)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, F.cross_entropy(expected_logits, y, label_smoothing=0.1), rtol=0, atol=1e-6)
    assert forward_loss(model, x, y, None, config)[0] is None  # evaluation: logits only


def test_forward_loss_adds_the_aux_losses_with_the_given_weight(fmnist):
    """googlenet-paper in training mode: the main loss plus ``aux_weight`` x each auxiliary head's loss."""
    config = TrainConfig(model="googlenet-paper", image_size=32, label_smoothing=0.2, precision="fp32")
    torch.manual_seed(0)
    model = create_model("googlenet-paper").double().train()
    x = F.interpolate(fmnist.test_images[:4].double() / 255, size=32)
    y = fmnist.test_labels[:4]
    torch.manual_seed(1)
    loss, logits = forward_loss(model, x, y, make_criterion(config), config, aux_weight=0.5)
    torch.manual_seed(1)  # the same dropout masks
    main, (aux1, aux2) = model(x)
    ce = [F.cross_entropy(out, y, label_smoothing=0.2) for out in (main, aux1, aux2)]
    torch.testing.assert_close(loss, ce[0] + 0.5 * (ce[1] + ce[2]), rtol=0, atol=1e-9)
    torch.testing.assert_close(logits, main, rtol=0, atol=0)
    torch.manual_seed(1)
    default, _ = forward_loss(model, x, y, make_criterion(config), config)
    torch.testing.assert_close(default, ce[0] + 0.3 * (ce[1] + ce[2]), rtol=0, atol=1e-9)  # the paper's 0.3


def test_class_names_are_the_runs_data_and_fashion_mnists_for_a_run_that_records_none():
    names = class_names(TrainConfig())
    assert isinstance(names, list) and len(names) == 10
    for name, published in zip(names, PUBLISHED_NAMES, strict=True):  # lower case, "T-shirt/top" shortened
        assert published.lower().startswith(name), (name, published)
    names.append("changed")  # a fresh list each call: a caller's edit does not leak into the next one
    assert len(class_names(TrainConfig())) == 10
    info = DataInfo(("leaf", "stem", "root"), 3, 64, (0.1, 0.2, 0.3), (0.2, 0.2, 0.2), "folder")
    assert class_names(TrainConfig(data_info=info.to_dict())) == ["leaf", "stem", "root"]


def test_normalization_is_the_training_splits_statistics_only_when_asked(fmnist):
    mean, std = _train_stats(fmnist)
    got = normalization(TrainConfig(normalize=True))
    assert isinstance(got, tuple) and len(got) == 2 and len(got[0]) == len(got[1]) == 1
    assert abs(got[0][0] - mean) < 1e-6 and abs(got[1][0] - std) < 1e-6
    info = DataInfo(("a", "b"), 3, 8, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "folder")
    assert normalization(TrainConfig(normalize=True, data_info=info.to_dict())) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert normalization(TrainConfig(normalize=False)) is None


def test_normalize_standardises_with_the_training_splits_mean_and_std(fmnist):
    mean, std = _train_stats(fmnist)
    x = fmnist.test_images[:8].double() / 255
    norm = normalization(TrainConfig(normalize=True))
    torch.testing.assert_close(normalize(x, *norm), (x - mean) / std, rtol=0, atol=1e-5)
    pixels = normalize(fmnist.train_images[:2000].double() / 255, *norm)  # about zero mean, unit std on training images
    assert abs(float(pixels.mean())) < 0.05 and abs(float(pixels.std()) - 1) < 0.05


@pytest.mark.parametrize("normalize_", [False, True])
def test_prepare_input_with_channels_last_keeps_the_values_in_the_other_layout(fmnist, normalize_):
    x = fmnist.test_images[:4].float().expand(4, 3, 28, 28) / 255
    config = TrainConfig(normalize=normalize_, channels_last=True, precision="fp32")
    got = prepare_input(x, config)
    assert got.is_contiguous(memory_format=torch.channels_last)
    mean, std = _train_stats(fmnist)
    torch.testing.assert_close(got, (x - mean) / std if normalize_ else x, rtol=0, atol=1e-5)
    plain = prepare_input(x.contiguous(), config.replace(channels_last=False))
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_prepare_model_puts_the_weights_in_the_runs_layout(channels_last):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    assert prepare_model(model, TrainConfig(channels_last=channels_last, precision="fp32")) is model
    for conv in (model[0], model[2]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last


def test_autocast_context_switches_on_the_configs_precision_and_cache():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    with autocast_context(TrainConfig(precision="fp32"), cpu):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast_context(TrainConfig(precision=precision), cpu):
            assert torch.is_autocast_enabled("cpu")
            assert torch.get_autocast_dtype("cpu") == dtype
            assert (a @ b).dtype == dtype
            assert torch.is_autocast_cache_enabled()  # the default
        with autocast_context(TrainConfig(precision=precision), cpu, cache_enabled=False):
            assert not torch.is_autocast_cache_enabled()  # inside CUDA-graph capture
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ConfigError, match="auto") as info:  # "auto" is resolved per device before it gets here
        autocast_context(TrainConfig(precision="auto"), cpu)
    named = re.search(r"\(([\w.]+)\)", str(info.value))  # the message names the function that resolves it
    module, _, function = named.group(1).rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))


def test_forward_loss_runs_the_model_under_the_configs_autocast_and_cache():
    seen = []

    def model(x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled()))
        return x.flatten(1)[:, :10]

    x, y = torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    forward_loss(model, x, y, None, TrainConfig(precision="bf16", channels_last=False))
    forward_loss(model, x, y, None, TrainConfig(precision="bf16", channels_last=False), cache_enabled=False)
    forward_loss(model, x, y, None, TrainConfig(precision="fp32"))
    assert seen == [(True, True), (True, False), (False, True)]


class _Weighted(nn.Module):
    aux_loss_weight = 1.0


class _Wrapper(nn.Module):  # what DistributedDataParallel looks like from outside: the model is `.module`
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_aux_loss_weight_is_the_models_own_and_the_papers_otherwise():
    assert aux_loss_weight(_Weighted()) == 1.0
    assert aux_loss_weight(_Wrapper(_Weighted())) == 1.0  # read through the wrapper
    assert aux_loss_weight(nn.Linear(2, 2)) == pytest.approx(0.3)  # GoogLeNet paper, sec. 5: "weighted by 0.3"
    assert aux_loss_weight(_Wrapper(nn.Linear(2, 2))) == pytest.approx(0.3)


def test_pixel_input_standardises_before_the_model():
    torch.manual_seed(0)
    inner = nn.Linear(3, 2)
    x = torch.rand(5, 3)
    net = PixelInput(inner, (0.5,), (0.25,))
    assert net.model is inner
    torch.testing.assert_close(net(x), inner((x - 0.5) * 4), rtol=0, atol=1e-6)  # by hand: / 0.25 is * 4


def test_pixel_model_wraps_only_a_standardised_run_and_evaluates(fmnist):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(28 * 28, 10)).train()
    x = fmnist.test_images[:6].float() / 255
    net = pixel_model(model, TrainConfig(normalize=True))
    assert isinstance(net, PixelInput) and not net.training and not model.training  # eval: no dropout
    mean, std = _train_stats(fmnist)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model((x - mean) / std), rtol=0, atol=1e-4)
    plain = nn.Linear(2, 2).train()
    assert pixel_model(plain, TrainConfig(normalize=False)) is plain and not plain.training  # eval either way


def test_normalize_is_per_channel_for_rgb_data_and_the_pixel_input_does_the_same():
    """Three channels, each standardised with its own statistics (torch's broadcasting in the test is the
    reference), and the exported wrapper computes exactly what training fed the model."""
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    reference = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), reference, rtol=0, atol=1e-6)
    inner = nn.Identity()
    torch.testing.assert_close(PixelInput(inner, mean, std)(x), reference, rtol=0, atol=1e-6)
    info = DataInfo(("a", "b"), 3, 8, mean, std, "folder")
    config = TrainConfig(normalize=True, channels_last=False, precision="fp32", data_info=info.to_dict())
    torch.testing.assert_close(prepare_input(x, config), reference, rtol=0, atol=1e-6)
