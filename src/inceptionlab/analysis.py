"""The chapter's analysis questions as functions: stage shapes, parameters and FLOPs, the input sizes a model takes.

Everything here runs the model on PyTorch's ``meta`` device (shapes only, no arithmetic, no memory), so even
VGG-11 at 224x224 is analysed in milliseconds. Only :func:`min_input_size` with ``verify=True`` runs real forward
passes, to confirm on actual tensors what the layer arithmetic claims.

Conventions:

* FLOPs are forward FLOPs per image with one multiply-add = 2 FLOP, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` over convolutions and matrix multiplications (``Linear``). BatchNorm,
  LRN, pooling, activations and additions are not counted (they are <1 % for these networks). Models are measured
  in eval mode, so ``googlenet-paper``'s auxiliary classifiers (training only) are not included.
* Sizes are the side of a square single-channel image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torch.utils.flop_counter import FlopCounterMode

from inceptionlab.argcheck import FLAG, NAME, WHOLE, check, optional, sequence, whole
from inceptionlab.errors import InputSizeError
from inceptionlab.models import create_model, get_model_spec, list_models

# The largest multiple of the natural size probed when looking for an upper size limit; a model still accepting
# 8x its natural size is treated as accepting any larger size (true of every model ending in global pooling).
_UPPER_PROBE_FACTOR = 8


def _meta_model(model_name: str, num_classes: int = 10, in_channels: int = 1, **options) -> nn.Module:
    with torch.device("meta"):
        return create_model(model_name, num_classes=num_classes, in_channels=in_channels, **options).eval()


def _meta_input(size: int, in_channels: int = 1) -> torch.Tensor:
    return torch.empty(1, in_channels, size, size, device="meta")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_fc_params(model: nn.Module) -> int:
    """Parameters (weights and biases) in fully connected (``nn.Linear``) layers."""
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())


def forward_flops(model: nn.Module, size: int, in_channels: int = 1) -> int:
    """Forward FLOPs for one ``in_channels x size x size`` image (multiply-add = 2 FLOP; conv and linear)."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, in_channels, size, size, device=device))
    return counter.get_total_flops()


# --- layer arithmetic --------------------------------------------------------------------------------------------


def conv_output_size(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int | None:
    """``floor((n + 2p - d(k-1) - 1) / s) + 1``; ``None`` when the (padded) input is smaller than the kernel."""
    if n + 2 * padding < dilation * (kernel - 1) + 1:
        return None
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(
    n: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1, ceil_mode: bool = False
) -> int | None:
    """PyTorch's pooling size rule, ``ceil_mode`` aware; ``None`` when the output would be empty.

    With ``ceil_mode`` the division rounds up, except that a last window starting inside the right padding is
    dropped (so a 3x3/2 ceil-mode pool takes a 2x2 input to 1x1 but a 1x1 input to nothing).
    """
    numerator = n + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1  # Python's // rounds towards -inf, like PyTorch's div_rtn
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out if out >= 1 else None


def _layer_output_size(layer: nn.Module, h: int, w: int) -> tuple[int | None, int | None]:
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str):  # "same" keeps the size (stride 1 only); "valid" means no padding
            padding = (layer.kernel_size[0] // 2, layer.kernel_size[1] // 2) if layer.padding == "same" else (0, 0)
        else:
            padding = layer.padding
        return tuple(
            conv_output_size(n, k, s, p, d)
            for n, k, s, p, d in zip((h, w), layer.kernel_size, layer.stride, padding, layer.dilation, strict=True)
        )
    kernel, stride, padding = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size), _pair(layer.padding)
    dilation = _pair(getattr(layer, "dilation", 1))
    return tuple(
        pool_output_size(n, k, s, p, d, layer.ceil_mode)
        for n, k, s, p, d in zip((h, w), kernel, stride, padding, dilation, strict=True)
    )


_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _describe(name: str, layer: nn.Module) -> str:
    k = _pair(layer.kernel_size)
    s = _pair(layer.stride or layer.kernel_size)
    p = layer.padding if isinstance(layer.padding, str) else _pair(layer.padding)
    extra = ", ceil_mode" if getattr(layer, "ceil_mode", False) else ""
    return f"{name} ({type(layer).__name__} {k[0]}x{k[1]}, stride {s[0]}, padding {p}{extra})"


class _TooSmall(Exception):
    pass


@dataclass
class _Probe:
    spatial_ok: bool  # every conv/pool layer has a non-empty output
    linear_ok: bool  # every Linear gets the width it was built for
    final_hw: tuple[int, int] | None  # output of the last conv/pool layer run (the map global pooling sees)
    reason: str = ""


def _probe(model: nn.Module, size: int, in_channels: int = 1) -> _Probe:
    """Walk the conv/pool layers in the order the forward pass runs them, applying the size formulas.

    The model runs on the meta device, so branches and concatenations are followed exactly as in the real network;
    the hooks check each layer's arithmetic *before* it runs and compare the formula with the shape it produced.
    """
    state = {"final": None}
    handles = []

    def pre_hook(name):
        def hook(module, args):
            x = args[0]
            if isinstance(module, nn.Linear):
                if x.shape[-1] != module.in_features:
                    raise _TooSmall(
                        f"{name} (Linear) expects {module.in_features} inputs but gets {x.shape[-1]}: "
                        "a fixed-width layer after flatten pins the input size"
                    )
                return
            h, w = x.shape[-2:]
            out = _layer_output_size(module, h, w)
            if None in out:
                raise _TooSmall(f"{_describe(name, module)} gets a {h}x{w} input and would produce an empty output")

        return hook

    def post_hook(name):
        def hook(module, args, output):
            expected = _layer_output_size(module, *args[0].shape[-2:])
            if tuple(output.shape[-2:]) != expected:  # the formulas must agree with PyTorch, or the report is wrong
                raise AssertionError(f"{name}: formula gives {expected}, PyTorch gives {tuple(output.shape[-2:])}")
            state["final"] = expected

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (*_SPATIAL, nn.Linear)):
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
        if isinstance(module, _SPATIAL):
            handles.append(module.register_forward_hook(post_hook(name)))
    try:
        with torch.no_grad():
            model(_meta_input(size, in_channels))
        return _Probe(True, True, state["final"])
    except _TooSmall as exc:
        linear = "Linear" in str(exc)
        return _Probe(linear, not linear, state["final"] if linear else None, str(exc))
    except RuntimeError as exc:  # an op without a formula here (e.g. a functional pool) refused the size
        return _Probe(False, False, None, str(exc).splitlines()[0])
    finally:
        for handle in handles:
            handle.remove()


def _first_true(predicate, lo: int, hi: int) -> int:
    """Smallest n in [lo, hi] with predicate(n), for a predicate that is false...false true...true; hi if none."""
    while lo < hi:
        mid = (lo + hi) // 2
        if predicate(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass(frozen=True)
class SizeReport:
    """Which square input sizes a model accepts, from layer arithmetic (and optionally confirmed by real passes)."""

    model: str
    natural_size: int
    min_size: int
    max_size: int | None  # None: no upper limit (global pooling); set when a fixed Linear follows flatten
    final_map_at_natural: tuple[int, int]  # the last conv/pool output at the natural size
    max_size_for_1x1: int | None  # largest input whose last feature map is 1x1 (None: never 1x1)
    limit_reason: str  # why min_size - 1 fails ("" when min_size is 1)
    upper_reason: str  # why max_size + 1 fails ("" when unbounded)
    verified: bool | None = None  # a real forward pass at min_size (and max_size) succeeded
    failed_below: bool | None = None  # a real forward pass at min_size - 1 (and max_size + 1) raised; None: not tried

    def accepts(self, size: int) -> bool:
        return size >= self.min_size and (self.max_size is None or size <= self.max_size)

    def describe(self) -> str:
        if self.max_size is None:
            return f"any size >= {self.min_size}"
        if self.max_size == self.min_size:
            return f"exactly {self.min_size}"
        return f"{self.min_size} to {self.max_size}"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["final_map_at_natural"] = list(self.final_map_at_natural)
        out["accepted"] = self.describe()
        return out


def input_size_report(model_name: str, verify: bool = True, in_channels: int = 1) -> SizeReport:
    """The smallest (and, for models with a fixed Linear after flatten, largest) input size ``model_name`` takes,
    and the largest size at which its last feature map is 1x1.

    Found by binary search over the layer arithmetic of :func:`_probe` (each layer's output grows with its input).
    With ``verify`` the claims are confirmed on real CPU tensors: a forward pass at ``min_size`` (and ``max_size``)
    succeeds and one pixel below (above) fails.
    """
    check(model_name=(model_name, NAME), verify=(verify, FLAG), in_channels=(in_channels, whole(1)))
    spec = get_model_spec(model_name)
    model = _meta_model(model_name, in_channels=in_channels)
    natural = spec.natural_size
    at_natural = _probe(model, natural, in_channels)
    if not (at_natural.spatial_ok and at_natural.linear_ok):
        raise AssertionError(f"{model_name} fails at its own natural size {natural}: {at_natural.reason}")

    def ok(n: int) -> bool:
        p = _probe(model, n, in_channels)
        return p.spatial_ok and p.linear_ok

    min_size = _first_true(ok, 1, natural)
    limit_reason = _probe(model, min_size - 1, in_channels).reason if min_size > 1 else ""

    top = _UPPER_PROBE_FACTOR * natural + 1
    if ok(top):
        max_size, upper_reason = None, ""
    else:
        max_size = _first_true(lambda n: not ok(n), natural, top) - 1
        upper_reason = _probe(model, max_size + 1, in_channels).reason

    def final(n: int) -> tuple[int, int]:
        return _probe(model, n, in_channels).final_hw

    max_for_1x1 = None
    if final(min_size) == (1, 1):
        hi = top if max_size is None else max_size
        max_for_1x1 = _first_true(lambda n: final(n) != (1, 1), min_size, hi + 1) - 1

    verified = failed_below = None
    if verify:
        verified, failed_below = _verify(model_name, min_size, max_size, in_channels)
    return SizeReport(
        model_name, natural, min_size, max_size, at_natural.final_hw, max_for_1x1, limit_reason, upper_reason,
        verified, failed_below,
    )


def _forward_works(model: nn.Module, size: int, in_channels: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size))
        return True
    except RuntimeError:
        return False


def _verify(model_name: str, min_size: int, max_size: int | None, in_channels: int) -> tuple[bool, bool | None]:
    """Real CPU forward passes (eval mode, batch 1) at the claimed limits and one pixel outside them."""
    model = create_model(model_name, in_channels=in_channels).eval()
    works = _forward_works(model, min_size, in_channels)
    outside = [min_size - 1] if min_size > 1 else []
    if max_size is not None:
        works = works and _forward_works(model, max_size, in_channels)
        outside.append(max_size + 1)
    fails = all(not _forward_works(model, n, in_channels) for n in outside) if outside else None
    return works, fails


def check_input_size(model_name: str, size: int, in_channels: int = 1) -> None:
    """Raise :class:`InputSizeError` (saying which sizes work) unless ``model_name`` accepts ``size`` x ``size``.

    Cheap (one shape-only pass) when the size is fine; the trainer calls it before building anything.
    """
    check(model_name=(model_name, NAME), size=(size, WHOLE), in_channels=(in_channels, whole(1)))
    if size < 1:
        raise InputSizeError(f"image size must be a positive number of pixels, got {size}")
    probe = _probe(_meta_model(model_name, in_channels=in_channels), size, in_channels)
    if probe.spatial_ok and probe.linear_ok:
        return
    report = input_size_report(model_name, verify=False, in_channels=in_channels)
    raise InputSizeError(
        f"{model_name} cannot take {size}x{size} inputs: it accepts {report.describe()} "
        f"(natural size {report.natural_size}). At {size}: {probe.reason}"
    )


# --- shapes and costs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageShape:
    name: str
    shape: tuple[int, ...] | None  # per-image output shape (C, H, W) or (features,); None: not on the eval path
    params: int


def stage_names(model: nn.Module) -> tuple[str, ...]:
    """The top-level stages in forward order: the model's ``stage_names`` or else its children."""
    names = getattr(model, "stage_names", None)
    return tuple(names) if names else tuple(name for name, _ in model.named_children())


def stage_shapes(model_name: str, size: int, in_channels: int = 1, num_classes: int = 10,
                 **options) -> list[StageShape]:
    """Per-stage output shapes for one ``in_channels x size x size`` image, like the chapter's printout.
    ``options`` go to the model's factory (``googlenet-lite``'s ``width`` and ``blocks``).

    Children that the eval-mode forward pass does not run (``googlenet-paper``'s auxiliary heads) come last, with
    ``shape=None``, so that the parameters of all rows add up to the model's.
    """
    check_input_size(model_name, size, in_channels)
    model = _meta_model(model_name, num_classes, in_channels, **options)
    x = _meta_input(size, in_channels)
    rows = []
    names = stage_names(model)
    with torch.no_grad():
        for name in names:
            stage = getattr(model, name)
            x = stage(x)
            rows.append(StageShape(name, tuple(x.shape[1:]), count_params(stage)))
    rows += [StageShape(n, None, count_params(m)) for n, m in model.named_children() if n not in names]
    return rows


@dataclass(frozen=True)
class ModelCost:
    model: str
    params: int
    fc_params: int
    natural_size: int
    gflops_natural: float
    size: int | None  # the extra size asked for
    gflops_at_size: float | None  # None: the model does not accept ``size``

    @property
    def fc_share(self) -> float:
        return self.fc_params / self.params

    def to_dict(self) -> dict:
        return {**asdict(self), "fc_share": round(self.fc_share, 4)}


def model_cost(model_name: str, size: int | None = None, in_channels: int = 1) -> ModelCost:
    check(model_name=(model_name, NAME), size=(size, optional(whole(1))), in_channels=(in_channels, whole(1)))
    spec = get_model_spec(model_name)
    model = _meta_model(model_name, in_channels=in_channels)
    natural = forward_flops(model, spec.natural_size, in_channels) / 1e9
    at_size = None
    if size is not None:
        probe = _probe(model, size, in_channels)
        if probe.spatial_ok and probe.linear_ok:
            at_size = forward_flops(model, size, in_channels) / 1e9
    return ModelCost(
        model_name, count_params(model), count_fc_params(model), spec.natural_size, natural, size, at_size
    )


def cost_table(size: int | None = None, models: list[str] | None = None) -> list[ModelCost]:
    """:func:`model_cost` for every registered model (or ``models``)."""
    names = optional(sequence(NAME, "a non-empty list of model names"))
    check(size=(size, optional(whole(1))), models=(models, names))
    return [model_cost(name, size) for name in (models or list_models())]


WHY_FEW_PARAMETERS = (
    "Why NiN and GoogLeNet need so few parameters: AlexNet and VGG spend most of their parameters (over 90%) in "
    "the first fully connected layer, which connects every position of the last feature map (256x5x5 = 6,400 or "
    "512x7x7 = 25,088 values) to 4,096 units, followed by another 4096x4096 layer. NiN and GoogLeNet end instead "
    "in global average pooling: the classifier sees one number per channel, so GoogLeNet's head is a single "
    "1024x10 layer (10,250 parameters) and NiN has no fully connected layer at all (its last block outputs one "
    "channel per class). What remains are convolutions, whose weights do not grow with the image, and GoogLeNet "
    "keeps those small with 1x1 convolutions that reduce the channels before the 3x3 and 5x5 branches. Few "
    "parameters do not mean little compute: the convolutions run at every position, which is where the FLOPs go. "
    "(googlenet-paper's FC share is its two auxiliary classifiers, 2048x1024 each, which only exist for training.)"
)
