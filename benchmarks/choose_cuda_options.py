"""Pick the CUDA switches for a run from a step-time probe made on the same card.

    python benchmarks/choose_cuda_options.py PROBE.json --target recipe      # googlenet 96 px, batch 128, 10 epochs
    python benchmarks/choose_cuda_options.py PROBE.json --target fast        # the fast preset
    python benchmarks/choose_cuda_options.py PROBE.json --target compare     # the four Inception models

Prints ``branch_streams=<bool>,cudnn_benchmark=<bool>,batched_casts=<bool>,fuse_1x1=<bool>`` (bench_train.py's
override syntax; ``--cli`` prints the ``inceptionlab train`` flags instead). A probe row counts only if it ran and,
for each switch it turns on, the graph-vs-eager check of that switch passed (relative drift < 1e-4, as in
tests/test_step.py) for every model the run trains. Branch streams with a BatchNorm model are also refused by the
trainer itself (``inceptionlab.engine.cuda.REFUSE_STREAMS_WITH_BATCHNORM``): allowed here only for the targets that
bench_train.py runs with ``--unverified-streams`` (recipe, fast), never for ``compare``, which runs the CLI.
The probe is probe_step.py's JSON: ``graph_vs_eager_max_rel_diff`` (the checks) and ``probe`` (the rows).
Among the rows that count, the winner has the smallest predicted time ``(1 + benchmark) * prepare + steps *
ms_per_step``: warm-up and capture once, plus (with cudnn.benchmark) about as much again for the shapes that are
new after capture; a guess that the end-to-end runs check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# the package: installed, or PYTHONPATH=src (gpu_check.sh)
from inceptionlab.config import CUDA_SWITCHES as SWITCHES
from inceptionlab.config import preset_config
from inceptionlab.data.fashion_mnist import NUM_EXAMPLES

CHECKED = {"branch_streams": "branch streams", "batched_casts": "batched casts, bf16", "fuse_1x1": "fuse 1x1"}
BATCHNORM = ("googlenet-bn", "inception-v3", "inception-resnet")


def _target(preset: str, trained: tuple[str, ...] | None = None, runs: int = 1, via_bench: bool = True) -> tuple:
    """(model, size, batch of the probe rows that stand for the preset's run; its steps; the models it trains;
    whether bench_train.py runs it, so --unverified-streams can lift the trainer's refusal)"""
    c = preset_config(preset)
    steps = runs * c.epochs * -(-NUM_EXAMPLES["train"] // c.batch_size)
    return c.model, c.image_size, c.batch_size, steps, trained or (c.model,), via_bench


TARGETS = {
    "recipe": _target("d2l"),
    "fast": _target("fast"),
    # `inceptionlab compare` on the chapter's recipe: four models, each probed as googlenet
    "compare": _target("d2l", ("googlenet", *BATCHNORM), runs=4, via_bench=False),
}


def _passed(checks: dict, key: str) -> bool:
    value = checks.get(key)
    return isinstance(value, (int, float)) and value < 1e-4


def choose(probe: dict, target: str, batch: int | None = None) -> tuple[dict, list[str]]:
    """``batch``: the target's run at another batch size (same images per epoch, so steps scale inversely)."""
    model, size, target_batch, steps, trained, via_bench = TARGETS[target]
    batch = batch or target_batch
    steps = steps * target_batch // batch
    checks = probe.get("graph_vs_eager_max_rel_diff", {})
    notes, best, best_cost = [], dict.fromkeys(SWITCHES, False), float("inf")
    for row in probe.get("probe", []):
        if (row["mode"], row["model"], row["size"] or probe.get("image_size", 96), row["batch"], row["precision"],
                row["channels_last"]) != ("cudagraph", model, size, batch, "bf16", True):
            continue
        if "ms_per_step" not in row:
            notes.append(f"{row['setup']}: failed ({row.get('error', '?')[:80]})")
            continue
        why = []
        for switch, label in CHECKED.items():
            if not row.get(switch):
                continue
            failed = [m for m in trained if not _passed(checks, f"{m}, {label}")]
            if failed:
                why.append(f"{label}: no passing check for {', '.join(failed)}")
            if switch == "branch_streams" and not via_bench and any(m in BATCHNORM for m in trained):
                why.append("the trainer refuses branch streams for BatchNorm models")
        if why:
            notes.append(f"{row['setup']}: skipped ({'; '.join(why)})")
            continue
        prepare = row.get("prepare_seconds") or 0.0
        cost = (1 + row.get("cudnn_benchmark", False)) * prepare + steps * row["ms_per_step"] / 1000
        notes.append(f"{row['setup']}: {row['ms_per_step']:.2f} ms/step, prepare {prepare:.1f} s -> {cost:.1f} s")
        if cost < best_cost:
            best_cost = cost
            best = {switch: bool(row.get(switch, False)) for switch in SWITCHES}
    return best, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probe", type=Path)
    p.add_argument("--target", choices=tuple(TARGETS), required=True)
    p.add_argument("--batch", type=int, help="the target's run at this batch size instead of its own")
    p.add_argument("--cli", action="store_true", help="print inceptionlab train flags")
    args = p.parse_args(argv)
    try:
        probe = json.loads(args.probe.read_text())
    except (OSError, ValueError) as exc:
        print(f"choose_cuda_options: cannot read {args.probe} ({exc}); using the plain graph", file=sys.stderr)
        probe = {}
    best, notes = choose(probe, args.target, args.batch)
    for line in notes:
        print(f"  {args.target}: {line}", file=sys.stderr)
    if args.cli:
        print(" ".join(f"--{'' if on else 'no-'}{k.replace('_', '-')}" for k, on in best.items()))
    else:
        print(",".join(f"{k}={'true' if on else 'false'}" for k, on in best.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
