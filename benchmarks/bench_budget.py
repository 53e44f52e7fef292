"""How well `train --time-budget` keeps its budget: planned against actual seconds, on an idle machine and with one
busy process started mid-run (the plan must then be revised).

    python benchmarks/bench_budget.py 300 [--busy] [--busy-after 0.3] [--preset quick] [more train options]

Each case is a fresh `inceptionlab train --preset P --time-budget B` process. The figures are the run's own
(summary.json: elapsed_seconds, budget_error, planned_steps, steps; config.json: the plan and its revisions) and the
process's wall time from the outside (start-up and the final files included). ``--busy`` starts
`python3 -c "while True: pass"` after ``--busy-after`` of the budget and kills it when the run ends. Prints one
table row and writes JSON into benchmarks/results/<date>-cpu/ (or --out). Measure with nothing else running and say
so when something was: the load averages before and after are in the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_budget(budget: str, preset: str, extra: list[str], busy_after: float | None, out: Path) -> dict:
    cmd = [sys.executable, "-m", "inceptionlab", "train", "--preset", preset, "--time-budget", budget, "--out",
           str(out), "--no-progress", *extra]
    started = time.perf_counter()
    train = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    competitor = None
    try:
        if busy_after is not None:
            time.sleep(busy_after)
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        log, _ = train.communicate()
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    wall = time.perf_counter() - started
    if train.returncode:
        sys.exit(f"train failed ({train.returncode}):\n{log[-3000:]}")
    run_dir = next(out.glob("*/summary.json")).parent
    summary = json.loads((run_dir / "summary.json").read_text())
    plan = json.loads((run_dir / "config.json").read_text())["budget_plan"]
    return {"wall_seconds": wall, "elapsed_seconds": summary["elapsed_seconds"],
            "budget_error": summary["budget_error"], "planned_steps": summary["planned_steps"],
            "steps": summary["steps"], "test_acc": summary.get("test_acc"),
            "plan": plan, "log": [line for line in log.splitlines() if line.startswith(("plan", "training"))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("budget", help="the --time-budget, e.g. 300 or 5m")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--busy", action="store_true", help="one spinning process from --busy-after of the budget")
    parser.add_argument("--busy-after", type=float, default=0.3, help="fraction of the budget (default 0.3)")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/<date>-cpu/budget-*.json)")
    args, extra = parser.parse_known_args()  # the rest: more `inceptionlab train` options
    args.extra = [x for x in extra if x != "--"]
    from inceptionlab.config import parse_duration

    budget_s = parse_duration(args.budget)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_budget(args.budget, args.preset, args.extra,
                            args.busy_after * budget_s if args.busy else None, Path(tmp))
    record = {"budget_s": budget_s, "preset": args.preset, "busy": args.busy, "extra": args.extra,
              "load_before": load_before, "load_after": os.getloadavg(), "cores": os.cpu_count(), **result}
    print(f"| {budget_s:g} s | {'busy' if args.busy else 'idle'} | {result['planned_steps']:,} | {result['steps']:,} "
          f"| {len(result['plan']['revisions'])} | {result['elapsed_seconds']:.1f} s "
          f"({result['budget_error']:+.1%}) | {result['wall_seconds']:.1f} s | load {load_before[0]:.2f} |")
    out = args.out or (Path(__file__).parent / "results" / f"{datetime.date.today()}-cpu" /
                       f"budget-{budget_s:g}s{'-busy' if args.busy else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
