"""Would an exponential moving average (EMA) of the weights help the `quick` preset? One 5-minute validation run
(``--val-split 5000``) of the preset, with EMAs at several decays riding along (one ``torch._foreach_lerp_`` per
step each, outside the trainer: its step function is wrapped here); at the end the run's own weights and every
EMA are scored on the held-out images, so the comparison is paired (one trajectory). The figures of EXPERIMENTS.md
(10), ``benchmarks/results/2026-12-04-cpu/budget-select-recipe.jsonl`` (label ``ema-probe``).

    .venv/bin/python benchmarks/ema_probe.py --seed 1 --out /tmp/ema

The average's decay at update n is min(decay, n / (n + 1)): a plain mean of the weights so far until that reaches
the decay, so a short run is not pulled towards the random initial weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from budget_preset import val_scores  # the script's own folder is on sys.path

from inceptionlab.config import preset_config
from inceptionlab.devices import resolve_precision
from inceptionlab.engine import trainer
from inceptionlab.engine.evaluate import evaluate
from inceptionlab.engine.rundata import validation_split
from inceptionlab.inputs import load_run_dataset
from inceptionlab.train import train

DECAYS = (0.99, 0.995, 0.998, 0.999, 0.9995)


def with_averages(averages: dict) -> None:
    """Wrap the trainer's step so that every decay's average follows the model after each step."""
    build = trainer.build_train_step

    def build_averaged(model, optimizer, config, device, **kwargs):
        step = build(model, optimizer, config, device, **kwargs)
        live = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
        for decay in DECAYS:
            copied = copy.deepcopy(model).eval()
            averages[decay] = (copied, [t for t in [*copied.parameters(), *copied.buffers()] if t.is_floating_point()])
        count = [0]

        def averaged_step(x, y):
            result = step(x, y)
            count[0] += 1
            with torch.no_grad():
                for decay, (_, tensors) in averages.items():
                    torch._foreach_lerp_(tensors, live, 1 - min(decay, count[0] / (count[0] + 1)))
            return result

        return averaged_step

    trainer.build_train_step = build_averaged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    averages: dict = {}
    with_averages(averages)
    config = preset_config("quick", time_budget=args.budget, val_split=5000, seed=args.seed, device="cpu")
    started = time.perf_counter()
    result = train(config.replace(out=args.out), log=print, progress=False)
    wall = round(time.perf_counter() - started, 1)
    data = load_run_dataset(config, progress=False, log=None)
    _, index = validation_split(len(data.train_labels), config.val_split)
    saved, _ = resolve_precision(config, torch.device("cpu"))
    images, labels = data.train_images[index], data.train_labels[index]
    row = {"label": "ema-probe", "seed": args.seed, "budget": args.budget, "steps": result.summary["steps"],
           "wall": wall, "val_live": val_scores(str(result.run_dir), config)["val_acc"],
           "val_live_this_path": evaluate(result.model, images, labels, saved)["acc"],  # must equal val_live
           "val_ema": {str(d): evaluate(m, images, labels, saved)["acc"] for d, (m, _) in averages.items()},
           "test_not_used": result.summary["test_acc"]}
    print(json.dumps(row), flush=True)
    with open(Path(args.out, "ema.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
