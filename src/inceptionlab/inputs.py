"""What the model sees, defined once: pixels in [0, 1], optional standardisation, memory layout, precision, class
names, and the one forward-and-loss function that the eager step, the captured step, evaluation and the checks
share. Training, evaluation, ONNX export and predict all read these definitions; none re-derives them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab.config import TrainConfig
from inceptionlab.data.dataset import DataInfo, ImageDataset
from inceptionlab.data.sources import DataSpec, default_info, load_data
from inceptionlab.errors import ConfigError
from inceptionlab.models import classification_loss


def data_info(config: TrainConfig) -> DataInfo:
    """The data the run trained on, as the trainer recorded it (``config.data_info``); a config that records none
    (not trained yet, or a run from before it was recorded) means the default dataset."""
    return default_info() if config.data_info is None else DataInfo.from_dict(config.data_info)


def class_names(config: TrainConfig) -> list[str]:
    """The run's class names, in label order."""
    return list(data_info(config).classes)


def normalization(config: TrainConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Per-channel (mean, std) applied to [0, 1] pixels, or None when the run feeds them as they are (d2l's
    ``ToTensor``)."""
    if not config.normalize:
        return None
    info = data_info(config)
    return info.mean, info.std


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Standardise [0, 1] pixels channel by channel with the training split's mean and standard deviation.
    Python numbers, not tensors: nothing is copied to the device inside a captured CUDA graph."""
    if len(mean) == 1:
        return (x - mean[0]) / std[0]
    return torch.cat([(x[:, c : c + 1] - m) / s for c, (m, s) in enumerate(zip(mean, std, strict=True))], dim=1)


def prepare_input(x: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Float [0, 1] batch -> what the model sees: optional standardisation, optional channels_last."""
    norm = normalization(config)
    if norm is not None:
        x = normalize(x, *norm)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """The model's side of :func:`prepare_input`: the run's memory layout (it changes the rounding, so a reloaded
    model evaluates exactly as the trainer's did only in the same layout)."""
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def autocast_context(config: TrainConfig, device: torch.device, *, cache_enabled: bool = True):
    """The one place mixed precision is switched on (bf16 on a CPU uses AVX-512 BF16 where the CPU has it).

    ``cache_enabled=False`` inside CUDA-graph capture, as PyTorch's graph notes ask.
    """
    if config.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision {config.precision!r} must be resolved for a device first "
                          "(inceptionlab.devices.resolve_precision)")
    if config.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def make_criterion(config: TrainConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def aux_loss_weight(model: nn.Module) -> float:
    """The weight of a model's auxiliary losses (googlenet-paper: 0.3); looked up through a DDP wrapper."""
    return getattr(getattr(model, "module", model), "aux_loss_weight", 0.3)


def forward_loss(model, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module | None, config: TrainConfig, *,
                 aux_weight: float = 0.3, cache_enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, logits)`` of a [0, 1] float batch: prepare the input, autocast, forward, loss (``None`` without a
    ``criterion``). ``model`` is any callable (the module, a DDP wrapper, a compiled or batched-casts forward)."""
    x = prepare_input(x, config)
    with autocast_context(config, x.device, cache_enabled=cache_enabled):
        output = model(x)
        loss = None if criterion is None else classification_loss(output, y, criterion, aux_weight)
    logits = output[0] if isinstance(output, tuple) else output
    return loss, logits


class PixelInput(nn.Module):
    """The trained network behind its input standardisation: takes [0, 1] pixels, returns logits, so an exported
    ONNX file is self-contained (a deployment feeds pixels)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x, self.mean, self.std))


class FlipAverage(nn.Module):
    """Logits averaged over each image and its mirror image: the test-time augmentation of a run with ``flip_tta``,
    as the trainer's evaluations compute it, kept in the graph so predict and an ONNX export answer the same."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, n = self.model(torch.cat([x, x.flip(-1)])), x.shape[0]  # one batch; chunk(2) fixes N in ONNX
        return (logits[:n] + logits[n:]) / 2


# (dx, dy) of shift TTA's views: the image and its four one-pixel shifts (EXPERIMENTS.md (10))
SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` moved ``dx`` pixels right and ``dy`` down (at most one), its edge pixels repeated into the gap."""
    if dx == dy == 0:
        return x
    h, w = x.shape[-2:]
    return F.pad(x, (1, 1, 1, 1), mode="replicate")[..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


class ShiftAverage(nn.Module):
    """Logits averaged over each image and its four one-pixel shifts: the test-time augmentation of a run with
    ``shift_tta``, as its final evaluation computes it, kept in the graph for predict and an ONNX export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]  # one batch of all views, sliced: a fixed split would fix N in ONNX
        logits = self.model(torch.cat([shifted(x, dx, dy) for dx, dy in SHIFTS]))
        return sum(logits[i * n : (i + 1) * n] for i in range(len(SHIFTS))) / len(SHIFTS)


def pixel_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """``model`` taking [0, 1] pixels, in eval mode (for export and prediction): wrapped in :class:`PixelInput` if
    the run standardised its inputs, in :class:`ShiftAverage` / :class:`FlipAverage` if its final evaluation
    averaged over those views (``shift_tta`` / ``flip_tta``)."""
    norm = normalization(config)
    model = model if norm is None else PixelInput(model, *norm)
    model = ShiftAverage(model) if config.shift_tta else model
    return (FlipAverage(model) if config.flip_tta else model).eval()


SPLIT_FILE = "split.csv"  # the images of a folder run and their split: evaluate, inspect and resume read it back


def load_run_dataset(config: TrainConfig, run_dir=None, *, data_dir=None, progress: bool = True,
                     log=print) -> ImageDataset:
    """The dataset ``config`` names; a run directory's split.csv pins exactly the images and splits it used.
    ``data_dir``: where Fashion-MNIST's files are now, instead of where the run found them."""
    if data_dir is not None:
        config = config.replace(data_dir=str(data_dir))
    split_file = None if run_dir is None else Path(run_dir) / SPLIT_FILE
    return load_data(data_spec(config, split_file), progress=progress, log=log)


def data_spec(config: TrainConfig, split_file=None) -> DataSpec:
    """What ``config`` trains on, for :func:`inceptionlab.data.load_data`; ``split_file``: a run's split.csv."""
    return DataSpec(
        path=config.data, data_dir=config.data_dir, image_size=config.image_size, color=config.color,
        resize=config.resize_mode, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
        classes_file=config.classes_file, on_bad=config.on_bad,
        split_file=None if split_file is None else str(split_file),
    )
