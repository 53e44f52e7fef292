"""Pick the CUDA switches (branch streams, cuDNN benchmark) for a run from a step-time probe made on the same card.

    python benchmarks/choose_cuda_options.py PROBE.json --target recipe      # googlenet 96 px, batch 128, 10 epochs
    python benchmarks/choose_cuda_options.py PROBE.json --target fast        # the fast preset
    python benchmarks/choose_cuda_options.py PROBE.json --target compare     # the four Inception models

Prints ``branch_streams=<bool>,cudnn_benchmark=<bool>`` (bench_train.py's override syntax; ``--cli`` prints the
``inceptionlab train`` flags instead). A variant counts only if its probe row ran and, when it uses branch
streams, the graph-vs-eager check of every model it will train passed (relative drift < 1e-4, as in
tests/test_fast.py). Among those,
the winner has the smallest predicted time ``(1 + benchmark) * prepare + steps * ms_per_step``: warm-up and capture
once, plus (with cudnn.benchmark) about as much again for the shapes that are new after capture (the epoch's last
batch and the evaluation batches); a guess that the end-to-end runs check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# target -> (model, size, batch of the probe rows that stand for it; steps of the run; the checks that must pass for
# branch streams, or None where the run trains a model with BatchNorm: the trainer refuses the switch for those,
# see inceptionlab.fast.AUTO_BRANCH_STREAMS)
TARGETS = {
    "recipe": ("googlenet", 96, 128, 10 * 469, ["googlenet, branch streams"]),
    "fast": ("googlenet-bn", 64, 256, 12 * 235, None),
    "compare": ("googlenet", 96, 128, 4 * 10 * 469, None),
}


def choose(probe: dict, target: str) -> tuple[dict, list[str]]:
    model, size, batch, steps, checks_needed = TARGETS[target]
    checks = probe.get("graph_vs_eager_max_rel_diff", {})
    streams_ok = checks_needed is not None and all(
        isinstance(checks.get(k), (int, float)) and checks[k] < 1e-4 for k in checks_needed)
    notes, best, best_cost = [], {"branch_streams": False, "cudnn_benchmark": False}, float("inf")
    for row in probe.get("probe", []):
        if (row["mode"], row["model"], row["size"] or probe.get("image_size", 96), row["batch"], row["precision"],
                row["channels_last"]) != ("cudagraph", model, size, batch, "bf16", True):
            continue
        if "ms_per_step" not in row:
            notes.append(f"{row['setup']}: failed ({row.get('error', '?')[:80]})")
            continue
        if row["branch_streams"] and not streams_ok:
            why = "BatchNorm models refuse them" if checks_needed is None else f"a check did not pass ({checks_needed})"
            notes.append(f"{row['setup']}: skipped, {why}")
            continue
        prepare = row.get("prepare_seconds") or 0.0
        cost = (1 + row["cudnn_benchmark"]) * prepare + steps * row["ms_per_step"] / 1000
        notes.append(f"{row['setup']}: {row['ms_per_step']:.2f} ms/step, prepare {prepare:.1f} s -> {cost:.1f} s")
        if cost < best_cost:
            best_cost = cost
            best = {"branch_streams": bool(row["branch_streams"]), "cudnn_benchmark": bool(row["cudnn_benchmark"])}
    return best, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probe", type=Path)
    p.add_argument("--target", choices=tuple(TARGETS), required=True)
    p.add_argument("--cli", action="store_true", help="print inceptionlab train flags")
    args = p.parse_args(argv)
    try:
        probe = json.loads(args.probe.read_text())
    except (OSError, ValueError) as exc:
        print(f"choose_cuda_options: cannot read {args.probe} ({exc}); using the plain graph", file=sys.stderr)
        probe = {}
    best, notes = choose(probe, args.target)
    for line in notes:
        print(f"  {args.target}: {line}", file=sys.stderr)
    if args.cli:
        print(" ".join(f"--{'' if on else 'no-'}{k.replace('_', '-')}" for k, on in best.items()))
    else:
        print(",".join(f"{k}={'true' if on else 'false'}" for k, on in best.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
