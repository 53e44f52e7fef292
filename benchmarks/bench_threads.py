"""Training-step throughput of one model on the CPU at a given thread count (random inputs, no data loading).

    python benchmarks/bench_threads.py THREADS SIZE {fp32,bf16} MODEL     # e.g. 2 28 bf16 googlenet-bn
    python benchmarks/bench_threads.py 2 96 bf16 googlenet --ab-fuse-1x1 --rounds 6 --steps 3

Batch 128, SGD with momentum, channels_last, 2 warm-up steps, then 5 (size > 64) or 15 timed steps.
The source of the thread table in docs/training.md. ``--ab-fuse-1x1``: the same model with the fused 1x1
convolutions off and on (``inceptionlab.engine.cuda.apply_block_switches``), in alternating rounds (ABBA order),
each round a fresh timing of ``--steps`` steps; prints both medians. Not a test: the figure depends on the machine
and its load.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from inceptionlab.engine.cuda import apply_block_switches, remove_block_switches
from inceptionlab.models import create_model


class Fuse1x1:
    """Turns the fused 1x1 convolutions of ``model`` on and off (the switch the trainer applies on CUDA)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.patched = model, []

    def set(self, on: bool) -> None:
        remove_block_switches(self.patched)
        self.patched = apply_block_switches(self.model, streams=False, fuse_1x1=on)


def ab_fuse_1x1(model, step, timed, rounds: int, steps: int, label: str) -> None:
    """Median ms per step with the fused 1x1 convolutions off and on, in ABBA order."""
    fuse = Fuse1x1(model)
    ms = {False: [], True: []}
    for fused in (False, True):  # warm both variants (oneDNN primitives for each shape)
        fuse.set(fused)
        for _ in range(2):
            step()
    for r in range(rounds):
        for fused in ((False, True) if r % 2 == 0 else (True, False)):
            fuse.set(fused)
            ms[fused].append(1000 * timed(steps) / steps)
    for fused, values in ms.items():
        print(f"{label}, fuse_1x1={'on' if fused else 'off'}: median {statistics.median(values):.1f} ms/step "
              f"({', '.join(f'{v:.0f}' for v in values)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("threads", type=int)
    p.add_argument("size", type=int)
    p.add_argument("precision", choices=("fp32", "bf16"))
    p.add_argument("model")
    p.add_argument("--ab-fuse-1x1", action="store_true", help="time fused 1x1 off and on, alternating")
    p.add_argument("--rounds", type=int, default=6, help="with --ab-fuse-1x1: rounds per side")
    p.add_argument("--steps", type=int, help="timed steps (per round); default 5 above 64 px, else 15")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(128, 1, args.size, args.size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def timed(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - start

    steps = args.steps or (5 if args.size > 64 else 15)
    label = f"threads={args.threads} size={args.size} {args.precision} {args.model}"
    if not args.ab_fuse_1x1:
        for _ in range(2):
            step()
        print(f"{label}: {128 * steps / timed(steps):.0f} img/s")
        return
    ab_fuse_1x1(model, step, timed, args.rounds, steps, label)


if __name__ == "__main__":
    main()
