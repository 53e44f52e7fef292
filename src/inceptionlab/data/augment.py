"""Batch-level augmentation on the device, for the accuracy work (airbench-style: no per-sample Python).

Every function takes a float batch ``N x C x H x W`` and the loader's ``torch.Generator`` (on the batch's
device), so a run with the same seed sees the same augmented batches. :func:`build_transform` composes them
into the ``transform(x, generator) -> x`` that :class:`inceptionlab.data.DeviceLoader` accepts.
Normalisation is not here: it must also apply at evaluation, so it is ``DeviceLoader(normalize=True)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from inceptionlab.errors import ConfigError

Transform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=x.device)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by ``padding`` zeros (black, the Fashion-MNIST background) and crop back, one offset per image."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = (_rand((2, n), x, generator) * (2 * padding + 1)).long().clamp_(max=2 * padding)
    # One gather for the whole batch: each image's row/column index grid shifted by its own offset.
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + offsets[0].view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + offsets[1].view(n, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: N x H x W x C -> NCHW


def horizontal_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (clothes are left-right symmetric classes)."""
    flip = _rand((x.shape[0],), x, generator) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_erasing(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float = 0.0,
) -> torch.Tensor:
    """Zhong et al.'s random erasing: with probability ``p`` blank one rectangle per image.

    Area fraction uniform in ``scale``, log aspect ratio uniform in ``ratio``, position uniform; the rectangle
    is clipped to the image instead of re-drawn (a batch op cannot retry per image).
    """
    n, _, h, w = x.shape
    u = _rand((5, n), x, generator)
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * h * w
    log_lo, log_hi = torch.log(torch.tensor(ratio[0])), torch.log(torch.tensor(ratio[1]))
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (u[2] * (h - eh + 1)).floor()
    left = (u[3] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device).view(1, h)
    cols = torch.arange(w, device=x.device).view(1, w)
    in_rows = (rows >= top.view(n, 1)) & (rows < (top + eh).view(n, 1))
    in_cols = (cols >= left.view(n, 1)) & (cols < (left + ew).view(n, 1))
    mask = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w) & (u[4] < p).view(n, 1, 1, 1)
    return x.masked_fill(mask, value)


def build_transform(
    *,
    crop_padding: int = 0,
    flip: bool = False,
    erasing: float = 0.0,
) -> Transform | None:
    """Compose the augmentations that are on, in the usual order (crop, flip, erase); None when none is.

    ``erasing`` is the probability of random erasing per image (0 = off).
    """
    if crop_padding < 0:
        raise ConfigError(f"crop_padding must be >= 0, got {crop_padding}")
    if not 0.0 <= erasing <= 1.0:
        raise ConfigError(f"erasing probability must be in [0, 1], got {erasing}")
    steps: list[Transform] = []
    if crop_padding:
        steps.append(lambda x, g: random_crop(x, crop_padding, g))
    if flip:
        steps.append(horizontal_flip)
    if erasing:
        steps.append(lambda x, g: random_erasing(x, g, p=erasing))
    if not steps:
        return None

    def transform(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for step in steps:
            x = step(x, generator)
        return x

    return transform
