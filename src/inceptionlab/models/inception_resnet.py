"""Inception-ResNet sized for 96x96 (Szegedy, Ioffe, Vanhoucke & Alemi 2017, "Inception-v4, Inception-ResNet and
the Impact of Residual Connections on Learning"), following the Inception-ResNet-v1 layout (Fig. 14).

Each residual block is a small Inception block whose concatenated branches are projected back to the input width
by a linear 1x1 convolution (no BN, no ReLU), *scaled* and added to the input, then passed through ReLU:
``relu(x + scale * up(cat(branches(x))))``. The paper scales residuals by 0.1-0.3 because without it very wide
residual Inception networks "died" early in training; we use the reference implementation's 0.17 / 0.10 / 0.20 for
blocks A / B / C. As in the paper, BatchNorm sits on the ordinary convolutions, not on the summation.

Sizing for 96x96 (the paper uses 299x299 with grids 35 -> 17 -> 8): grids are 12 -> 6 -> 3 like the chapter's
GoogLeNet, 3 / 3 / 2 residual blocks instead of 5 / 10 / 5, 1 x 3 / 3 x 1 instead of 1 x 7 / 7 x 1 on the 6x6 grid,
and a narrower reduction-B (1536 output channels instead of 1792). Strided layers are padded so that 28x28 inputs
pass too (grids 4 -> 2 -> 1).

Stage shapes for a 1 x 96 x 96 input:

    stem      256 x 12 x 12
    block35   256 x 12 x 12   3 x Inception-ResNet-A (scale 0.17)
    reduce_a  896 x  6 x  6   3x3/2 conv 384 | 1x1-3x3-3x3/2 256 | max-pool/2
    block17   896 x  6 x  6   3 x Inception-ResNet-B (scale 0.10)
    reduce_b 1536 x  3 x  3   1x1-3x3/2 256 | 1x1-3x3/2 192 | 1x1-3x3-3x3/2 192 | max-pool/2
    block8   1536 x  3 x  3   2 x Inception-ResNet-C (scale 0.20)
    pool     1536             global average pool, dropout 0.2 (the paper keeps 0.8)
    head     num_classes
"""

from __future__ import annotations

import torch
from torch import nn

from inceptionlab.models._blocks import BasicConv2d, MultiBranch, StagedClassifier, inception_v3_stem
from inceptionlab.models._registry import register_model


class ResidualInception(MultiBranch):
    """``relu(x + scale * up(cat(branches(x))))``: the common shape of blocks A, B and C."""

    def __init__(self, in_channels: int, branches: list[nn.Module], branch_channels: int, scale: float):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.up = nn.Conv2d(branch_channels, in_channels, kernel_size=1)  # linear: no BN, no ReLU
        self.scale = scale
        self.relu = nn.ReLU(inplace=True)

    def parallel_branches(self):
        return tuple(self.branches)

    def merge(self, x: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        return self.relu(x + self.scale * self.up(torch.cat(outputs, dim=1)))


def block35(c: int, scale: float = 0.17) -> ResidualInception:
    """Inception-ResNet-A (Fig. 10): 1x1 | 1x1-3x3 | 1x1-3x3-3x3, 32 channels each."""
    return ResidualInception(
        c,
        [
            BasicConv2d(c, 32, 1),
            nn.Sequential(BasicConv2d(c, 32, 1), BasicConv2d(32, 32, 3, padding=1)),
            nn.Sequential(BasicConv2d(c, 32, 1), BasicConv2d(32, 32, 3, padding=1), BasicConv2d(32, 32, 3, padding=1)),
        ],
        branch_channels=96,
        scale=scale,
    )


def block17(c: int, scale: float = 0.10, n: int = 3) -> ResidualInception:
    """Inception-ResNet-B (Fig. 11): 1x1 | 1x1-1xn-nx1, 128 channels each (n = 7 in the paper, 3 on our 6x6 grid)."""
    p = n // 2
    return ResidualInception(
        c,
        [
            BasicConv2d(c, 128, 1),
            nn.Sequential(
                BasicConv2d(c, 128, 1),
                BasicConv2d(128, 128, (1, n), padding=(0, p)),
                BasicConv2d(128, 128, (n, 1), padding=(p, 0)),
            ),
        ],
        branch_channels=256,
        scale=scale,
    )


def block8(c: int, scale: float = 0.20) -> ResidualInception:
    """Inception-ResNet-C (Fig. 13): 1x1 | 1x1-1x3-3x1, 192 channels each."""
    return ResidualInception(
        c,
        [
            BasicConv2d(c, 192, 1),
            nn.Sequential(
                BasicConv2d(c, 192, 1),
                BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
                BasicConv2d(192, 192, (3, 1), padding=(1, 0)),
            ),
        ],
        branch_channels=384,
        scale=scale,
    )


class Reduction(MultiBranch):
    """Grid reduction: stride-2 conv branches in parallel with a stride-2 max-pool (Figs. 7 and 12)."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.branch_pool = nn.MaxPool2d(3, stride=2, padding=1)

    def parallel_branches(self):
        return (*self.branches, self.branch_pool)


class InceptionResNet(StagedClassifier):
    """Inception-ResNet-v1 layout, sized for 96x96 (stage table in the module docstring)."""

    stage_names = ("stem", "block35", "reduce_a", "block17", "reduce_b", "block8", "pool", "head")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        blocks: tuple[int, int, int] = (3, 3, 2),
        dropout: float = 0.2,
        n: int = 3,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            *inception_v3_stem(in_channels), BasicConv2d(192, 256, 3, stride=2, padding=1)
        )  # N x 256 x 12 x 12
        self.block35 = nn.Sequential(*[block35(256) for _ in range(blocks[0])])  # N x 256 x 12 x 12
        self.reduce_a = Reduction(
            [
                BasicConv2d(256, 384, 3, stride=2, padding=1),
                nn.Sequential(
                    BasicConv2d(256, 192, 1),
                    BasicConv2d(192, 192, 3, padding=1),
                    BasicConv2d(192, 256, 3, stride=2, padding=1),
                ),
            ]
        )  # N x 896 x 6 x 6
        self.block17 = nn.Sequential(*[block17(896, n=n) for _ in range(blocks[1])])  # N x 896 x 6 x 6
        self.reduce_b = Reduction(
            [
                nn.Sequential(BasicConv2d(896, 192, 1), BasicConv2d(192, 256, 3, stride=2, padding=1)),
                nn.Sequential(BasicConv2d(896, 192, 1), BasicConv2d(192, 192, 3, stride=2, padding=1)),
                nn.Sequential(
                    BasicConv2d(896, 192, 1),
                    BasicConv2d(192, 192, 3, padding=1),
                    BasicConv2d(192, 192, 3, stride=2, padding=1),
                ),
            ]
        )  # N x 1536 x 3 x 3
        self.block8 = nn.Sequential(*[block8(1536) for _ in range(blocks[2])])  # N x 1536 x 3 x 3
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Dropout(p=dropout))  # N x 1536
        self.head = nn.Linear(1536, num_classes)


@register_model("inception-resnet", natural_size=96, family="inception-resnet")
def inception_resnet(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.2) -> InceptionResNet:
    """Inception-ResNet (2017) sized for 96x96: residual Inception blocks A/B/C with scaled addition, BN."""
    return InceptionResNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
