"""Every registered model: parameter counts, output shapes at several sizes, forward + backward, output contracts."""

import pytest
import torch
from torch import nn

from inceptionlab.errors import UnknownModelError
from inceptionlab.models import classification_loss, create_model, get_model_spec, init_xavier_, list_models

INCEPTION = ["googlenet", "googlenet-bn", "googlenet-28", "googlenet-lite", "googlenet-paper", "inception-v3",
             "inception-resnet"]
COMPARATORS = ["alexnet", "vgg11", "nin", "lenet"]



def meta_params(name: str) -> int:
    with torch.device("meta"):  # shapes only: counting VGG's 129M parameters without allocating them
        return sum(p.numel() for p in create_model(name).parameters())


def test_registry_lists_the_family_then_the_comparators():
    assert list_models() == INCEPTION + COMPARATORS
    assert {name: get_model_spec(name).natural_size for name in COMPARATORS} == {
        "alexnet": 224, "vgg11": 224, "nin": 224, "lenet": 28
    }
    with pytest.raises(UnknownModelError, match="Available models: googlenet"):
        create_model("googlenet-v9")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("googlenet", 5_977_530),  # ANCHORS.md, the chapter's figure
        ("alexnet", 46_764_746),  # ANCHORS.md: ~46.8 M
        ("vgg11", 128_806_154),  # ANCHORS.md: ~128.8 M
        ("nin", 1_992_166),  # ANCHORS.md: ~2.0 M
        ("lenet", 61_706),  # d2l 7.6 (classic LeNet-5 with 10 outputs)
    ],
)
def test_parameter_counts_match_the_chapters(name, expected):
    assert meta_params(name) == expected


def test_googlenet_bn_is_googlenet_with_bn_instead_of_conv_biases():
    plain, bn = create_model("googlenet"), create_model("googlenet-bn")
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) == 57
    assert not any(m.bias is not None for m in bn.modules() if isinstance(m, nn.Conv2d))
    # each conv trades its bias (C) for BN's gamma and beta (2C): the difference is exactly one C per conv
    assert meta_params("googlenet-bn") - meta_params("googlenet") == sum(c.out_channels for c in convs)


SIZES = {  # natural size and the small sizes each model accepts (googlenet at 96: tests/test_googlenet.py)
    "googlenet": [64, 28],
    "googlenet-bn": [96, 28],
    "googlenet-lite": [28, 96],
    "googlenet-paper": [32],  # 96 in the aux test; 28 is below its minimum (31, see test_analysis)
    "inception-v3": [96, 28],
    "inception-resnet": [96, 28],
    "nin": [67],  # its minimum; 224 costs ~1.5 GFLOP per image
    "lenet": [28],
}


@pytest.mark.parametrize("name", list(SIZES))
def test_forward_shape_at_several_sizes(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    for size in SIZES[name]:
        x = torch.rand(2, 1, size, size)
        with torch.no_grad():
            out = model(x)
            assert isinstance(out, torch.Tensor) and out.shape == (2, 10), size
            assert torch.isfinite(out).all()
            # forward_features / forward_head split the same computation
            torch.testing.assert_close(model.forward_head(model.forward_features(x)), out)


@pytest.mark.parametrize(("name", "size"), [(n, 28) for n in INCEPTION if n != "googlenet-paper"]
                         + [("googlenet-paper", 31), ("nin", 67), ("lenet", 28)])
def test_forward_backward_trains(name, size):
    torch.manual_seed(0)
    model = init_xavier_(create_model(name)).train()
    x, y = torch.rand(2, 1, size, size), torch.tensor([0, 3])
    loss = classification_loss(model(x), y, nn.CrossEntropyLoss())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.fixture(scope="module")
def big_models():
    """AlexNet and VGG-11 are built once: their 224x224 passes dominate this file's runtime."""
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in ("alexnet", "vgg11")}


def test_alexnet_and_vgg_forward_at_their_sizes(big_models):
    with torch.no_grad():
        assert big_models["alexnet"](torch.rand(1, 1, 224, 224)).shape == (1, 10)
        assert big_models["vgg11"](torch.rand(1, 1, 224, 224)).shape == (1, 10)


def test_alexnet_backward_at_its_minimum_size():
    # VGG-11's backward at 224 costs ~45 GFLOP on CPU; AlexNet at its smallest accepted size (193) is cheap
    model = create_model("alexnet").train()
    out = model(torch.rand(2, 1, 193, 193))
    classification_loss(out, torch.tensor([1, 2]), nn.CrossEntropyLoss()).backward()
    assert model.conv1[0].weight.grad.abs().sum() > 0


def test_googlenet_paper_aux_heads_only_in_training():
    torch.manual_seed(0)
    model = create_model("googlenet-paper")
    assert model.aux_loss_weight == 0.3
    x = torch.rand(2, 1, 96, 96)
    logits, (aux1, aux2) = model.train()(x)
    assert logits.shape == aux1.shape == aux2.shape == (2, 10)
    out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    # the paper's details
    assert model.aux1.dropout.p == 0.7 and model.head[0].p == 0.4
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    assert model.aux1.fc1.in_features == 128 * 4 * 4 and model.aux1.fc1.out_features == 1024
    assert any(m.kernel_size == (5, 5) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_classification_loss_adds_weighted_aux_losses():
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    logits, aux1, aux2 = torch.randn(3, 4, 10).unbind(0)
    y = torch.tensor([0, 3, 9, 1])
    expected = criterion(logits, y) + 0.3 * (criterion(aux1, y) + criterion(aux2, y))
    torch.testing.assert_close(classification_loss((logits, (aux1, aux2)), y, criterion), expected)
    torch.testing.assert_close(classification_loss(logits, y, criterion), criterion(logits, y))
    torch.testing.assert_close(
        classification_loss((logits, (aux1,)), y, criterion, aux_loss_weight=1.0),
        criterion(logits, y) + criterion(aux1, y),
    )


def test_inception_v3_and_resnet_use_the_papers_ideas():
    v3 = create_model("inception-v3")
    kernels = {m.kernel_size for m in v3.modules() if isinstance(m, nn.Conv2d)}
    assert (1, 3) in kernels and (3, 1) in kernels and (5, 5) not in kernels  # factorized, asymmetric
    assert any(isinstance(m, nn.BatchNorm2d) for m in v3.modules())
    resnet = create_model("inception-resnet")
    scales = sorted({m.scale for m in resnet.modules() if hasattr(m, "scale")})
    assert scales == [0.1, 0.17, 0.2]
