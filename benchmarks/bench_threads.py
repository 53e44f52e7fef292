"""Training-step throughput of one model on the CPU at a given thread count (random inputs, no data loading).

    python benchmarks/bench_threads.py THREADS SIZE {fp32,bf16} MODEL     # e.g. 2 28 bf16 googlenet-bn

Batch 128, SGD with momentum, channels_last, 2 warm-up steps, then 5 (size > 64) or 15 timed steps.
The source of the thread table in docs/training.md. Not a test: the figure depends on the machine and its load.
"""

import sys
import time

import torch
import torch.nn.functional as F

from inceptionlab.models import create_model


def main() -> None:
    threads, size, precision, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(threads)
    model = create_model(name).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(128, 1, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    steps = 5 if size > 64 else 15
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    print(f"threads={threads} size={size} {precision} {name}: {128 * steps / seconds:.0f} img/s")


if __name__ == "__main__":
    main()
