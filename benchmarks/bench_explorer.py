"""The explorer's toggle latency: ms per knockout answer (``Explorer.predict`` with one branch switched off, what
``POST /api/predict`` runs for a toggle), the prefix cache against a whole forward pass, on the CPU.

    .venv/bin/python benchmarks/bench_explorer.py                  # trains a throwaway googlenet run at 96 px
    .venv/bin/python benchmarks/bench_explorer.py --run RUN_DIR    # or any run of a model with Inception blocks

Prints JSON: median / p90 ms per toggle, per first view of an image (the prefix pass), per whole forward with the
same ablation (no cache), the load average before and after, and torch's thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch


def throwaway_run(out: str) -> str:
    from inceptionlab.config import TrainConfig
    from inceptionlab.engine.trainer import train

    config = TrainConfig(model="googlenet", image_size=96, epochs=1, batch_size=32, limit_train=64, limit_test=64,
                         precision="fp32", out=out)
    return str(train(config, log=None, progress=False).run_dir)


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run directory (default: train a throwaway googlenet at 96 px)")
    parser.add_argument("--images", type=int, default=5, help="test images to toggle on (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core box two spinning OpenMP threads are slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from inceptionlab.explore.model import Explorer
    from inceptionlab.inspect import replaced_forwards
    from inceptionlab.prefix import ablated_forward, replacement

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or throwaway_run(tmp)
        explorer = Explorer(run_dir, subset=64)
        load_before = os.getloadavg()
        first, toggles, whole = [], [], []
        for image in range(args.images):
            start = time.perf_counter()
            explorer.predict(image)
            first.append(ms(start))
            for block, module in explorer.blocks.items():
                for branch in range(len(module.parallel_branches())):
                    start = time.perf_counter()
                    explorer.predict(image, off={block: [branch]})
                    toggles.append(ms(start))
                    x, _ = explorer.pixels(image)
                    forward = {module: lambda x, m=module, b=branch: ablated_forward(m, {b: replacement("zero")}, x)}
                    start = time.perf_counter()
                    with torch.inference_mode(), replaced_forwards(forward):
                        explorer.run.model(x)
                    whole.append(ms(start))
        model = explorer.run.config.model
    quantiles = lambda v: {"median": round(statistics.median(v), 1),  # noqa: E731
                           "p90": round(statistics.quantiles(v, n=10)[-1], 1), "n": len(v)}
    print(json.dumps({"model": model, "image_size": explorer.run.config.image_size, "threads": torch.get_num_threads(),
                      "toggle_ms": quantiles(toggles), "first_view_ms": quantiles(first),
                      "whole_forward_ms": quantiles(whole), "load_before": load_before,
                      "load_after": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
