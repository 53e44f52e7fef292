"""Progressive resizing, probed before building it (issue 27, EXPERIMENTS.md (11)): the `quick` preset trained for a
fixed number of steps whose first ``--fraction`` see the training images shrunk to ``--small`` px (antialiased
bilinear, per batch), the rest at the preset's 28 px; scored on the held-out images like budget_preset.py's select.

Pick ``--steps`` so that the run fills the budget it stands for (the row's ``wall_seconds`` says whether it did):
the step costs at 16 / 20 / 24 / 28 px are in EXPERIMENTS.md (11).

    .venv/bin/python benchmarks/progressive_probe.py --small 20 --fraction 0.5 --steps 2680 --out X
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from budget_preset import val_scores  # the script's own folder is on sys.path
from quick_preset import load_average


def shrink_early_batches(model: torch.nn.Module, small: int, steps: int) -> None:
    """The model's first ``steps`` training-mode forward passes (= training steps) see ``small`` px inputs."""
    seen = [0]

    def hook(module, args):
        if not module.training or seen[0] >= steps:
            return None
        seen[0] += 1
        x = F.interpolate(args[0], size=(small, small), mode="bilinear", antialias=True, align_corners=False)
        return (x.contiguous(memory_format=torch.channels_last),)

    model.register_forward_pre_hook(hook)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, required=True)
    parser.add_argument("--fraction", type=float, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-split", type=int, default=5000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from inceptionlab.config import preset_config
    from inceptionlab.engine import trainer
    from inceptionlab.train import train

    small_steps = round(args.fraction * args.steps)
    build = trainer.build_model

    def build_shrinking(config, device):
        model = build(config, device)
        shrink_early_batches(model, args.small, small_steps)
        return model

    trainer.build_model = build_shrinking
    config = preset_config("quick", time_budget=None, steps=args.steps, val_split=args.val_split, seed=args.seed,
                           device="cpu")
    label = f"small{args.small}-f{args.fraction:g}-steps{args.steps}"
    load, started = load_average(), time.perf_counter()
    result = train(config.replace(out=str(Path(args.out, label))), log=None, progress=False)
    row = {"label": label, "small": args.small, "fraction": args.fraction, "steps": result.summary["steps"],
           "seed": args.seed, "wall_seconds": round(time.perf_counter() - started, 1),
           "elapsed_seconds": result.summary["elapsed_seconds"], "load_before": load, "load_after": load_average(),
           "test_acc_not_used": result.summary["test_acc"], "val_acc_run": result.summary["val_acc"],
           **val_scores(str(result.run_dir), config)}
    print(json.dumps(row), flush=True)
    with open(Path(args.out, "progressive.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
