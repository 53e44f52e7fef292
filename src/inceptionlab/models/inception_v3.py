"""A GoogLeNet-sized Inception-v3 for 96x96 inputs (Szegedy et al. 2016, "Rethinking the Inception Architecture").

The paper's ideas, each visible as one block class:

* ``InceptionA`` (Fig. 5): the 5x5 branch factorized into two stacked 3x3 convolutions (same receptive field,
  18/25 of the cost).
* ``InceptionB`` (Fig. 6): n x n factorized into 1 x n followed by n x 1 (asymmetric factorization).
* ``InceptionC`` (Fig. 7): the expanded filter bank on the coarsest grid (1x3 and 3x1 side by side).
* ``GridReduction`` (Fig. 10): the grid is halved by stride-2 convolution branches in parallel with a stride-2
  max-pool, instead of a pool before (representational bottleneck) or after (3x the cost) an Inception block.
* Every convolution is conv -> BatchNorm -> ReLU (``BasicConv2d``).

Sizing for 96x96 (the paper uses 299x299 with grids 35 -> 17 -> 8): grids here are 12 -> 6 -> 3, the same
12/6/3 as the chapter's GoogLeNet. Because the grids are ~3x smaller, the asymmetric factorization uses n = 3
(the paper's n = 7 on a 17x17 grid covers the same fraction of the map), there are 3 / 2 / 2 blocks per stage
instead of 3 / 4 / 2, and the last stage is half as wide, ending at 1024 channels like GoogLeNet. The strided
layers are padded so that a 28x28 Fashion-MNIST image also passes (grids 4 -> 2 -> 1). The auxiliary classifier
and label smoothing of the paper are left out (label smoothing is a loss option, not part of the network).

Stage shapes for a 1 x 96 x 96 input:

    stem    192 x 12 x 12   conv3x3/2 32, conv3x3 32, conv3x3 64, pool/2, conv1x1 80, conv3x3 192, pool/2
    mixed5  288 x 12 x 12   3 x InceptionA
    reduce6 768 x  6 x  6   GridReduction (3x3/2 conv 384 | 1x1-3x3-3x3/2 96 | max-pool/2)
    mixed6  768 x  6 x  6   2 x InceptionB (1x3 / 3x1)
    reduce7 1280 x 3 x  3   GridReduction (1x1-3x3/2 320 | 1x1-1x3-3x1-3x3/2 192 | max-pool/2)
    mixed7  1024 x 3 x  3   2 x InceptionC
    pool    1024            global average pool, dropout
    head    num_classes
"""

from __future__ import annotations

import torch
from torch import nn

from inceptionlab.models._blocks import BasicConv2d, MultiBranch, StagedClassifier, inception_v3_stem
from inceptionlab.models._registry import register_model


class InceptionA(MultiBranch):
    """Fig. 5: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 (the factorized 5x5) | avg-pool-1x1."""

    def __init__(self, in_channels: int, pool_proj: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3 = nn.Sequential(BasicConv2d(in_channels, 48, 1), BasicConv2d(48, 64, 3, padding=1))
        self.branch3x3dbl = nn.Sequential(
            BasicConv2d(in_channels, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
        )
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), BasicConv2d(in_channels, pool_proj, 1))
        self.out_channels = 64 + 64 + 96 + pool_proj

    def parallel_branches(self):
        return (self.branch1x1, self.branch3x3, self.branch3x3dbl, self.branch_pool)


class InceptionB(MultiBranch):
    """Fig. 6: n x n convolutions factorized into 1 x n then n x 1 (``c7`` = width of the factorized branches)."""

    def __init__(self, in_channels: int, c7: int, n: int = 3):
        super().__init__()
        p = n // 2
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch_nxn = nn.Sequential(
            BasicConv2d(in_channels, c7, 1),
            BasicConv2d(c7, c7, (1, n), padding=(0, p)),
            BasicConv2d(c7, 192, (n, 1), padding=(p, 0)),
        )
        self.branch_nxn_dbl = nn.Sequential(
            BasicConv2d(in_channels, c7, 1),
            BasicConv2d(c7, c7, (n, 1), padding=(p, 0)),
            BasicConv2d(c7, c7, (1, n), padding=(0, p)),
            BasicConv2d(c7, c7, (n, 1), padding=(p, 0)),
            BasicConv2d(c7, 192, (1, n), padding=(0, p)),
        )
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), BasicConv2d(in_channels, 192, 1))
        self.out_channels = 4 * 192

    def parallel_branches(self):
        return (self.branch1x1, self.branch_nxn, self.branch_nxn_dbl, self.branch_pool)


class InceptionC(MultiBranch):
    """Fig. 7: the expanded filter bank for the coarsest grid; the 3x3s split into parallel 1x3 and 3x1 outputs."""

    def __init__(self, in_channels: int, c1: int = 160, c3: int = 192, c3dbl_red: int = 224, pool_proj: int = 96):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, c1, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, c3, 1)
        self.branch3x3_2a = BasicConv2d(c3, c3, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c3, c3, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c3dbl_red, 1)
        self.branch3x3dbl_2 = BasicConv2d(c3dbl_red, c3, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c3, c3, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c3, c3, (3, 1), padding=(1, 0))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), BasicConv2d(in_channels, pool_proj, 1))
        self.out_channels = c1 + 4 * c3 + pool_proj

    def parallel_branches(self):
        return (self.branch1x1, self._branch3x3, self._branch3x3dbl, self.branch_pool)  # 1x1, 3x3 a/b, dbl a/b, pool

    def _branch3x3(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b3 = self.branch3x3_1(x)
        return self.branch3x3_2a(b3), self.branch3x3_2b(b3)

    def _branch3x3dbl(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)


class GridReduction(MultiBranch):
    """Fig. 10: stride-2 convolution branches in parallel with a stride-2 max-pool, concatenated."""

    def __init__(self, in_channels: int, conv_branches: list[nn.Sequential], out_channels: int):
        super().__init__()
        self.branches = nn.ModuleList(conv_branches)
        self.branch_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = out_channels + in_channels

    def parallel_branches(self):
        return (*self.branches, self.branch_pool)


def reduction_a(in_channels: int) -> GridReduction:
    return GridReduction(
        in_channels,
        [
            nn.Sequential(BasicConv2d(in_channels, 384, 3, stride=2, padding=1)),
            nn.Sequential(
                BasicConv2d(in_channels, 64, 1),
                BasicConv2d(64, 96, 3, padding=1),
                BasicConv2d(96, 96, 3, stride=2, padding=1),
            ),
        ],
        out_channels=384 + 96,
    )


def reduction_b(in_channels: int, n: int = 3) -> GridReduction:
    p = n // 2
    return GridReduction(
        in_channels,
        [
            nn.Sequential(BasicConv2d(in_channels, 192, 1), BasicConv2d(192, 320, 3, stride=2, padding=1)),
            nn.Sequential(
                BasicConv2d(in_channels, 192, 1),
                BasicConv2d(192, 192, (1, n), padding=(0, p)),
                BasicConv2d(192, 192, (n, 1), padding=(p, 0)),
                BasicConv2d(192, 192, 3, stride=2, padding=1),
            ),
        ],
        out_channels=320 + 192,
    )


class InceptionV3(StagedClassifier):
    """Inception-v3 sized for 96x96 (see the module docstring for the stage table)."""

    stage_names = ("stem", "mixed5", "reduce6", "mixed6", "reduce7", "mixed7", "pool", "head")

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.2, n: int = 3):
        super().__init__()
        self.stem = nn.Sequential(*inception_v3_stem(in_channels), nn.MaxPool2d(3, stride=2, padding=1))  # 192x12x12
        self.mixed5 = nn.Sequential(InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64))  # N x 288 x 12 x 12
        self.reduce6 = reduction_a(288)  # N x 768 x 6 x 6
        self.mixed6 = nn.Sequential(InceptionB(768, 128, n), InceptionB(768, 160, n))  # N x 768 x 6 x 6
        self.reduce7 = reduction_b(768, n)  # N x 1280 x 3 x 3
        self.mixed7 = nn.Sequential(InceptionC(1280), InceptionC(1024))  # N x 1024 x 3 x 3
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Dropout(p=dropout))  # N x 1024
        self.head = nn.Linear(1024, num_classes)


@register_model("inception-v3", natural_size=96, family="inception-v3")
def inception_v3(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.2) -> InceptionV3:
    """Inception-v3 (2016) sized like GoogLeNet for 96x96: factorized 3x3s, 1x3/3x1, grid reduction, BN."""
    return InceptionV3(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
