"""The process group of a torchrun job (DDP: NCCL on GPUs, Gloo on CPUs), and the few collectives the trainer uses."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from dataclasses import dataclass

import torch

from inceptionlab.errors import ConfigError, PeerError

# How long a collective waits for the other ranks before it fails: a stopped or hung worker becomes an error on the
# others instead of an endless wait. Long enough for rank 0's final writes and a slow first (compiled) step.
TIMEOUT_ENV = "INCEPTIONLAB_DIST_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 600.0


@dataclass
class Distributed:
    """The process group seen by this process; ``world_size == 1`` when not started by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT for the rendezvous)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(device: torch.device) -> bool:
    """Join torchrun's group; False if the caller had already initialised it (and so owns it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    timeout = process_group_timeout()
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is not None:
        # torchrun's store outlives a restart: keys of the failed attempt (a dead peer's address) must not be read
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
        kwargs.update(store=dist.PrefixStore(f"inceptionlab/attempt-{attempt}", store), rank=rank,
                      world_size=world_size)
    dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    return True


def process_group_timeout() -> datetime.timedelta:
    """``$INCEPTIONLAB_DIST_TIMEOUT_SECONDS``, else :data:`DEFAULT_TIMEOUT_SECONDS`."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{TIMEOUT_ENV}={value!r} is not a positive number of seconds; set it to e.g. "
                          f"{DEFAULT_TIMEOUT_SECONDS:g}, or unset it")
    return datetime.timedelta(seconds=seconds)


def destroy_process_group() -> None:
    import torch.distributed as dist

    dist.destroy_process_group()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t)


def agree_on_stop(signum: int | None, device: torch.device) -> int | None:
    """Every rank must leave the loop at the same step, or the next collective hangs."""
    import torch.distributed as dist

    flag = torch.tensor(signum or 0, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag) or None


def broadcast_path(value, is_main: bool):
    """Rank 0's ``value`` (e.g. the run directory it created) on every rank."""
    import torch.distributed as dist

    holder = [str(value) if is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


@contextlib.contextmanager
def peer_failures_reported(enabled: bool):
    """A collective that fails because a peer died or hung (torch's multi-line RuntimeError) becomes one line with
    the way back; other errors pass through unchanged."""
    try:
        yield
    except RuntimeError as exc:
        if not (enabled and _peer_failure(exc)):
            raise
        first = str(exc).strip().splitlines()[0][:200]
        raise PeerError(
            f"another process of this torchrun job stopped or stopped answering ({first}); the last complete "
            "checkpoint is kept: run the same command again with --run-dir (torchrun --max-restarts N does it for "
            f"you); a silent peer is given up on after ${TIMEOUT_ENV} seconds"
        ) from None


def _peer_failure(exc: RuntimeError) -> bool:
    dist_error = getattr(torch.distributed, "DistError", ())
    signs = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe")
    return isinstance(exc, dist_error) or any(sign in str(exc) for sign in signs)


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The largest of each value across the ranks (float64), so that every rank computes from the same numbers."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()
