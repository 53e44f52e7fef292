"""NCHW against channels_last on the CPU in fp32: training-step and evaluation images/s for several models, the
two layouts interleaved round by round so that a drifting machine slows both alike. The figures behind
``devices.resolve_precision``'s default layout (BENCHMARKS.md, "Memory layout on a CPU without bf16").

    .venv/bin/python benchmarks/bench_layout.py                # the default rows, 3 rounds
    .venv/bin/python benchmarks/bench_layout.py googlenet-bn:96:128:train --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from inceptionlab.config import TrainConfig
from inceptionlab.engine.trainer import build_model

ROWS = ("googlenet:96:128:train", "googlenet-bn:96:128:train", "googlenet-lite:28:128:train",
        "inception-v3:96:64:train", "inception-resnet:96:64:train", "nin:96:64:train", "lenet:28:256:train",
        "googlenet:96:500:eval", "googlenet-lite:28:500:eval")


def prepared(name: str, size: int, batch: int, channels_last: bool):
    """The model (Xavier init, as the trainer builds it), one random batch and an optimizer, in one layout."""
    torch.manual_seed(0)
    model = build_model(TrainConfig(model=name, image_size=size), torch.device("cpu"))
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 10, (batch,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return model, x, y, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def seconds(model, x, y, optimizer, train: bool, steps: int) -> float:
    """Wall time of ``steps`` training steps (or no-grad forwards) after one untimed warm-up step."""
    def once():
        if not train:
            with torch.no_grad():
                return model.eval()(x)
        loss = F.cross_entropy(model.train()(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    once()
    start = time.perf_counter()
    for _ in range(steps):
        once()
    return time.perf_counter() - start


def measure(row: str, rounds: int, steps: int) -> dict:
    name, size, batch, mode = row.split(":")
    size, batch, train = int(size), int(batch), mode == "train"
    built = {cl: prepared(name, size, batch, cl) for cl in (False, True)}
    rates = {False: [], True: []}
    for _ in range(rounds):
        for cl, parts in built.items():
            rates[cl].append(batch * steps / seconds(*parts, train, steps))
    nchw, nhwc = statistics.median(rates[False]), statistics.median(rates[True])
    return {"row": row, "nchw": nchw, "channels_last": nhwc, "ratio": nhwc / nchw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", default=ROWS, help="model:size:batch:train|eval")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round and layout")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
          f"threads, load {os.getloadavg()[0]:.2f}")
    for row in args.rows:
        r = measure(row, args.rounds, args.steps)
        print(f"{r['row']:<30} NCHW {r['nchw']:8.1f} img/s   channels_last {r['channels_last']:8.1f} img/s   "
              f"x{r['ratio']:.2f}", flush=True)
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
