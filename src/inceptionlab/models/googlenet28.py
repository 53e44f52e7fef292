"""``googlenet-28``: the chapter's GoogLeNet for Fashion-MNIST's native 28x28 images (not upsampled to 96).

The chapter feeds 96x96 images, which the stem shrinks by 8 (96 -> 48 -> 24 -> 12) before the first Inception
block, so b3 / b4 / b5 work on 12x12 / 6x6 / 3x3 grids. Fed 28x28 images the same network runs them on 4x4 / 2x2 /
1x1 grids (28 -> 14 -> 7 -> 4 after the stem), where a 3x3 or 5x5 branch mostly sees padding.

The one change: b1 keeps its 7x7 convolution with 64 channels but drops its stride 2 and the 3x3/2 max-pool after
it, so the stem shrinks by 2 instead of 8 and b3 / b4 / b5 work on 14x14 / 7x7 / 4x4 grids, close to the chapter's
12 / 6 / 3. b2, the Inception channel table of b3-b5, the pools between the stages, the global average pool and
the linear head are the chapter's, so the parameters (5,977,530) and their names are the same as ``googlenet``'s.
That keeps the chapter's arithmetic per grid cell: 0.755 GFLOP per image, more than the 96 px network.

``googlenet-lite`` is the cheap way to the same end, for a CPU: Inception-BN (``googlenet-bn``'s layers) with every
channel count of the chapter's table halved and only b1's max-pool dropped, so b2 / b3 / b4 / b5 work on 14 / 7 / 4 /
2 grids at 28 px (``googlenet-bn``: 7 / 4 / 2 / 1) for 0.053 GFLOP per image (``googlenet-bn`` at 28 px: 0.058) and
1,503,194 parameters. The ``quick`` preset trains it with ``blocks=(2, 1, 1)``: one Inception block in b4 and in b5
(EXPERIMENTS.md (9)).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from inceptionlab.models._blocks import ConvBN
from inceptionlab.models._registry import register_model
from inceptionlab.models.googlenet import CHAPTER_BLOCKS, ConvFactory, GoogLeNet


class GoogLeNet28(GoogLeNet):
    """d2l's GoogLeNet whose stem does not downsample before b2's pool (see the module docstring)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, conv_block: ConvFactory = nn.Conv2d):
        super().__init__(num_classes=num_classes, in_channels=in_channels, conv_block=conv_block)
        # deviation: stride 1 and no pool, so that b3-b5 see 14 / 7 / 4 grids instead of 4 / 2 / 1
        self.b1 = nn.Sequential(
            conv_block(in_channels, 64, kernel_size=7, padding=3), nn.ReLU()
        )  # N x 64 x 28 x 28 (for 28 x 28 input)
        # the chapter's stages from here on: b2 -> N x 192 x 14 x 14, b3 -> N x 480 x 7 x 7,
        # b4 -> N x 832 x 4 x 4, b5 -> N x 1024, head -> N x num_classes


@register_model("googlenet-28", natural_size=28, family="googlenet")
def googlenet_28(num_classes: int = 10, in_channels: int = 1) -> GoogLeNet28:
    """The chapter's GoogLeNet for native 28x28 inputs: b1 without its stride 2 and pool (b3-b5 on 14/7/4 grids)."""
    return GoogLeNet28(num_classes=num_classes, in_channels=in_channels)


@register_model("googlenet-lite", natural_size=28, family="googlenet")
def googlenet_lite(num_classes: int = 10, in_channels: int = 1, width: float = 0.5,
                   blocks: Sequence[int] = CHAPTER_BLOCKS, pool_first: bool = False) -> GoogLeNet:
    """Inception-BN for 28x28 on a CPU: the chapter's channels halved, b1 without its pool (b3-b5 on 7/4/2 grids)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise ValueError(f"googlenet-lite's width must be a number in (0, 1], got {width!r}")
    if not isinstance(pool_first, bool):
        raise ValueError(f"googlenet-lite's pool_first must be true or false, got {pool_first!r}")
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels, conv_block=ConvBN, width=width,
                     stem_pool=False, blocks=_checked_blocks(blocks), pool_first=pool_first)


def _checked_blocks(blocks) -> tuple[int, int, int]:
    """``blocks`` as (b3, b4, b5) Inception blocks kept of the chapter's (2, 5, 2): at least one in b3 and b4."""
    ranges = zip((1, 1, 0), CHAPTER_BLOCKS, strict=True)
    if (isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence) or len(blocks) != 3
            or not all(type(n) is int and low <= n <= most for n, (low, most) in zip(blocks, ranges, strict=True))):
        raise ValueError(f"googlenet-lite's blocks must be 3 whole numbers (b3, b4, b5) from (1, 1, 0) up to "
                         f"{CHAPTER_BLOCKS}, got {blocks!r}")
    return tuple(blocks)
