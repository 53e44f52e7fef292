"""Which device a run or a command uses, and the precision that device runs well."""

from __future__ import annotations

import re

import torch

from inceptionlab.argcheck import Rule
from inceptionlab.config import DEVICES, TrainConfig
from inceptionlab.errors import ConfigError

# what a library function's ``device`` argument takes (resolve_device's names, cuda:N, or a torch.device)
DEVICE = Rule("a device: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device",
              lambda v: isinstance(v, (str, torch.device)),
              lambda v: isinstance(v, torch.device) or v in DEVICES or re.fullmatch(r"cuda:\d+", v) is not None)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA, then Apple MPS, then the CPU. Under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available; use --device cpu (or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not _mps_available():
        raise ConfigError("--device mps: Apple MPS is not available here; use --device cpu (or auto)")
    return torch.device(name)


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def fast_bf16(device: torch.device) -> str | None:
    """Why ``device`` runs bf16 autocast well (a short reason), or None where it does not.

    CUDA GPUs with native bf16 (Ampere and later); CPUs with AVX-512 BF16 or AMX, where oneDNN's bf16 convolutions
    were 2-2.8x the fp32 step on the project's CPU (BENCHMARKS.md); nothing else (fp32 there).
    """
    if device.type == "cuda":
        return "a CUDA GPU with bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "a CPU with AMX"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "a CPU with AVX-512 BF16"
    return None


def resolve_precision(config: TrainConfig, device: torch.device) -> tuple[TrainConfig, str | None]:
    """``precision="auto"`` and ``channels_last=None`` made concrete for ``device``: bf16 autocast where
    :func:`fast_bf16` says so, else fp32 (d2l's arithmetic); channels_last with bf16 and on a oneDNN CPU (faster
    for every model there, BENCHMARKS.md "Memory layout"). Returns the config and, when "auto" chose, the reason
    (for the run's first line)."""
    reason = None
    precision = config.precision
    if precision == "auto":
        why = fast_bf16(device)
        precision = "bf16" if why else "fp32"
        reason = f"auto: bf16 on {why}" if why else f"auto: fp32 (no fast bf16 on {device.type})"
    channels_last = config.channels_last
    if channels_last is None:
        channels_last = precision == "bf16" or (device.type == "cpu" and torch.backends.mkldnn.is_available())
    return config.replace(precision=precision, channels_last=channels_last), reason
