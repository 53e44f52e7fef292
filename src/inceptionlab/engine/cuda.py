"""CUDA speed switches, applied to a model from outside (the models stay plain modules).

Each switch computes the same function in fewer or overlapping kernels; only the order of some sums may differ
(rounding). What ``None`` (auto) picks, and the measurements behind it, are in BENCHMARKS.md (GPU section):
every switch stays off by default until a GPU run has measured it end to end.

- ``branch_streams``: the branches of every multi-branch block on parallel CUDA streams (inside a CUDA graph they
  become parallel nodes).
- ``fuse_1x1``: the three 1x1 convolutions that read a googlenet Inception block's input as one convolution.
- ``batched_casts``: the captured bf16 step casts every conv/linear parameter in one multi-tensor kernel
  (:class:`BatchedCasts`, used by :mod:`inceptionlab.engine.step`).
- ``cudnn_benchmark``: cuDNN times its algorithms per shape.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab.config import CUDA_SWITCHES, TrainConfig
from inceptionlab.errors import ConfigError
from inceptionlab.models._blocks import ConvBN, MultiBranch, flatten_outputs
from inceptionlab.models.googlenet import Inception

# auto = off for every step mode until measured end to end on a GPU (BENCHMARKS.md, GPU section)
AUTO: dict[str, dict[str, bool]] = {name: {} for name in CUDA_SWITCHES}
# the float64 graph-vs-eager check with streams has not passed on a GPU for BatchNorm models yet (BENCHMARKS.md)
REFUSE_STREAMS_WITH_BATCHNORM = True


def resolve_cuda_options(config: TrainConfig, device: torch.device, step_mode: str,
                         model: nn.Module | None = None, *, allow_unverified_streams: bool = False) -> dict[str, bool]:
    """The switches made concrete: all off off CUDA; ``None`` = :data:`AUTO` for the step mode.

    Branch streams with a BatchNorm ``model`` are a :class:`ConfigError`; batched casts exist only for the captured
    bf16 step and resolve to off elsewhere. ``allow_unverified_streams`` lifts that refusal, for benchmarks timing a
    candidate (the trainer's own runs never pass it).
    """
    if device.type != "cuda":
        return {name: False for name in CUDA_SWITCHES}
    refuse = REFUSE_STREAMS_WITH_BATCHNORM and not allow_unverified_streams
    if config.branch_streams and refuse and model is not None and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise ConfigError(
            f"--branch-streams is refused for {config.model} until it is verified with BatchNorm (the float64 "
            "graph-vs-eager check has not run on a GPU yet, BENCHMARKS.md). Use --no-branch-streams (the default); "
            "the switch is verified for the chapter's googlenet."
        )
    options = {}
    for name in CUDA_SWITCHES:
        value = getattr(config, name)
        options[name] = AUTO[name].get(step_mode, False) if value is None else bool(value)
    if step_mode != "cudagraph" or config.precision != "bf16":
        options["batched_casts"] = False
    return options


@contextlib.contextmanager
def cuda_switches(model: nn.Module, options: dict[str, bool]):
    """Apply :func:`resolve_cuda_options`'s result to ``model`` while the block runs; afterwards every block runs
    its plain forward again and the global cuDNN flag is restored (``batched_casts`` belongs to the step)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = options.get("cudnn_benchmark", False)
    patched = apply_block_switches(model, streams=options.get("branch_streams", False),
                                   fuse_1x1=options.get("fuse_1x1", False))
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved
        remove_block_switches(patched)


def apply_block_switches(model: nn.Module, *, streams: bool, fuse_1x1: bool) -> list[nn.Module]:
    """Replace the forward of every multi-branch block of ``model`` (an instance attribute, so the class, the
    parameters and the state dict stay as they are); returns the blocks changed, for :func:`remove_block_switches`."""
    patched = []
    for block in model.modules():
        fused = fuse_1x1 and isinstance(block, Inception) and _fusable(block.b1_1, block.b2_1, block.b3_1)
        if not (fused or (streams and isinstance(block, MultiBranch))):
            continue
        inputs_and_branches = functools.partial(_fused_branches if fused else _plain_branches, block)
        block.forward = functools.partial(_switched_forward, block, inputs_and_branches, streams)
        patched.append(block)
    return patched


def remove_block_switches(blocks: Sequence[nn.Module]) -> None:
    for block in blocks:
        del block.forward


def _switched_forward(block: MultiBranch, inputs_and_branches, streams: bool, x: torch.Tensor) -> torch.Tensor:
    inputs, branches = inputs_and_branches(x)
    run = run_on_streams if streams and x.is_cuda and not _tracing() else _run_in_order
    return block.merge(x, run(inputs, branches))


def _plain_branches(block: MultiBranch, x: torch.Tensor):
    branches = block.parallel_branches()
    return [x] * len(branches), branches


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _run_in_order(inputs: Sequence[torch.Tensor], branches: Sequence[Callable]) -> list[torch.Tensor]:
    return flatten_outputs([branch(inp) for branch, inp in zip(branches, inputs, strict=True)])


# --------------------------------------------------------------------------------------------- fused 1x1


def _fused_branches(block: Inception, x: torch.Tensor):
    """The inputs and branches of ``block`` after its three input 1x1 convolutions ran as one convolution."""
    y1, y2, y3 = _fused_1x1(block, x)
    return [y1, y2, y3, x], (_identity, block.branch2_tail, block.branch3_tail, block._branch4)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _fused_1x1(block: Inception, x: torch.Tensor) -> list[torch.Tensor]:
    """``[relu(b1_1(x)), relu(b2_1(x)), relu(b3_1(x))]`` from one convolution (BatchNorm, if any, per part)."""
    units = (block.b1_1, block.b2_1, block.b3_1)
    convs = [_conv_of(unit) for unit in units]
    weight = torch.cat([conv.weight for conv in convs])
    bias = torch.cat([conv.bias for conv in convs]) if convs[0].bias is not None else None
    y = F.conv2d(x, weight, bias)
    sizes = [conv.out_channels for conv in convs]
    if isinstance(units[0], ConvBN):
        return [F.relu(unit.bn(part)) for unit, part in zip(units, torch.split(y, sizes, dim=1), strict=True)]
    return list(torch.split(F.relu(y), sizes, dim=1))


def _conv_of(unit: nn.Module) -> nn.Module:
    return unit.conv if isinstance(unit, ConvBN) else unit


def _fusable(*units: nn.Module) -> bool:
    """Plain 1x1 convolutions (or ConvBN units around them) of one kind, which stacking their weights can merge."""
    if not (all(type(u) is nn.Conv2d for u in units) or all(type(u) is ConvBN for u in units)):
        return False
    convs = [_conv_of(u) for u in units]
    return all(c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0) and c.dilation == (1, 1)
               and c.groups == 1 and c.padding_mode == "zeros" and (c.bias is None) == (convs[0].bias is None)
               for c in convs)


# --------------------------------------------------------------------------------------------- branch streams

_SIDE_STREAMS: dict[int, list] = {}  # CUDA device index -> side streams shared by every multi-branch block


def _side_streams(device: torch.device, count: int) -> list:
    streams = _SIDE_STREAMS.setdefault(device.index if device.index is not None else torch.cuda.current_device(), [])
    while len(streams) < count:
        streams.append(torch.cuda.Stream(device))
    return streams[:count]


class CrossStream(torch.autograd.Function):
    """Identity on a tensor that crosses from one CUDA stream to another; its backward marks the incoming gradient
    as read by ``reader`` (``Tensor.record_stream``).

    Autograd orders the streams of the backward pass but does not tell the caching allocator: without the record,
    a gradient handed to a branch on a side stream could be reused by the main stream while still being read,
    which inside a CUDA graph is a race on every replay.
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


def run_on_streams(inputs: Sequence[torch.Tensor], branches: Sequence[Callable]) -> list[torch.Tensor]:
    """``[branch_k(input_k)]``, flattened, with branch k > 0 on side CUDA stream k and branch 0 on the current one;
    every tensor that crosses streams, forward or backward, is recorded on its reader stream for the allocator."""
    inputs = list(inputs)
    current = torch.cuda.current_stream(inputs[0].device)
    side = _side_streams(inputs[0].device, len(branches) - 1)
    outputs: list[list[torch.Tensor]] = [[] for _ in branches]
    for k, stream in enumerate(side, start=1):
        stream.wait_stream(current)  # fork: the input is ready
        with torch.cuda.stream(stream):
            outputs[k] = flatten_outputs([branches[k](CrossStream.apply(inputs[k], current))])
        inputs[k].record_stream(stream)  # the allocator must not hand the input out while a side stream reads it
    outputs[0] = flatten_outputs([branches[0](inputs[0])])
    flat = list(outputs[0])
    for stream, outs in zip(side, outputs[1:], strict=True):
        current.wait_stream(stream)  # join: every branch is done before the merge
        for out in outs:
            out.record_stream(current)
            flat.append(CrossStream.apply(out, stream))  # its gradient will be read on `stream`
    return flat


# --------------------------------------------------------------------------------------------- batched casts


class _CastAll(torch.autograd.Function):
    """Copies of many tensors in ``dtype``, made by one multi-tensor kernel (``torch._foreach_copy_``); the backward
    turns their gradients back into the originals' dtype the same way. Autocast then finds bf16 weights and passes
    them through: the same values and arithmetic, two small kernels fewer per tensor and step."""

    @staticmethod
    def forward(ctx, dtype, *tensors):
        ctx.set_materialize_grads(False)
        ctx.dtypes = [t.dtype for t in tensors]
        copies = [torch.empty_like(t, dtype=dtype) for t in tensors]
        torch._foreach_copy_(copies, list(tensors))
        return tuple(copies)

    @staticmethod
    def backward(ctx, *grads):
        present = [i for i, g in enumerate(grads) if g is not None]
        out: list[torch.Tensor | None] = [None] * len(grads)
        if present:
            back = [torch.empty_like(grads[i], dtype=ctx.dtypes[i]) for i in present]
            torch._foreach_copy_(back, [grads[i] for i in present])
            for i, g in zip(present, back, strict=True):
                out[i] = g
        return (None, *out)


class BatchedCasts:
    """``model(x)`` with every conv/linear weight and bias cast to ``dtype`` up front by :class:`_CastAll`, passed in
    through ``torch.func.functional_call``. For the captured bf16 step: the Python work happens once, at capture."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.model, self.dtype = model, dtype
        self.names, self.params = [], []
        for module_name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):  # the layers autocast runs in bf16
                for name, param in module.named_parameters(recurse=False):
                    if param.requires_grad and param.is_floating_point():
                        self.names.append(f"{module_name}.{name}" if module_name else name)
                        self.params.append(param)

    def __call__(self, x: torch.Tensor):
        copies = _CastAll.apply(self.dtype, *self.params)
        return torch.func.functional_call(self.model, dict(zip(self.names, copies, strict=True)), (x,))
