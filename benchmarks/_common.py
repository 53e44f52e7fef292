"""What probe_step.py and bench_train.py share: our side is always built by the trainer's own ``setup``.

torch and the package are imported inside the functions: a parent process that only spawns and times children
never loads them.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def build_state(config, run_dir, *, data=None, log=None, allow_unverified_streams: bool = False):
    """The :class:`~inceptionlab.engine.trainer.RunState` that ``train(config)`` builds in a single process: the
    device, the checks ``train`` makes before any work, then :func:`inceptionlab.engine.trainer.setup` itself.
    ``allow_unverified_streams``: time branch streams on a BatchNorm model, which ``train`` refuses."""
    import torch

    from inceptionlab.devices import resolve_device
    from inceptionlab.engine.distributed import Distributed
    from inceptionlab.engine.trainer import check_runtime, setup

    config = config.validate()
    device = resolve_device(config.device)
    check_runtime(config, device, 1)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)  # train() sets it for its call; here the process is the call
    return setup(config, Distributed(), device, data=data, run_dir=run_dir, progress=False, log=log,
                 allow_unverified_streams=allow_unverified_streams)


def time_steps(state, batches: Iterator, warmup_steps: int, steps: int) -> float:
    """Seconds for ``steps`` calls of ``state.step_fn`` after ``warmup_steps`` untimed ones (a graph's warm-up and
    capture happen in the first), each on the next of ``batches``, with the run's CUDA switches on as
    ``run_epochs`` applies them. The clock stops once every queued step has finished."""
    import torch

    from inceptionlab.engine.cuda import cuda_switches

    loss_sum = torch.zeros((), device=state.device)

    def run(count: int) -> None:
        for _ in range(count):
            x, y = next(batches)
            loss_sum.add_(state.step_fn(x, y)[0])  # as the trainer sums: no host sync inside the loop
        float(loss_sum)
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)  # side streams (branch streams) included

    with cuda_switches(state.model, state.cuda_opts):
        run(warmup_steps)
        start = time.perf_counter()
        run(steps)
        return time.perf_counter() - start


def memory(device) -> dict:
    """Peak host RSS of this process, and peak GPU memory on CUDA."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.type == "cuda":
        import torch

        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


def run_meta() -> dict:
    """Where and when: the machine and its load before the measurement (add ``loadavg_after`` at the end)."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(), "cpu": cpu_model(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: Path | None, obj: dict) -> None:
    """Write ``obj`` atomically (a reader never sees half a file), creating the folder."""
    if path is None:
        return
    from inceptionlab.fileio import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)
