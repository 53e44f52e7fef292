"""googlenet-28 and googlenet-lite: the chapter's GoogLeNet for native 28x28 inputs. Expected values come from the
chapter's layer table and the size arithmetic, written out here, not from the model code."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from inceptionlab.analysis import stage_shapes
from inceptionlab.data import resize_batch
from inceptionlab.models import create_model, get_model_spec, list_models
from inceptionlab.models._blocks import ConvBN
from inceptionlab.models.googlenet import Inception

# the chapter's Inception table (d2l 8.4): in_channels, c1, c2, c3, c4 for b3, b4, b5
CHAPTER_TABLE = {
    "b3": [(192, 64, (96, 128), (16, 32), 32), (256, 128, (128, 192), (32, 96), 64)],
    "b4": [(480, 192, (96, 208), (16, 48), 64), (512, 160, (112, 224), (24, 64), 64),
           (512, 128, (128, 256), (24, 64), 64), (512, 112, (144, 288), (32, 64), 64),
           (528, 256, (160, 320), (32, 128), 128)],
    "b5": [(832, 256, (160, 320), (32, 128), 128), (832, 384, (192, 384), (48, 128), 128)],
}


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout  # weights + biases


def inception(cin, c1, c2, c3, c4) -> int:
    return (conv(1, cin, c1) + conv(1, cin, c2[0]) + conv(3, c2[0], c2[1]) + conv(1, cin, c3[0])
            + conv(5, c3[0], c3[1]) + conv(1, cin, c4))


def expected_stage_params() -> dict[str, int]:
    stages = {"b1": conv(7, 1, 64), "b2": conv(1, 64, 64) + conv(3, 64, 192)}
    stages.update({name: sum(inception(*row) for row in rows) for name, rows in CHAPTER_TABLE.items()})
    stages["head"] = 1024 * 10 + 10
    return stages


# 28 -> b1 (7x7, stride 1, no pool) 28 -> b2's 3x3/2 pool 14 -> b3's pool 7 -> b4's pool 4 -> global pool
EXPECTED_SHAPES = {"b1": (64, 28, 28), "b2": (192, 14, 14), "b3": (480, 7, 7), "b4": (832, 4, 4), "b5": (1024,),
                   "head": (10,)}


def test_registered_for_native_28_pixel_inputs():
    assert "googlenet-28" in list_models()
    spec = get_model_spec("googlenet-28")
    assert spec.natural_size == 28 and spec.family == "googlenet"


def test_forward_on_real_28_pixel_images(fmnist):
    torch.manual_seed(0)
    model = create_model("googlenet-28").eval()
    x = resize_batch(fmnist.test_images[:4], 28)  # no resampling at 28: pixels / 255
    with torch.no_grad():
        out = model(x)
        assert out.shape == (4, 10) and torch.isfinite(out).all()
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), out)


def test_shape_walk_through_at_28():
    model = create_model("googlenet-28").eval()
    x = torch.zeros(1, 1, 28, 28)
    with torch.no_grad():
        for stage, shape in EXPECTED_SHAPES.items():
            x = getattr(model, stage)(x)
            assert tuple(x.shape[1:]) == shape, stage
    # `inceptionlab shapes --model googlenet-28` walks the same stages
    assert {r.name: r.shape for r in stage_shapes("googlenet-28", 28)} == EXPECTED_SHAPES


def test_parameter_count_from_the_layer_table():
    model = create_model("googlenet-28")
    expected = expected_stage_params()
    assert {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in expected} == expected
    assert sum(p.numel() for p in model.parameters()) == sum(expected.values()) == 5_977_530


def block_table(model: nn.Module, stage: str) -> list[tuple]:
    """(in_channels, c1, c2, c3, c4) of each Inception block of a stage, read from its convolutions."""
    def c(unit):  # an nn.Conv2d, or the convolution of a conv -> BN unit
        return getattr(unit, "conv", unit)

    return [(c(b.b1_1).in_channels, c(b.b1_1).out_channels, (c(b.b2_1).out_channels, c(b.b2_2).out_channels),
             (c(b.b3_1).out_channels, c(b.b3_2).out_channels), c(b.b4_2).out_channels)
            for b in getattr(model, stage) if isinstance(b, Inception)]


@pytest.mark.parametrize("stage", list(CHAPTER_TABLE))
def test_inception_blocks_are_the_chapters(stage):
    ours, chapter = create_model("googlenet-28"), create_model("googlenet")
    assert block_table(ours, stage) == CHAPTER_TABLE[stage] == block_table(chapter, stage)
    kernels = {(b.b2_2.kernel_size, b.b3_2.kernel_size) for b in getattr(ours, stage) if isinstance(b, Inception)}
    assert kernels == {((3, 3), (5, 5))}


# googlenet-lite: Inception-BN (conv without bias -> BN), every channel of the chapter's table halved, b1 without
# its pool: 28 -> b1 (7x7, stride 2) 14 -> b2's pool 7 -> b3's pool 4 -> b4's pool 2 -> global pool
LITE_SHAPES = {"b1": (32, 14, 14), "b2": (96, 7, 7), "b3": (240, 4, 4), "b4": (416, 2, 2), "b5": (512,),
               "head": (10,)}


def halved(row):
    return tuple(halved(c) for c in row) if isinstance(row, tuple) else row // 2


def conv_bn(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + 2 * cout  # weights, BN's gamma and beta


def lite_stage_params() -> dict[str, int]:
    def block(cin, c1, c2, c3, c4):
        return (conv_bn(1, cin, c1) + conv_bn(1, cin, c2[0]) + conv_bn(3, c2[0], c2[1]) + conv_bn(1, cin, c3[0])
                + conv_bn(5, c3[0], c3[1]) + conv_bn(1, cin, c4))

    stages = {"b1": conv_bn(7, 1, 32), "b2": conv_bn(1, 32, 32) + conv_bn(3, 32, 96)}
    stages.update({name: sum(block(*halved(row)) for row in rows) for name, rows in CHAPTER_TABLE.items()})
    stages["head"] = 512 * 10 + 10
    return stages


def test_lite_is_the_halved_table_with_batchnorm():
    model = create_model("googlenet-lite")
    assert get_model_spec("googlenet-lite").natural_size == 28
    for stage, rows in CHAPTER_TABLE.items():
        assert block_table(model, stage) == [halved(row) for row in rows]
    expected = lite_stage_params()
    assert {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in expected} == expected
    assert sum(expected.values()) == 1_503_194
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]) == len(convs) == 57


def test_lite_shape_walk_through_at_28(fmnist):
    model = create_model("googlenet-lite").eval()
    x = resize_batch(fmnist.test_images[:2], 28)
    with torch.no_grad():
        for stage, shape in LITE_SHAPES.items():
            x = getattr(model, stage)(x)
            assert tuple(x.shape[1:]) == shape, stage
    assert {r.name: r.shape for r in stage_shapes("googlenet-lite", 28)} == LITE_SHAPES


def test_lite_at_a_sixteenth_of_the_width_is_the_table_divided_by_16():
    # every channel count of the chapter's table divided by 16: a multiple of 16 keeps its quotient (16 -> 1 channel),
    # 24 -> 1.5 -> 2 (to the nearest, half up or half to even alike); the block outputs stay consistent (256 / 16 = 16
    # = 4 + 8 + 2 + 2), so the network runs: 4 / 12 / 30 / 52 / 64 channels after b1 ... b5
    def sixteenth(row):
        return tuple(sixteenth(c) for c in row) if isinstance(row, tuple) else int(row / 16 + 0.5)

    model = create_model("googlenet-lite", width=1 / 16).eval()
    for stage, rows in CHAPTER_TABLE.items():
        assert block_table(model, stage) == [sixteenth(row) for row in rows], stage
    assert block_table(model, "b3")[0] == (12, 4, (6, 8), (1, 2), 2)
    shapes = {"b1": (4, 14, 14), "b2": (12, 7, 7), "b3": (30, 4, 4), "b4": (52, 2, 2), "b5": (64,), "head": (10,)}
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        for stage, shape in shapes.items():
            x = getattr(model, stage)(x)
            assert tuple(x.shape[1:]) == shape, stage


@pytest.mark.parametrize("width", [0.1, 0.3])
def test_lite_at_any_width_feeds_each_block_what_the_previous_one_outputs(width):
    # each branch is rounded on its own, so the sum a block outputs can differ from the table's next input rounded:
    # at 0.1 b3's first block outputs 6 + 13 + 3 + 3 = 25 channels where 256 x 0.1 rounds to 26
    def scaled(c):
        return max(1, int(c * width + 0.5))

    model = create_model("googlenet-lite", width=width).eval()
    channels, mismatches = scaled(192), 0
    for stage, rows in CHAPTER_TABLE.items():
        expected = []
        for cin, c1, (r2, c2), (r3, c3), c4 in rows:
            mismatches += channels != scaled(cin)
            expected.append((channels, scaled(c1), (scaled(r2), scaled(c2)), (scaled(r3), scaled(c3)), scaled(c4)))
            channels = scaled(c1) + scaled(c2) + scaled(c3) + scaled(c4)
        assert block_table(model, stage) == expected, stage
    assert mismatches > 0 and model.head.in_features == channels
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_lite_with_fewer_blocks_keeps_the_first_rows_of_each_stage_fed_by_the_previous_block():
    # blocks=(2, 2, 1) at width 0.5: b3's two rows, b4's first two, b5's first; b5's first block reads what b4's second
    # concatenates (112 + 112 + 32 + 32 = 288), not the table's 832 / 2 = 416
    model = create_model("googlenet-lite", blocks=(2, 2, 1)).eval()
    b4_out = 80 + 112 + 32 + 32
    assert block_table(model, "b3") == [halved(row) for row in CHAPTER_TABLE["b3"]]
    assert block_table(model, "b4") == [halved(row) for row in CHAPTER_TABLE["b4"][:2]]
    assert block_table(model, "b5") == [(b4_out, 128, (80, 160), (16, 64), 64)]
    b5_params = (conv_bn(1, b4_out, 128) + conv_bn(1, b4_out, 80) + conv_bn(3, 80, 160) + conv_bn(1, b4_out, 16)
                 + conv_bn(5, 16, 64) + conv_bn(1, b4_out, 64))
    stage = lite_stage_params()
    expected = {**stage, "b4": sum(lite_block for lite_block in (
        conv_bn(1, c, c1) + conv_bn(1, c, r2) + conv_bn(3, r2, c2) + conv_bn(1, c, r3) + conv_bn(5, r3, c3)
        + conv_bn(1, c, c4) for c, c1, (r2, c2), (r3, c3), c4 in map(halved, CHAPTER_TABLE["b4"][:2]))),
        "b5": b5_params, "head": 416 * 10 + 10}
    assert {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in expected} == expected
    shapes = {**LITE_SHAPES, "b4": (b4_out, 2, 2), "b5": (416,)}
    assert {r.name: r.shape for r in stage_shapes("googlenet-lite", 28, blocks=(2, 2, 1))} == shapes


def test_lite_without_b5_blocks_pools_b4_globally(fmnist):
    # no b5 block: b4 keeps its 4x4 grid (no 3x3/2 pool) and b5 is the global average pool
    model = create_model("googlenet-lite", width=0.375, blocks=[2, 2, 0]).eval()
    assert len([m for m in model.modules() if isinstance(m, Inception)]) == 4
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.b4.children())
    x = resize_batch(fmnist.test_images[:3], 28)
    with torch.no_grad():
        b4 = model.b4(model.b3(model.b2(model.b1(x))))
        assert b4.shape == (3, 60 + 84 + 24 + 24, 4, 4)  # b4's second row (160, 224, 64, 64) x 0.375
        torch.testing.assert_close(model.b5(b4), b4.mean(dim=(2, 3)))
        assert model(x).shape == (3, 10) and model.head.in_features == b4.shape[1]


@pytest.mark.parametrize("blocks", [(0, 5, 2), (2, 0, 2), (2, 6, 2), (2, 5, 3), (2, 5, -1), (2, 5), (2, 5, 2, 1),
                                    (2.0, 5, 2), (True, 5, 2), "252", 252, None])
def test_lite_refuses_blocks_outside_the_chapters_table(blocks):
    with pytest.raises(ValueError, match=r"^googlenet-lite's blocks must be 3 whole numbers \(b3, b4, b5\)"):
        create_model("googlenet-lite", blocks=blocks)


@pytest.mark.parametrize("width", [0, 1.5, -0.5, float("nan"), "0.5", True, None])
def test_lite_refuses_a_width_outside_0_to_1(width):
    with pytest.raises(ValueError, match=r"^googlenet-lite's width must be a number in \(0, 1\]"):
        create_model("googlenet-lite", width=width)


def reference_b2(model, x: torch.Tensor, pool_first: bool) -> torch.Tensor:
    """b2 written with PyTorch's functional API from the module's own weights (eval: BatchNorm's running stats)."""
    def conv_bn_relu(unit, x, padding):
        bn = unit.bn
        y = F.conv2d(x, unit.conv.weight, padding=padding)
        return F.relu(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))

    reduce, widen = [m for m in model.b2 if isinstance(m, ConvBN)]
    x = conv_bn_relu(reduce, x, padding=0)
    if pool_first:
        return conv_bn_relu(widen, F.max_pool2d(x, 3, stride=2, padding=1), padding=1)
    return F.max_pool2d(conv_bn_relu(widen, x, padding=1), 3, stride=2, padding=1)


@pytest.mark.parametrize("pool_first", [False, True])
def test_lite_b2_pools_after_its_3x3_convolution_or_before_it_with_pool_first(fmnist, pool_first):
    torch.manual_seed(0)
    model = create_model("googlenet-lite", blocks=(2, 1, 1), pool_first=pool_first)
    with torch.no_grad():  # running stats that are not BatchNorm's identity, so that the reference must apply them
        for bn in (m for m in model.b2.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = model.b1(resize_batch(fmnist.test_images[:4], 28))
    with torch.no_grad():
        out = model.b2(x)
        torch.testing.assert_close(out, reference_b2(model, x, pool_first))
        assert out.shape == (4, 96, 7, 7)
        other = reference_b2(model, x, not pool_first)
        assert (out - other).abs().max() > 0.1  # the two orders are different functions of the same weights


def test_lite_pool_first_keeps_the_parameters_and_quarters_b2s_3x3_arithmetic():
    # the 3x3 convolution (32 -> 96 channels at width 0.5) runs on b2's pooled 7x7 grid instead of 14x14:
    # 9 x 32 x 96 multiply-adds (2 FLOPs each) per output cell, 196 - 49 cells fewer per image
    def forward_flops(model):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.rand(1, 1, 28, 28))
        return counter.get_total_flops()

    plain, pooled = (create_model("googlenet-lite", blocks=(2, 1, 1), pool_first=p).eval() for p in (False, True))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in pooled.parameters()) == 483_658
    assert forward_flops(plain) - forward_flops(pooled) == 2 * 9 * 32 * 96 * (196 - 49)
    assert {r.name: r.shape for r in stage_shapes("googlenet-lite", 28, blocks=(2, 1, 1), pool_first=True)} == {
        r.name: r.shape for r in stage_shapes("googlenet-lite", 28, blocks=(2, 1, 1))}


@pytest.mark.parametrize("pool_first", [1, 0, "true", None])
def test_lite_refuses_a_pool_first_that_is_not_true_or_false(pool_first):
    with pytest.raises(ValueError, match=r"^googlenet-lite's pool_first must be true or false, got "):
        create_model("googlenet-lite", pool_first=pool_first)
