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


# --------------------------------------------------------------------------------------------- branch streams

_SIDE_STREAMS: dict[int, list] = {}  # CUDA device index -> side streams shared by every multi-branch block


def _side_streams(device: torch.device, count: int) -> list:
    streams = _SIDE_STREAMS.setdefault(device.index if device.index is not None else torch.cuda.current_device(), [])
    while len(streams) < count:
        streams.append(torch.cuda.Stream(device))
    return streams[:count]


class _CrossStream(torch.autograd.Function):
    """Identity on a tensor that crosses from one CUDA stream to another; its backward marks the incoming gradient
    as read by ``reader`` (``Tensor.record_stream``), so the caching allocator does not give that gradient's memory
    to the next allocation of its own stream while ``reader`` may still be reading it.

    Forward reads are covered by :meth:`MultiBranch.run_branches` itself. In the backward pass autograd orders the
    streams (event waits) but does not tell the allocator: the gradient a concatenation hands to a branch on a
    side stream is freed, and reusable by the main stream, as soon as the branch's kernels are *queued*. Inside a
    CUDA graph that reuse would become a pair of unordered nodes, i.e. a race on every replay. (First suspected
    behind the drift measured for BatchNorm models on an H200; that drift is more likely rounding read through a
    chaotic check, see :data:`inceptionlab.fast.AUTO_BRANCH_STREAMS`. The recording is right either way.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, reader) -> torch.Tensor:
        ctx.reader = reader
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if grad is not None and grad.is_cuda:
            grad.record_stream(ctx.reader)
        return grad, None


class MultiBranch(nn.Module):
    """A block whose branches read the same input and can run concurrently.

    ``branch_streams = True`` (set through :func:`inceptionlab.fast.set_branch_streams`) runs branch k > 0 on
    side CUDA stream k; branch 0 stays on the current stream. Inside a captured CUDA graph the branches become
    parallel graph nodes, so the small convolutions of the 12x12 / 6x6 / 3x3 stages overlap instead of queueing
    one after another. Autograd runs each backward op on its forward op's stream and joins the streams before
    ``backward()`` returns (PyTorch's stream semantics of backward passes); every tensor that crosses streams,
    forward or backward, is recorded on its reader stream for the allocator (:class:`_CrossStream`). On a CPU,
    when off, and while tracing (ONNX export), the branches simply run in order: same function, same result.
    """

    branch_streams: bool = False

    def run_branches(self, x: torch.Tensor | Sequence[torch.Tensor],
                     branches: Sequence[Callable]) -> list[torch.Tensor]:
        """``[branch(x) for branch in branches]``, flattened where a branch returns several tensors. ``x`` may also
        be one input per branch (``[branch(x_k) for ...]``)."""
        inputs = list(x) if isinstance(x, (list, tuple)) else [x] * len(branches)
        if len(inputs) != len(branches):
            raise ValueError(f"{len(branches)} branches but {len(inputs)} inputs")
        if not (self.branch_streams and inputs[0].is_cuda) or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return _flatten([branch(inp) for branch, inp in zip(branches, inputs, strict=True)])
        current = torch.cuda.current_stream(inputs[0].device)
        side = _side_streams(inputs[0].device, len(branches) - 1)
        outputs: list[list[torch.Tensor]] = [[] for _ in branches]
        for k, stream in enumerate(side, start=1):
            stream.wait_stream(current)  # fork: the input is ready
            with torch.cuda.stream(stream):
                outputs[k] = _flatten([branches[k](_CrossStream.apply(inputs[k], current))])
            inputs[k].record_stream(stream)  # the allocator must not hand the input out while a side stream reads it
        outputs[0] = _flatten([branches[0](inputs[0])])
        flat = list(outputs[0])
        for stream, outs in zip(side, outputs[1:], strict=True):
            current.wait_stream(stream)  # join: every branch is done before the concatenation
            for out in outs:
                out.record_stream(current)
                flat.append(_CrossStream.apply(out, stream))  # its gradient will be read on `stream`
        return flat


def _flatten(outputs: list) -> list[torch.Tensor]:
    flat = []
    for out in outputs:
        flat.extend(out) if isinstance(out, (tuple, list)) else flat.append(out)
    return flat
