"""Choose and confirm the `quick` preset as a time budget (issue 27): >= 0.93 test accuracy in 5 minutes and
>= 0.915 in 2 minutes on a 2-core CPU, chosen on validation accuracy.

``select``   every candidate (the `quick` preset with overrides) trains on the training split minus ``--val-split``
             held-out images and is scored on them with and without flip TTA. With ``--budget B`` each trains to
             the time budget itself, one run at a time on an idle box (EXPERIMENTS.md (9)); else a fixed number of
             steps (``--steps`` for the base, scaled by the candidate's ``speed``: what it would fit in the budget),
             which makes the choice independent of the load: run two at once with ``--threads 1`` (EXPERIMENTS.md (8)).
``confirm``  ``inceptionlab train --preset quick --time-budget B --seed S`` as a user runs it, one process per
             seed, each timed end to end; the budget adherence and the test accuracy (read once, for a choice made).

    .venv/bin/python benchmarks/budget_preset.py select --only base,b221,flip-tta --budget 300 --seed 0 --out X
    .venv/bin/python benchmarks/budget_preset.py select --only base,smooth --steps 1080 --threads 1 --out X
    .venv/bin/python benchmarks/budget_preset.py confirm --budget 300 --seeds 3 --out Y
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from quick_preset import load_average, stage_parser  # the script's own folder is on sys.path

# Overrides of the `quick` preset (googlenet-lite, width 0.5, blocks (2, 1, 1)), and the candidate's training speed
# relative to it for --steps (images/s ratio: a faster candidate gets proportionally more steps; unused with --budget).
CANDIDATES: dict[str, tuple[dict, float]] = {
    "base": ({}, 1.0),
    "no-shift-tta": ({"shift_tta": False}, 1.0),  # the preset of EXPERIMENTS.md (9)
    "crop1": ({"crop_padding": 1, "shift_tta": False}, 1.0),  # one-pixel shifts in training instead
    "flip-tta": ({"flip": True, "flip_tta": True}, 0.97),
    "b111": ({"model_options": {"blocks": [1, 1, 1]}}, 1.4),
    "b210": ({"model_options": {"blocks": [2, 1, 0]}}, 1.1),
    "b221": ({"model_options": {"blocks": [2, 2, 1]}}, 0.85),
    "w0.625-b211": ({"model_options": {"width": 0.625, "blocks": [2, 1, 1]}}, 0.64),
    "w0.375-b252": ({"model_options": {"width": 0.375}}, 0.66),
    "w0.375-b222": ({"model_options": {"width": 0.375, "blocks": [2, 2, 2]}}, 0.92),
    "w0.375-b220": ({"model_options": {"width": 0.375, "blocks": [2, 2, 0]}}, 1.15),
    "w0.25-b252": ({"model_options": {"width": 0.25}}, 0.99),
    # recipe candidates at the (2, 1, 1) depth (EXPERIMENTS.md (10)); their speeds are guesses, use --budget
    "bs64": ({"batch_size": 64, "lr": 0.05}, 0.85),
    "wd1e-3": ({"weight_decay": 1e-3}, 1.0),
    "lr0.2": ({"lr": 0.2}, 1.0),
    "smooth": ({"label_smoothing": 0.1}, 1.0),
    "warm0.25": ({"warmup_epochs": 0.25}, 1.0),
    "warm0.1": ({"warmup_epochs": 0.1}, 1.0),
    "warm0.2": ({"warmup_epochs": 0.2}, 1.0),
    # smaller inputs at the (2, 1, 1) depth: cheaper steps, more of them in a budget (EXPERIMENTS.md (11))
    "size24": ({"image_size": 24}, 1.3),
    "size20": ({"image_size": 20}, 1.7),
    # b2 pools before its 3x3 convolution, which then runs on 7x7 instead of 14x14 (EXPERIMENTS.md (12))
    "pool-first": ({"model_options": {"blocks": [2, 1, 1], "pool_first": True}}, 1.28),
    "pool-first-b221": ({"model_options": {"blocks": [2, 2, 1], "pool_first": True}}, 1.06),
    # the candidates of EXPERIMENTS.md (8), relative to the whole table at width 0.5 (now 0.49x the base's speed)
    "b252": ({"model_options": {"blocks": [2, 5, 2]}}, 0.49),
    "b252-smooth": ({"model_options": {"blocks": [2, 5, 2]}, "label_smoothing": 0.1}, 0.49),
    "b252-lr0.2": ({"model_options": {"blocks": [2, 5, 2]}, "lr": 0.2}, 0.49),
    # for a box that fits about twice the epochs (bf16 on AMX, EXPERIMENTS.md (14)): more depth or augmentation
    "b222": ({"model_options": {"blocks": [2, 2, 2]}}, 0.75),
    "flip": ({"flip": True}, 1.0),
    "crop2": ({"crop_padding": 2}, 1.0),
}


def probe_parser(doc: str, budget: bool = True) -> argparse.ArgumentParser:
    """The probes' shared options (``--seed``, ``--val-split``, ``--out``, and ``--budget`` unless they fix steps)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if budget:
        parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-split", type=int, default=5000)
    parser.add_argument("--out", required=True)
    return parser


def val_scores(run_dir: str, config) -> dict:
    """Validation accuracy of the saved model, one view and with flip TTA (the held-out images as training saw them;
    a shift_tta run's own closing number is the row's ``val_acc_run``)."""
    import torch

    from inceptionlab import runs
    from inceptionlab.devices import resolve_precision
    from inceptionlab.engine.evaluate import evaluate
    from inceptionlab.engine.rundata import validation_split
    from inceptionlab.inputs import load_run_dataset, prepare_model

    model, saved = runs.load_run_model(run_dir)
    saved, _ = resolve_precision(saved, torch.device("cpu"))
    prepare_model(model, saved)
    data = load_run_dataset(saved, run_dir, progress=False, log=None)
    _, val_index = validation_split(len(data.train_labels), config.val_split)
    images, labels = data.train_images[val_index], data.train_labels[val_index]
    plain, flipped = (evaluate(model, images, labels, saved, flip=f) for f in (False, True))
    return {"val_acc": plain["acc"], "val_acc_flip_tta": flipped["acc"], "val_loss": plain["loss"]}


def train_and_score(config, label: str, out, jsonl: str, **fields) -> dict:
    """Train ``config`` into ``out/label`` in this process (quietly), score it on its held-out images, print the row
    and append it to ``out/jsonl``; ``fields`` (the candidate's own) come after the label."""
    from inceptionlab.train import train

    load, started = load_average(), time.perf_counter()
    result = train(config.replace(out=str(Path(out, label))), log=None, progress=False)
    row = {"label": label, **fields, "steps": result.summary["steps"], "seed": config.seed,
           "epochs": len(result.metrics), "images_per_sec": result.summary["images_per_sec"],
           "wall_seconds": round(time.perf_counter() - started, 1),
           "elapsed_seconds": result.summary["elapsed_seconds"], "load_before": load, "load_after": load_average(),
           "test_acc_not_used": result.summary["test_acc"], "val_acc_run": result.summary["val_acc"],
           "val_acc_one_view": result.metrics[-1]["val_acc"], **val_scores(str(result.run_dir), config)}
    print(json.dumps(row), flush=True)
    with open(Path(out, jsonl), "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def select(args) -> None:
    from inceptionlab.config import preset_config

    for label in args.only.split(",") if args.only else list(CANDIDATES):
        overrides, speed = CANDIDATES[label]
        steps = None if args.budget else round(args.steps * speed)
        config = preset_config("quick", time_budget=args.budget, steps=steps, val_split=args.val_split,
                               seed=args.seed, num_threads=args.threads, device="cpu", **overrides)
        train_and_score(config, label, args.out, "select.jsonl", budget=args.budget, overrides=overrides)


def confirm(args) -> None:
    """``inceptionlab train --preset quick --time-budget B --seed S``, one process per seed, timed end to end."""
    runs = []
    for seed in range(args.seed, args.seed + args.seeds):
        run_dir = Path(args.out, f"budget{args.budget:g}{args.train_args.replace(' ', '')}-seed{seed}")
        load, started = load_average(), time.perf_counter()
        subprocess.run([sys.executable, "-m", "inceptionlab", "train", "--preset", "quick", "--time-budget",
                        f"{args.budget:g}", "--seed", str(seed), "--run-dir", str(run_dir), "--no-progress",
                        *args.train_args.split()], check=True)
        wall = time.perf_counter() - started
        summary = json.loads((run_dir / "summary.json").read_text())
        runs.append({"budget_s": args.budget, "train_args": args.train_args, "seed": seed,
                     "test_acc": summary["test_acc"],
                     "test_acc_one_view": summary.get("test_acc_one_view"),
                     "elapsed_seconds": summary["elapsed_seconds"], "process_wall_seconds": round(wall, 1),
                     "steps": summary.get("steps"), "planned_steps": summary.get("planned_steps"),
                     "budget_error": summary.get("budget_error"), "revisions": summary.get("budget_revisions"),
                     "load_before": load, "load_after": load_average()})
        print(json.dumps(runs[-1]), flush=True)
        with open(Path(args.out, "confirm.jsonl"), "a") as f:
            f.write(json.dumps(runs[-1]) + "\n")


def main() -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1080, help="select: the base candidate's steps")
    parser.add_argument("--train-args", default="", help="confirm: more `inceptionlab train` options, e.g. --shift-tta")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: select trains each candidate to this budget; confirm (default 300)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.stage == "confirm":
        args.budget = args.budget or 300.0
    (select if args.stage == "select" else confirm)(args)


if __name__ == "__main__":
    main()
