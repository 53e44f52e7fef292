"""Choose and confirm the `quick` preset: >= 0.92 test accuracy in <= 5 minutes of training on a 2-core CPU.

Two stages, so that the test set is read once, for a choice already made:

``select``   every candidate (the `quick` preset with overrides) trains on the training split minus ``--val-split``
             held-out images and is ranked by its validation accuracy (``compare``'s ranking). Run two at once with
             ``--threads 1`` and disjoint ``--only`` lists: accuracy does not depend on the speed.
``confirm``  ``inceptionlab train --preset quick --seed S`` as ``make run`` runs it (the preset as ``config.py`` now
             defines it: all 60,000 training images, the threads the trainer picks), ``--seeds`` seeds one after
             another, each process timed end to end, with ``summary.json``'s ``elapsed_seconds`` (the trainer's
             call: setup, every epoch's training and evaluation, the files) and the final test accuracy.

    .venv/bin/python benchmarks/quick_preset.py select --only base,smooth --threads 1 --out bench-out/select-a
    .venv/bin/python benchmarks/quick_preset.py confirm --seeds 2 --out bench-out/confirm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Overrides of BEFORE (below); "base" is the `quick` preset as it was before this search.
CANDIDATES: dict[str, dict] = {
    "base": {},
    "smooth": {"label_smoothing": 0.1},
    "flip": {"flip": True},
    "lr0.2": {"lr": 0.2},
    "bs256-lr0.2": {"batch_size": 256, "lr": 0.2},
    "size32": {"image_size": 32},
    "wd1e-4": {"weight_decay": 1e-4},
    "smooth-flip": {"label_smoothing": 0.1, "flip": True},
    "bs64": {"batch_size": 64},
    "bs64-lr0.05": {"batch_size": 64, "lr": 0.05},
    "adamw": {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05},
    "warmup0.2": {"warmup_epochs": 0.2},
    "lite": {"model": "googlenet-lite"},
    "lite-lr0.2": {"model": "googlenet-lite", "lr": 0.2},
    "lite-flip": {"model": "googlenet-lite", "flip": True},
    "lite-smooth": {"model": "googlenet-lite", "label_smoothing": 0.1},
    "lite-4ep": {"model": "googlenet-lite", "epochs": 4},
    "lite-bs64-lr0.05": {"model": "googlenet-lite", "batch_size": 64, "lr": 0.05},
    "lite-w0.375-4ep": {"model": "googlenet-lite", "model_options": {"width": 0.375}, "epochs": 4},
    "lite-lr0.2-flip": {"model": "googlenet-lite", "lr": 0.2, "flip": True},
    "lite-lr0.2-smooth": {"model": "googlenet-lite", "lr": 0.2, "label_smoothing": 0.1},
    # tried for a time margin over lite-4ep (a larger batch is cheaper per image); rejected: EXPERIMENTS.md (7)
    "lite-4ep-bs192-lr0.15": {"model": "googlenet-lite", "epochs": 4, "batch_size": 192, "lr": 0.15},
    "lite-4ep-bs256-lr0.2": {"model": "googlenet-lite", "epochs": 4, "batch_size": 256, "lr": 0.2},
}
# The `quick` preset before this search (config.py at 4b15054): every candidate starts from it.
BEFORE = {"model": "googlenet-bn", "image_size": 28, "epochs": 3, "batch_size": 128, "lr": 0.1, "optimizer": "nesterov",
          "schedule": "onecycle", "warmup_epochs": 0.5, "weight_decay": 5e-4, "label_smoothing": 0.0, "flip": False,
          "precision": "bf16", "channels_last": True}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def select(args) -> None:
    from inceptionlab.config import preset_config
    from inceptionlab.experiments import Variant, run_variants

    labels = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [x for x in labels if x not in CANDIDATES]
    if unknown:
        sys.exit(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    base = {**BEFORE, "val_split": args.val_split, "num_threads": args.threads, "seed": args.seed, "device": "cpu"}
    variants = [Variant(x, preset_config("quick", **{**base, **CANDIDATES[x]})) for x in labels]
    load = load_average()
    result = run_variants("compare", variants, seeds=args.seeds, out_dir=args.out, progress=False)
    record = {"stage": "select", "load_before": load, "load_after": load_average(), "val_split": args.val_split,
              "rows": [{"label": r.label, "val_acc": r.val_acc, "test_acc_not_used": r.test_acc,
                        "wall_seconds": r.wall_seconds} for r in result.rows]}
    Path(args.out, "select.json").write_text(json.dumps(record, indent=1) + "\n")
    for row in sorted(record["rows"], key=lambda r: -sum(r["val_acc"]) / len(r["val_acc"])):
        print(f"{row['label']:>14}  val acc {', '.join(f'{v:.4f}' for v in row['val_acc'])}")


def confirm(args) -> None:
    """``inceptionlab train --preset quick --seed S`` as a user runs it, one process per seed, timed end to end."""
    from inceptionlab.config import preset_config

    runs = []
    for seed in range(args.seed, args.seed + args.seeds):
        out = Path(args.out, f"seed{seed}")
        load = load_average()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "inceptionlab", "train", "--preset", "quick", "--seed", str(seed),
                        "--run-dir", str(out), "--no-progress"], check=True)
        wall = time.perf_counter() - started
        summary = json.loads((out / "summary.json").read_text())
        runs.append({"seed": seed, "test_acc": summary["test_acc"], "elapsed_seconds": summary["elapsed_seconds"],
                     "process_wall_seconds": wall, "images_per_sec": summary["images_per_sec"],
                     "threads": summary.get("threads", {}).get("chosen"), "load_before": load,
                     "load_after": load_average()})
        print(json.dumps(runs[-1]))
    record = {"stage": "confirm", "config": preset_config("quick").to_dict(), "runs": runs}
    Path(args.out, "confirm.json").write_text(json.dumps(record, indent=1) + "\n")


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The options of a preset script's ``select`` / ``confirm`` stages (budget_preset.py adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("stage", choices=["select", "confirm"])
    parser.add_argument("--only", default="", help="comma-separated candidates (select; default all)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-split", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=None, help="select: torch threads per run")
    parser.add_argument("--out", required=True)
    return parser


def main() -> None:
    args = stage_parser(__doc__.splitlines()[0]).parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (select if args.stage == "select" else confirm)(args)


if __name__ == "__main__":
    main()
