"""d2l's GoogLeNet: the chapter's parameter count and stage shapes, and the weights of the chapter's own code."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from inceptionlab.models import create_model
from inceptionlab.models.googlenet import (
    GoogLeNet,
    Inception,
    chapter_key_to_ours,
    load_chapter_state_dict,
    to_chapter_state_dict,
)

# d2l 0.17's notebook version (``nn.Sequential(b1, ..., b5, nn.Linear(1024, 10))``, branches ``p1_1`` ...) is the
# one the d2l reference loop of the benchmarks trains: the same independent definition serves both
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import d2l_reference  # noqa: E402


def test_chapter_parameter_count():
    model = create_model("googlenet")
    assert sum(p.numel() for p in model.parameters()) == 5_977_530


def test_chapter_stage_shapes_at_96():
    model = create_model("googlenet").eval()
    x = torch.zeros(1, 1, 96, 96)
    expected = {"b1": (64, 24, 24), "b2": (192, 12, 12), "b3": (480, 6, 6), "b4": (832, 3, 3), "b5": (1024,)}
    for stage, shape in expected.items():
        x = getattr(model, stage)(x)
        assert tuple(x.shape[1:]) == shape, stage
    assert model.head(x).shape == (1, 10)


def test_chapter_state_dict_round_trip():
    torch.manual_seed(0)
    source = create_model("googlenet").eval()
    chapter = to_chapter_state_dict(source)
    assert "net.0.0.weight" in chapter and "net.5.weight" in chapter
    # d2l 0.17 notebook layout: no "net." prefix and branches named p1_1, p2_1, ...
    old_layout = {k.removeprefix("net.").replace(".b1_1.", ".p1_1.").replace(".b3_2.", ".p3_2."): v
                  for k, v in chapter.items()}
    x = torch.rand(2, 1, 96, 96)
    for state in (chapter, old_layout):
        target = create_model("googlenet").eval()
        load_chapter_state_dict(target, state)
        torch.testing.assert_close(target(x), source(x))


def test_each_inception_blocks_out_channels_is_the_width_it_outputs():
    # the chapter's text: the nine blocks output 256, 480 (b3), 512, 512, 512, 528, 832 (b4), 832, 1024 (b5)
    model = create_model("googlenet").eval()
    blocks = [m for m in model.modules() if isinstance(m, Inception)]
    widths = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: widths.append(out.shape[1])) for b in blocks]
    with torch.no_grad():
        model(torch.rand(1, 1, 32, 32))
    for hook in hooks:
        hook.remove()
    assert widths == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert [b.out_channels for b in blocks] == widths


def test_the_class_defaults_are_the_chapters_fashion_mnist_network():
    # GoogLeNet() without arguments: one input channel, ten classes, the chapter's 5,977,530 parameters
    with torch.device("meta"):
        model = GoogLeNet()
    assert model.b1[0].in_channels == 1 and model.head.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == 5_977_530


def test_a_key_outside_the_chapters_layout_is_refused_by_name():
    assert chapter_key_to_ours("net.5.weight") == "head.weight"
    with pytest.raises(KeyError, match=r"'net\.6\.weight' is not a key of the chapter's GoogLeNet"):
        chapter_key_to_ours("net.6.weight")


def test_loading_the_chapters_weights_is_strict_unless_told_otherwise():
    # torch's load_state_dict semantics: strict raises on a missing tensor, strict=False reports it
    partial = {k: v for k, v in to_chapter_state_dict(create_model("googlenet")).items() if k != "net.5.bias"}
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "head\.bias"'):
        load_chapter_state_dict(create_model("googlenet"), partial)
    result = load_chapter_state_dict(create_model("googlenet"), partial, strict=False)
    assert result.missing_keys == ["head.bias"] and result.unexpected_keys == []


# ---------------------------------------------------------------------------------------------------------
# The chapter's own network, written here as d2l writes it (independent of inceptionlab.models.googlenet): its
# state dict, loaded through load_chapter_state_dict, must give our model the chapter's outputs to the last bit.


class ChapterInception(nn.Module):
    """d2l 1.0, "Multi-Branch Networks (GoogLeNet)": ``Inception(c1, c2, c3, c4)`` on lazy convolutions."""

    def __init__(self, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        self.b1_1 = nn.LazyConv2d(c1, kernel_size=1)
        self.b2_1 = nn.LazyConv2d(c2[0], kernel_size=1)
        self.b2_2 = nn.LazyConv2d(c2[1], kernel_size=3, padding=1)
        self.b3_1 = nn.LazyConv2d(c3[0], kernel_size=1)
        self.b3_2 = nn.LazyConv2d(c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = nn.LazyConv2d(c4, kernel_size=1)

    def forward(self, x):
        b1 = F.relu(self.b1_1(x))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
        b4 = F.relu(self.b4_2(self.b4_1(x)))
        return torch.cat((b1, b2, b3, b4), dim=1)


class ChapterGoogleNet(nn.Module):
    """d2l 1.0's ``GoogleNet`` (its ``b1`` ... ``b5`` methods, then ``self.net``), without the d2l base class."""

    def b1(self):
        return nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
                             nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def b2(self):
        return nn.Sequential(nn.LazyConv2d(64, kernel_size=1), nn.ReLU(),
                             nn.LazyConv2d(192, kernel_size=3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def b3(self):
        return nn.Sequential(ChapterInception(64, (96, 128), (16, 32), 32),
                             ChapterInception(128, (128, 192), (32, 96), 64),
                             nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def b4(self):
        return nn.Sequential(ChapterInception(192, (96, 208), (16, 48), 64),
                             ChapterInception(160, (112, 224), (24, 64), 64),
                             ChapterInception(128, (128, 256), (24, 64), 64),
                             ChapterInception(112, (144, 288), (32, 64), 64),
                             ChapterInception(256, (160, 320), (32, 128), 128),
                             nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def b5(self):
        return nn.Sequential(ChapterInception(256, (160, 320), (32, 128), 128),
                             ChapterInception(384, (192, 384), (48, 128), 128),
                             nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())

    def __init__(self, num_classes=10):
        super().__init__()
        self.net = nn.Sequential(self.b1(), self.b2(), self.b3(), self.b4(), self.b5(), nn.LazyLinear(num_classes))

    def forward(self, x):
        return self.net(x)


def chapter_init_(net: nn.Module) -> nn.Module:
    """d2l's ``init_cnn``: Xavier-uniform on conv and linear weights; the biases keep PyTorch's random init."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
    return net


@pytest.fixture(scope="module")
def pil_images_96(fmnist):
    """Two real test images at 96 px, resized by Pillow (what d2l's Resize(96) + ToTensor feed), in float64."""
    pixels = [np.asarray(Image.fromarray(im.numpy()).resize((96, 96), Image.BILINEAR))
              for im in fmnist.test_images[:2, 0]]
    return torch.from_numpy(np.stack(pixels)).unsqueeze(1).double() / 255


def _outputs_match(reference: nn.Module, state: dict, x: torch.Tensor) -> None:
    ours = create_model("googlenet").double().eval()
    load_chapter_state_dict(ours, state)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.abs().max() > 0 and (expected[0] - expected[1]).abs().max() > 0  # not a dead network
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_chapter_googlenet_weights_give_the_chapters_outputs(pil_images_96):
    torch.manual_seed(0)
    chapter = ChapterGoogleNet()
    chapter(torch.zeros(1, 1, 96, 96))  # the lazy layers take their input channels from a first forward
    chapter = chapter_init_(chapter).double().eval()
    state = chapter.state_dict()
    assert "net.2.0.b1_1.weight" in state and state["net.2.0.b4_2.weight"].shape == (32, 192, 1, 1)
    _outputs_match(chapter, state, pil_images_96)


def test_notebook_googlenet_weights_give_the_notebooks_outputs(pil_images_96):
    torch.manual_seed(1)
    notebook = chapter_init_(d2l_reference.googlenet()).double().eval()
    state = notebook.state_dict()
    assert "0.0.weight" in state and "2.0.p1_1.weight" in state
    _outputs_match(notebook, state, pil_images_96)
