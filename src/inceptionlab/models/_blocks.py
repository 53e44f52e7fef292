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


# --------------------------------------------------------------------------------------------- branch streams

_SIDE_STREAMS: dict[int, list] = {}  # CUDA device index -> side streams shared by every multi-branch block


def _side_streams(device: torch.device, count: int) -> list:
    streams = _SIDE_STREAMS.setdefault(device.index if device.index is not None else torch.cuda.current_device(), [])
    while len(streams) < count:
        streams.append(torch.cuda.Stream(device))
    return streams[:count]


class MultiBranch(nn.Module):
    """A block whose branches read the same input and can run concurrently.

    ``branch_streams = True`` (set through :func:`inceptionlab.fast.set_branch_streams`) runs branch k > 0 on
    side CUDA stream k; branch 0 stays on the current stream. Inside a captured CUDA graph the branches become
    parallel graph nodes, so the small convolutions of the 12x12 / 6x6 / 3x3 stages overlap instead of queueing
    one after another. Autograd runs each backward op on its forward op's stream and joins the streams before
    ``backward()`` returns (PyTorch's stream semantics of backward passes), so nothing else changes. On a CPU,
    when off, and while tracing (ONNX export), the branches simply run in order: same function, same result.
    """

    branch_streams: bool = False

    def run_branches(self, x: torch.Tensor, branches: Sequence[Callable]) -> list[torch.Tensor]:
        """``[branch(x) for branch in branches]``, flattened where a branch returns several tensors."""
        if not (self.branch_streams and x.is_cuda) or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return _flatten([branch(x) for branch in branches])
        current = torch.cuda.current_stream(x.device)
        side = _side_streams(x.device, len(branches) - 1)
        outputs = [None] * len(branches)
        for k, stream in enumerate(side, start=1):
            stream.wait_stream(current)  # fork: the input is ready
            with torch.cuda.stream(stream):
                outputs[k] = branches[k](x)
            x.record_stream(stream)  # the allocator must not hand x's memory out while a side stream reads it
        outputs[0] = branches[0](x)
        for stream in side:
            current.wait_stream(stream)  # join: every branch is done before the concatenation
        flat = _flatten(outputs)
        for out in flat:
            out.record_stream(current)
        return flat


def _flatten(outputs: list) -> list[torch.Tensor]:
    flat = []
    for out in outputs:
        flat.extend(out) if isinstance(out, (tuple, list)) else flat.append(out)
    return flat
