"""Training speed on a busy CPU: `inceptionlab train` idle and with one competing busy process, with the default
thread choice (measured by the trainer) and with threads pinned to the core count (what PyTorch picks by itself).

    python benchmarks/bench_load.py [--out results.json] [--limit-train 6400]

Each case is a fresh `inceptionlab train --preset quick --epochs 1` process; the figure is the run's own training
images/s (summary.json). The competitor is `python3 -c "while True: pass"`, started before and killed after the
case. Measure with nothing else running (say so when something was): the ratios are the point, in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train_images_per_sec(extra: list[str], limit_train: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "inceptionlab", "train", "--preset", "quick", "--epochs", "1", "--limit-train",
           str(limit_train), "--limit-test", "1000", "--device", "cpu", "--out", str(out), "--no-progress", *extra]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    return {"images_per_sec": summary["images_per_sec"], "wall_seconds": wall, "threads": summary.get("threads")}


def run_case(busy: bool, extra: list[str], limit_train: int) -> dict:
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return train_images_per_sec(extra, limit_train, Path(tmp))
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-train", type=int, default=6400)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    cases = {"measured threads (default)": [], f"--num-threads {cores} (PyTorch's own choice)": [
        "--num-threads", str(cores)]}
    results = {"load_before": os.getloadavg(), "cores": cores, "cases": {}}
    for name, extra in cases.items():
        idle = run_case(False, extra, args.limit_train)
        busy = run_case(True, extra, args.limit_train)
        results["cases"][name] = {"idle": idle, "busy": busy,
                                  "busy_over_idle": busy["images_per_sec"] / idle["images_per_sec"]}
        print(f"{name:<40} idle {idle['images_per_sec']:7.1f} img/s   busy {busy['images_per_sec']:7.1f} img/s   "
              f"busy/idle {results['cases'][name]['busy_over_idle']:.2f}", flush=True)
    results["load_after"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
