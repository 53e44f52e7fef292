"""Convolution building blocks shared by the Inception family.

``ConvBN`` is the Inception-BN unit (Ioffe & Szegedy 2015): a convolution without bias followed by BatchNorm;
the bias is dropped because BN's shift (beta) replaces it. The ReLU stays outside so that the caller decides
where it goes (the residual branches of Inception-ResNet end in a linear unit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def inception_v3_stem(in_channels: int) -> list[nn.Module]:
    """The first six layers of the Inception-v3 stem (Szegedy et al. 2016, Table 1), which Inception-ResNet-v1 also
    starts with: ``in -> 192`` channels, grid / 4 (96 -> 24). Each model adds its own last layer to reach 12x12."""
    return [
        BasicConv2d(in_channels, 32, 3, stride=2, padding=1),
        BasicConv2d(32, 32, 3, padding=1),
        BasicConv2d(32, 64, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        BasicConv2d(64, 80, 1),
        BasicConv2d(80, 192, 3, padding=1),
    ]


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


class MultiBranch(nn.Module):
    """A block whose branches all read the block's input: ``merge(x, [branch(x) for branch in branches])``.

    Subclasses name their branches (:meth:`parallel_branches`, in output order; a branch may return several
    tensors) and, when the block is more than a concatenation, override :meth:`merge`. The block holds no
    execution switches: running the branches on parallel CUDA streams is applied from outside
    (:mod:`inceptionlab.engine.cuda`), as every speed trick is.
    """

    def parallel_branches(self) -> Sequence[Callable]:
        raise NotImplementedError

    def merge(self, x: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(outputs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(x, flatten_outputs([branch(x) for branch in self.parallel_branches()]))


def flatten_outputs(outputs: list) -> list[torch.Tensor]:
    """Branch outputs as one list of tensors (a branch that returns a tuple contributes each of its tensors)."""
    flat = []
    for out in outputs:
        flat.extend(out) if isinstance(out, (tuple, list)) else flat.append(out)
    return flat
