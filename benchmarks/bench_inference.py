"""CPU inference speed: PyTorch eager vs ONNX Runtime, throughput at batch 256 and latency at batch 1.

    python benchmarks/bench_inference.py                       # googlenet at 96x96, prints a table
    python benchmarks/bench_inference.py --out bench.json --model googlenet-bn --size 96

Both sides run the same fp32 weights (random Xavier init: speed does not depend on the values) on the CPU with
their default thread counts (reported). The ONNX graph is the one `inceptionlab export` writes (in memory here).
Batch-256 inputs are real-sized random pixels; each figure is the median of ``--repeats`` timed runs after one
warm-up run (batch 1: ``--latency-runs`` runs after 10 warm-ups). Timings on a machine shared with other work are
noisy: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from inceptionlab.deploy.onnx import DEFAULT_OPSET, INPUT_NAME, require_onnx, to_onnx_proto
from inceptionlab.models import create_model, init_xavier_


def median_seconds(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench(model_name: str, size: int, batch: int, repeats: int, latency_runs: int) -> dict:
    _, ort = require_onnx()
    torch.manual_seed(0)
    model = init_xavier_(create_model(model_name)).eval()
    proto = to_onnx_proto(model, torch.rand(2, 1, size, size), DEFAULT_OPSET)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x_batch = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(1))
    x_one = x_batch[:1].clone()
    feed_batch, feed_one = {INPUT_NAME: x_batch.numpy()}, {INPUT_NAME: x_one.numpy()}

    with torch.inference_mode():
        diff = float(np.abs(session.run(None, feed_batch)[0][:8] - model(x_batch[:8]).numpy()).max())

    def torch_run(x):
        with torch.inference_mode():
            model(x)

    results = {}
    for backend, run_batch, run_one in (
        ("pytorch", lambda: torch_run(x_batch), lambda: torch_run(x_one)),
        ("onnxruntime", lambda: session.run(None, feed_batch), lambda: session.run(None, feed_one)),
    ):
        t_batch = median_seconds(run_batch, repeats, warmup=1)
        t_one = median_seconds(run_one, latency_runs, warmup=10)
        results[backend] = {
            f"images_per_s_batch{batch}": batch / statistics.median(t_batch),
            "latency_ms_batch1_median": 1e3 * statistics.median(t_one),
            "latency_ms_batch1_p90": 1e3 * sorted(t_one)[int(0.9 * (len(t_one) - 1))],
        }
    return {
        "model": model_name,
        "image_size": size,
        "batch": batch,
        "results": results,
        "max_abs_logit_diff_first8": diff,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="googlenet")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    report = bench(args.model, args.size, args.batch, args.repeats, args.latency_runs)
    report["loadavg_before"], report["loadavg_after"] = load_before, os.getloadavg()
    print(f"{args.model} at {args.size}x{args.size}, fp32, CPU ({report['cpu_count']} cores, "
          f"load {load_before[0]:.1f} -> {report['loadavg_after'][0]:.1f})")
    print(f"{'backend':<12} {'images/s @' + str(args.batch):>15} {'batch-1 ms (median)':>20} {'p90':>8}")
    for backend, r in report["results"].items():
        print(f"{backend:<12} {r[f'images_per_s_batch{args.batch}']:>15.1f} "
              f"{r['latency_ms_batch1_median']:>20.2f} {r['latency_ms_batch1_p90']:>8.2f}")
    if args.out:
        from inceptionlab.fileio import atomic_write_json

        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
