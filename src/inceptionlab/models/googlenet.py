"""d2l's simplified GoogLeNet (chapter "Multi-Branch Networks (GoogLeNet)"), layer for layer.

Same kernels, strides, paddings, channel splits and ReLU placement as the chapter; one Inception block is
four branches concatenated on channels:

    b1: 1x1 conv                       -> c1
    b2: 1x1 conv -> 3x3 conv (pad 1)   -> c2[1]
    b3: 1x1 conv -> 5x5 conv (pad 2)   -> c3[1]
    b4: 3x3 max-pool (s1, pad 1) -> 1x1 conv -> c4

Mapping onto the chapter's ``nn.Sequential`` (see :func:`load_chapter_state_dict`):

    chapter (d2l 1.0 class)         chapter (d2l 0.17 notebook)   inceptionlab
    net.0.* (b1)                    0.*                           b1.*
    net.1.* (b2)                    1.*                           b2.*
    net.2.* (b3)                    2.*                           b3.*
    net.3.* (b4)                    3.*                           b4.*
    net.4.* (b5)                    4.*                           b5.*
    net.5.* (LazyLinear head)       5.*                           head.*
    Inception .b1_1 .b2_1 ...       Inception .p1_1 .p2_1 ...     Inception .b1_1 .b2_1 ...

``googlenet-bn`` is the same network built with a different convolution unit (``conv_block``): every
convolution becomes conv (no bias) -> BatchNorm (Inception-BN, Ioffe & Szegedy 2015); the ReLUs stay where
they are. Its parameter names gain ``.conv`` / ``.bn`` (``b3.0.b2_2.conv.weight``).

Unlike torchvision's GoogLeNet (which keeps a 3x3 kernel in its "5x5" branch for weight compatibility),
the 5x5 branch here is a real 5x5, as in the chapter and the paper.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab.models._blocks import ConvBN, MultiBranch
from inceptionlab.models._registry import register_model

# A convolution factory with nn.Conv2d's signature (in, out, kernel_size, stride=, padding=). Swapping it is the
# only difference between the chapter's GoogLeNet (plain nn.Conv2d) and Inception-BN (conv -> BN).
ConvFactory = Callable[..., nn.Module]


class Inception(MultiBranch):
    """The chapter's Inception block. Argument names follow the chapter (c1..c4) and the paper's table:
    c1 = #1x1, c2 = (#3x3 reduce, #3x3), c3 = (#5x5 reduce, #5x5), c4 = pool proj.
    """

    def __init__(
        self,
        in_channels: int,
        c1: int,
        c2: tuple[int, int],
        c3: tuple[int, int],
        c4: int,
        conv_block: ConvFactory = nn.Conv2d,
    ):
        super().__init__()
        self.b1_1 = conv_block(in_channels, c1, kernel_size=1)
        self.b2_1 = conv_block(in_channels, c2[0], kernel_size=1)
        self.b2_2 = conv_block(c2[0], c2[1], kernel_size=3, padding=1)
        self.b3_1 = conv_block(in_channels, c3[0], kernel_size=1)
        self.b3_2 = conv_block(c3[0], c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = conv_block(in_channels, c4, kernel_size=1)
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def parallel_branches(self):
        return (self._branch1, self._branch2, self._branch3, self._branch4)

    def _branch1(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b1_1(x))

    def _branch2(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch2_tail(F.relu(self.b2_1(x)))

    def _branch3(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch3_tail(F.relu(self.b3_1(x)))

    def _branch4(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b4_2(self.b4_1(x)))

    def branch2_tail(self, reduced: torch.Tensor) -> torch.Tensor:
        """Branch 2 after its 1x1 reduction (where a fused 1x1 convolution hands over, engine.cuda)."""
        return F.relu(self.b2_2(reduced))

    def branch3_tail(self, reduced: torch.Tensor) -> torch.Tensor:
        """Branch 3 after its 1x1 reduction."""
        return F.relu(self.b3_2(reduced))


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def _inception_factory(conv_block: ConvFactory) -> Callable[..., Inception]:
    def make(in_channels, c1, c2, c3, c4):
        return Inception(in_channels, c1, c2, c3, c4, conv_block=conv_block)

    return make


# The chapter's Inception blocks, stage by stage: (in_channels, c1, (c2 reduce, c2), (c3 reduce, c3), c4).
INCEPTION_TABLE: dict[str, tuple[tuple, ...]] = {
    "b3": ((192, 64, (96, 128), (16, 32), 32),
           (256, 128, (128, 192), (32, 96), 64)),
    "b4": ((480, 192, (96, 208), (16, 48), 64),
           (512, 160, (112, 224), (24, 64), 64),
           (512, 128, (128, 256), (24, 64), 64),
           (512, 112, (144, 288), (32, 64), 64),
           (528, 256, (160, 320), (32, 128), 128)),
    "b5": ((832, 256, (160, 320), (32, 128), 128),
           (832, 384, (192, 384), (48, 128), 128)),
}


CHAPTER_BLOCKS = tuple(len(rows) for rows in INCEPTION_TABLE.values())  # (2, 5, 2): b3, b4, b5


def _scaled(row: tuple, width: float) -> tuple:
    """A table row with every channel count multiplied by ``width`` (unchanged at 1.0)."""
    def scale(c):
        return tuple(scale(x) for x in c) if isinstance(c, tuple) else max(1, round(c * width))

    return scale(row)


def _inception_stages(inception, in_channels: int, width: float,
                      blocks: tuple[int, ...]) -> tuple[dict[str, list[nn.Module]], int]:
    """b3-b5's first ``blocks`` Inception blocks of :data:`INCEPTION_TABLE`, branch widths scaled, and the channels out.

    Each block reads what the previous one concatenates: the table's input column is that sum at width 1, but
    rounding each branch on its own can make the sum differ from the rounded input at other widths.
    """
    stages = {}
    for (stage, table), count in zip(INCEPTION_TABLE.items(), blocks, strict=True):
        stages[stage] = []
        for _, *branches in table[:count]:
            c1, c2, c3, c4 = _scaled(tuple(branches), width)
            stages[stage].append(inception(in_channels, c1, c2, c3, c4))
            in_channels = c1 + c2[1] + c3[1] + c4
    return stages, in_channels


class GoogLeNet(nn.Module):
    """d2l's GoogLeNet: stem b1, b2, Inception stages b3-b5, global average pooling, linear head.

    ``conv_block`` builds every convolution (default ``nn.Conv2d``: the chapter's network; ``ConvBN``: Inception-BN).
    ``width`` scales every channel count and ``stem_pool=False`` drops b1's max-pool: both only for
    ``googlenet-lite`` (the defaults build the chapter's network). ``blocks`` keeps the first (b3, b4, b5) rows of the
    table per stage (the chapter: 2, 5, 2); with no b5 block, b4 ends without its pool and b5 is the global pooling.
    ``pool_first=True`` moves b2's pool before its 3x3 convolution (same output grid, a quarter of its arithmetic).
    """

    stage_names = ("b1", "b2", "b3", "b4", "b5", "head")

    def __init__(self, num_classes: int = 10, in_channels: int = 1, conv_block: ConvFactory = nn.Conv2d,
                 width: float = 1.0, stem_pool: bool = True, blocks: tuple[int, int, int] = CHAPTER_BLOCKS,
                 pool_first: bool = False):
        super().__init__()
        conv = conv_block
        c64, c192 = _scaled((64, 192), width)
        self.b1 = nn.Sequential(
            conv(in_channels, c64, kernel_size=7, stride=2, padding=3), nn.ReLU(), *([_pool()] if stem_pool else [])
        )  # N x 64 x 24 x 24 (for 96 x 96 input)
        reduce = (conv(c64, c64, kernel_size=1), nn.ReLU())
        widen = (conv(c64, c192, kernel_size=3, padding=1), nn.ReLU())
        self.b2 = nn.Sequential(*reduce, _pool(), *widen) if pool_first else nn.Sequential(*reduce, *widen, _pool())
        # N x 192 x 12 x 12
        stages, channels = _inception_stages(_inception_factory(conv_block), c192, width, blocks)
        self.b3 = nn.Sequential(*stages["b3"], _pool())  # N x 480 x 6 x 6
        self.b4 = nn.Sequential(*stages["b4"], *([_pool()] if stages["b5"] else []))  # N x 832 x 3 x 3
        self.b5 = nn.Sequential(*stages["b5"], nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())  # N x 1024
        self.head = nn.Linear(channels, num_classes)  # N x num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.b5(self.b4(self.b3(self.b2(self.b1(x)))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("googlenet", natural_size=96, family="googlenet")
def googlenet(num_classes: int = 10, in_channels: int = 1) -> GoogLeNet:
    """d2l's simplified GoogLeNet, exactly as the chapter defines it (5,977,530 parameters for 1x96x96, 10)."""
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels)


@register_model("googlenet-bn", natural_size=96, family="googlenet")
def googlenet_bn(num_classes: int = 10, in_channels: int = 1) -> GoogLeNet:
    """The chapter's GoogLeNet with BatchNorm after every convolution (conv, no bias -> BN -> ReLU): Inception-BN."""
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels, conv_block=ConvBN)


_STAGES = ("b1", "b2", "b3", "b4", "b5", "head")
_CHAPTER_KEY = re.compile(r"^(?:net\.)?([0-5])\.(.*)$")


def chapter_key_to_ours(key: str) -> str:
    """Map one key of the chapter's ``nn.Sequential`` state dict onto :class:`GoogLeNet`'s names."""
    match = _CHAPTER_KEY.match(key)
    if match is None:
        raise KeyError(f"{key!r} is not a key of the chapter's GoogLeNet (expected 'net.<0-5>.…' or '<0-5>.…')")
    stage, rest = _STAGES[int(match.group(1))], match.group(2)
    rest = re.sub(r"(^|\.)p([1-4])_([12])\.", r"\1b\2_\3.", rest)  # d2l 0.17 named the branches p1_1, ...
    return f"{stage}.{rest}"


def load_chapter_state_dict(model: GoogLeNet, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
    """Load a state dict saved from the chapter's code (``net.state_dict()``) into :class:`GoogLeNet`.

    Accepts both the d2l 1.0 class layout (``net.0.0.weight``, branches ``b1_1``...) and the d2l 0.17
    notebook layout (``0.0.weight``, branches ``p1_1``...). Returns ``model.load_state_dict``'s result.
    """
    mapped = {chapter_key_to_ours(k): v for k, v in state_dict.items()}
    return model.load_state_dict(mapped, strict=strict)


def to_chapter_state_dict(model: GoogLeNet, prefix: str = "net.") -> dict[str, torch.Tensor]:
    """The inverse mapping: our state dict with the chapter's (d2l 1.0) key names."""
    out = {}
    for key, value in model.state_dict().items():
        stage, rest = key.split(".", 1)
        out[f"{prefix}{_STAGES.index(stage)}.{rest}"] = value
    return out
