"""Resizing exactly like d2l's PIL preprocessing, on whole batches on the device, and once per split.

d2l's ``transforms.Resize`` + ``ToTensor`` resample each uint8 image with PIL's bilinear filter; :func:`resize_batch`
gives the same pixels (0 differing against Pillow, docs/data.md), and :func:`pre_resize` stores a whole split at
the training size once, so that a batch costs one gather instead of two resampling matmuls.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

PRE_RESIZE_MAX_BYTES = 4 << 30  # 60,000 x 96 x 96 uint8 is 553 MB; at 299 px (5.4 GB) keep resizing per batch

_PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2
_CHUNK_BITS = 8


@functools.lru_cache(maxsize=64)
def _pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's bilinear resampling matrix (out x in), as the integers its fixed-point loop uses.

    A transcription of ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` in Pillow's ``Resample.c``: a triangle
    filter stretched by the scale when shrinking (that is PIL's antialiasing), normalised per output pixel and
    rounded to 22-bit fixed point.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        k = [max(0.0, 1.0 - abs((x - center + 0.5) / filterscale)) for x in range(xmin, xmax)]
        total = sum(k)
        for x, w in zip(range(xmin, xmax), k, strict=True):
            weights[xx, x] = int((w / total if total else w) * (1 << _PRECISION_BITS) + 0.5)
    return weights


@functools.lru_cache(maxsize=64)
def _chunked_weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """The fixed-point weights split into 8-bit pieces, stacked: (3 * out) x in, float32."""
    w = _pil_bilinear_weights(in_size, out_size)
    pieces = [(w >> (_CHUNK_BITS * j)) & ((1 << _CHUNK_BITS) - 1) for j in range(3)]
    return torch.from_numpy(np.concatenate(pieces, axis=0).astype(np.float32)).to(device)


def _pil_pass(x: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resample the leading dim of integer-valued float ``x`` (in x M) exactly as Pillow's 8-bit loop does.

    Pillow computes ``(sum(pixel * k) + 2**21) >> 22`` in integers. The products need 30 bits, more than float32
    holds, so the weights are split into 8-bit pieces: every partial sum is then an integer below 2**24 (exact in
    float32, and in TF32 or bf16 matmuls too, whose inputs here fit their mantissas) and the pieces are recombined
    with exact carries. Measured: 0 differing pixels against Pillow on all 10,000 test images at 96, 64, 32, 16.
    The resampled dim stays leading so that each piece is one contiguous block (2-3x faster on the CPU).
    """
    sums = _chunked_weights(x.shape[0], out_size, x.device) @ x  # (3 * out) x M
    s0, s1, s2 = sums.split(out_size, dim=0)
    # floor((s2 * 2**16 + s1 * 2**8 + s0 + 2**21) / 2**22), carried one piece at a time.
    out = s0.add_(1 << (_PRECISION_BITS - 1)).mul_(1 / 256).floor_()
    out = out.add_(s1).mul_(1 / 256).floor_()
    return out.add_(s2).mul_(1 / (1 << (_PRECISION_BITS - 2 * _CHUNK_BITS))).floor_().clamp_(0, 255)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x C x H x W (or N x H x W, one channel) -> float N x C x size x size in [0, 1], on the images' device.

    The same pixels as d2l's ``Resize(size)`` + ``ToTensor``: PIL's bilinear filter, horizontal pass first,
    each pass rounded to uint8 as PIL does (antialiased when shrinking, by PIL's own rule); each channel on its own,
    as Pillow resamples each band of an RGB image.
    """
    x = images.unsqueeze(1) if images.dim() == 3 else images
    if x.dim() != 4:
        raise ValueError(f"expected N x C x H x W or N x H x W images, got shape {tuple(images.shape)}")
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x.float().div_(255)
    planes = n * c
    x = x.reshape(planes, h, w)
    # Autocast would run the matmuls in bf16 and round the partial sums; they must stay float32.
    with torch.autocast(device_type=x.device.type, enabled=False):
        cols = _pil_pass(x.permute(2, 0, 1).reshape(w, planes * h).float(), size)  # size(x) x (P * H)
        rows = cols.view(size, planes, h).permute(2, 1, 0).reshape(h, planes * size)  # H x (P * size(x))
        out = _pil_pass(rows, size).view(size, planes, size).permute(1, 0, 2)  # P x size(y) x size(x)
        # One copy into N x C x size x size, fused with ToTensor's division (p / 255, rounded as ToTensor's is).
        return torch.div(out, 255, out=torch.empty(planes, size, size, device=x.device)).view(n, c, size, size)


def want_pre_resize(num_images: int, image_size: int) -> bool:
    """Resize a split once when its resized uint8 copy is small enough (BENCHMARKS.md: data pipeline)."""
    return num_images * image_size**2 <= PRE_RESIZE_MAX_BYTES


@torch.no_grad()
def pre_resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 N x C x H x W -> uint8 N x C x size x size with the pixels :func:`resize_batch` gives.

    ``resize_batch`` returns PIL's rounded 8-bit result divided by 255, so storing ``round(x * 255)`` as uint8
    loses nothing: feeding the result back through ``resize_batch`` (which then only divides by 255) gives the
    identical float batch. Resampling is deterministic and augmentation runs after it.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8, device=images.device)
    for start in range(0, len(images), chunk):
        x = resize_batch(images[start : start + chunk], size)
        out[start : start + chunk] = x.mul_(255).round_().to(torch.uint8)
    return out
