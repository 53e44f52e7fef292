"""The `quick` preset's training step, variants side by side in one process (random inputs, 2 threads): images/s
per variant, rounds interleaved so a drifting machine slows every variant alike. Also the test-set evaluation at
several batch sizes. The figures of EXPERIMENTS.md (7) / BENCHMARKS.md on a time margin for `quick`.

    .venv/bin/python benchmarks/bench_quick_step.py step "batch_size=128" "batch_size=256" "fuse_1x1=True"
    .venv/bin/python benchmarks/bench_quick_step.py eval 1000 500 256

A variant is ``key=value,...`` overriding the preset (``model_options=dict(width=0.4375)`` works); ``fuse_1x1=True``
patches the Inception blocks with the CUDA switch's fused 1x1 convolutions.
"""

from __future__ import annotations

import sys
import time

import torch

from inceptionlab.config import PRESETS, TrainConfig
from inceptionlab.engine import distributed
from inceptionlab.engine.cuda import apply_block_switches
from inceptionlab.engine.evaluate import evaluate
from inceptionlab.engine.optim import build_optimizer
from inceptionlab.engine.rundata import build_data, with_data
from inceptionlab.engine.step import make_train_step
from inceptionlab.engine.trainer import build_model
from inceptionlab.inputs import load_run_dataset

CPU = torch.device("cpu")


def quick_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**PRESETS["quick"], "precision": "bf16", "channels_last": True, **overrides})


def steps(variants: list[str], rounds: int = 8, per_round: int = 5) -> None:
    built = []
    for text in variants:
        overrides = eval(f"dict({text})")  # noqa: S307 - a benchmark's own command line
        fuse = overrides.pop("fuse_1x1", False)
        config = quick_config(**overrides)
        model = build_model(config, CPU)
        apply_block_switches(model, streams=False, fuse_1x1=fuse)
        step = make_train_step(model, build_optimizer(model, config, CPU), config)
        x = torch.rand(config.batch_size, 1, config.image_size, config.image_size)
        y = torch.randint(0, 10, (config.batch_size,))
        for _ in range(3):
            step(x, y)
        built.append((text, step, x, y, []))
    for _ in range(rounds):
        for _, step, x, y, rates in built:
            start = time.perf_counter()
            for _ in range(per_round):
                loss, _ = step(x, y)
            float(loss)
            rates.append(per_round * len(y) / (time.perf_counter() - start))
    for text, *_, rates in built:
        rates.sort()
        print(f"{text:50s} median {rates[len(rates) // 2]:.0f} img/s, range {rates[0]:.0f}-{rates[-1]:.0f}")


def evaluations(batch_sizes: list[int], repeats: int = 3) -> None:
    config = quick_config()
    config = with_data(config, (dataset := load_run_dataset(config, progress=False, log=None)).info)
    data = build_data(config, distributed.Distributed(), CPU, dataset)
    model = build_model(config, CPU)
    seconds = {b: [] for b in batch_sizes}
    for b in batch_sizes:  # first use of each shape
        evaluate(model, data.test_images[: 2 * b], data.test_labels[: 2 * b], config, batch_size=b)
    for _ in range(repeats):
        for b in batch_sizes:
            start = time.perf_counter()
            evaluate(model, data.test_images, data.test_labels, config, batch_size=b)
            seconds[b].append(round(time.perf_counter() - start, 2))
    for b, times in seconds.items():
        print(f"eval batch {b}: {times} s for {len(data.test_labels):,} images")


if __name__ == "__main__":
    torch.set_num_threads(2)
    mode, args = sys.argv[1], sys.argv[2:]
    steps(args) if mode == "step" else evaluations([int(a) for a in args])
