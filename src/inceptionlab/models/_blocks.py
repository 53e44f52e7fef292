"""Convolution building blocks shared by the Inception family.

``ConvBN`` is the Inception-BN unit (Ioffe & Szegedy 2015): a convolution without bias followed by BatchNorm;
the bias is dropped because BN's shift (beta) replaces it. The ReLU stays outside so that the caller decides
where it goes (the residual branches of Inception-ResNet end in a linear unit).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm. Same call signature as ``nn.Conv2d`` for the arguments we use."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        # eps 1e-3 as in the Inception-v3/-ResNet reference implementations (TF's default); PyTorch's 1e-5 also works.
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU: the unit every Inception-v3 / Inception-ResNet layer is made of."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class StagedClassifier(nn.Module):
    """Stages run in ``stage_names`` order; the last one is the head (what ``inceptionlab shapes`` walks)."""

    stage_names: tuple[str, ...] = ()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names[:-1]:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.stage_names[-1])(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
