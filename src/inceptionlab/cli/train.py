"""`inceptionlab train` and `inceptionlab evaluate`: thin layers over :func:`inceptionlab.engine.trainer.train` and
:func:`inceptionlab.evaluate.evaluate_run`."""

from __future__ import annotations

import argparse
import sys

from inceptionlab.cli._args import duration, model_name, nonnegative_int, positive_float, positive_int, print_json
from inceptionlab.config import (
    COLOR_MODES,
    ON_BAD,
    OPTIMIZERS,
    PRECISIONS,
    PRESETS,
    RESIZE_MODES,
    RESUMABLE,
    SCHEDULES,
    STEP_MODES,
    TrainConfig,
    preset_config,
)
from inceptionlab.errors import ConfigError


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    value = nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on Fashion-MNIST or your own images (default: the chapter's recipe)",
        description="Train on Fashion-MNIST, or on your own images with --data PATH (docs/data.md). Defaults are the "
        "chapter's recipe (--preset d2l); options given override the preset. Under torchrun (--nproc_per_node N) it "
        "trains with DistributedDataParallel.",
    )
    add_training_options(p)
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last complete checkpoint")
    run.add_argument("--run-dir", metavar="DIR", help="train in DIR; if DIR already holds a checkpoint of this same "
                     "run, continue from it (what `torchrun --max-restarts N` needs to resume after a failure)")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a run",
                              description="Evaluate a finished run's saved model on its data's test set (a run "
                              "on your own images: the test images of its split.csv).")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--data-dir", help="where Fashion-MNIST's IDX files are (a run trained on them)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    e.add_argument("--batch-size", type=positive_int)
    e.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's logits with its mirror image's (test-time augmentation; default: as the "
                        "run evaluated, its --flip-tta)")
    e.add_argument("--shift-tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's logits over it and its four one-pixel shifts (default: as the run's "
                        "final evaluation, its --shift-tta)")
    e.set_defaults(func=run_evaluate)


def add_training_options(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """The options of `inceptionlab train` (all default None = "not given"; see :func:`given_options`), shared with
    `compare` and `sweep`. ``skip``: option dests a command replaces with its own (e.g. "model")."""
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="named recipe: d2l (the chapter, default), quick (CPU, minutes), best (GPU)")
    if "model" not in skip:
        p.add_argument("--model", type=model_name, help="registry model name (default googlenet)")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--steps", type=positive_int, metavar="N",
                   help="train exactly N optimisation steps: the schedule ends there and the last epoch may be partial "
                   "(instead of --epochs)")
    g.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help="train for this long (300, 90s, 5m, 1h30m): the run times its first steps, plans the steps "
                   "that fill the budget with evaluation included, and ends its schedule there (instead of --epochs)")
    g.add_argument("--batch-size", type=positive_int, help="global batch (split across torchrun processes)")
    g.add_argument("--eval-batch-size", type=positive_int)
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="skip each epoch's last, smaller training batch (d2l: kept)")
    g.add_argument("--lr", type=positive_float)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--momentum", type=probability)
    g.add_argument("--weight-decay", type=nonnegative_float)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--warmup-epochs", type=nonnegative_float)
    g.add_argument("--label-smoothing", type=probability)
    _add_data_options(p.add_argument_group("data and augmentation"), skip)
    _add_speed_options(p.add_argument_group("speed and placement"))
    _add_run_options(p.add_argument_group("the run"))


def _add_data_options(g, skip: tuple[str, ...]) -> None:
    if "image_size" not in skip:
        g.add_argument("--image-size", type=positive_int, help="side of the square input (default 96)")
    g.add_argument("--crop-padding", type=nonnegative_int, help="random crop after zero padding by this much")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flip")
    g.add_argument("--erasing", type=probability, help="random-erasing probability")
    g.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate (and predict, export) each image averaged with its mirror image (test-time "
                        "augmentation; for a run trained with --flip)")
    g.add_argument("--shift-tta", action=argparse.BooleanOptionalAction, default=None,
                   help="the final evaluation (and predict, export) averages each image over it and its four "
                        "one-pixel shifts (test-time augmentation; the per-epoch curves stay one view)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise pixels with the training set's mean/std (d2l: off)")
    g.add_argument("--val-split", type=nonnegative_int, metavar="N",
                   help="hold out N training images (the same ones for every seed and model) as a validation set, "
                   "evaluated each epoch; compare and sweep then rank rows by it (default 0: none)")
    g.add_argument("--limit-train", type=positive_int, help="use only the first N training images (smoke runs; "
                   "after the --val-split hold-out)")
    g.add_argument("--limit-test", type=positive_int, help="use only the first N test images")
    g.add_argument("--data-dir", help="directory holding the four Fashion-MNIST IDX files")
    add_folder_options(g)


def add_folder_options(g) -> None:
    """Your own images (docs/data.md); shared with `inceptionlab data`."""
    g.add_argument("--data", metavar="PATH", help="train on your own images: a folder of class folders, a folder of "
                   "train/val/test folders, or a CSV with columns path,label[,split] (default: Fashion-MNIST)")
    g.add_argument("--color", choices=COLOR_MODES, help="auto (default): grey when every image is grey, else RGB")
    g.add_argument("--resize", dest="resize_mode", choices=RESIZE_MODES,
                   help="how a non-square image becomes square: squash (default), crop (the centre) or pad")
    g.add_argument("--val-fraction", type=probability, help="of each class held out for validation when the data "
                   "has no validation split (default 0.1)")
    g.add_argument("--test-fraction", type=probability, help="of each class held out for testing when the data has "
                   "no test split (default 0.2)")
    g.add_argument("--classes", dest="classes_file", metavar="FILE", help="one class name per line: the class order")
    g.add_argument("--on-bad", choices=ON_BAD, help="a file that cannot be decoded: error (default; names them) or "
                   "skip (listed in the run's bad_files.txt)")


def _add_speed_options(g) -> None:
    g.add_argument("--precision", choices=PRECISIONS,
                   help="auto (default): bf16 autocast + channels_last where the device runs bf16 well (CUDA with "
                   "bf16, CPUs with AVX-512 BF16 or AMX), fp32 elsewhere; fp32 with --no-channels-last is d2l's "
                   "arithmetic")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--step-mode", choices=STEP_MODES,
                   help="auto (one CUDA graph per step on CUDA, eager elsewhere), eager, cudagraph, compile")
    g.add_argument("--branch-streams", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA: run each Inception block's branches on parallel streams (default: auto)")
    g.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA: let cuDNN time its convolution algorithms (default: auto)")
    g.add_argument("--batched-casts", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA graph, bf16: cast all conv/linear weights in one multi-tensor kernel (default: auto)")
    g.add_argument("--fuse-1x1", action=argparse.BooleanOptionalAction, default=None,
                   help="CUDA: run an Inception block's three 1x1 convs on its input as one conv (default: auto)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    g.add_argument("--num-threads", type=positive_int,
                   help="CPU threads for PyTorch (default: chosen by timing the run's own steps; pin for bit-exact "
                   "reruns)")


def _add_run_options(g) -> None:
    g.add_argument("--seed", type=nonnegative_int)
    g.add_argument("--out", help="runs root directory (default runs)")
    g.add_argument("--checkpoint-every", type=nonnegative_float, metavar="MINUTES",
                   help="a mid-epoch recovery point every MINUTES (default 5; 0: only at epoch ends); resuming from "
                   "it gives the numbers of an uninterrupted run")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="also write TensorBoard event files into the run directory (`tensorboard --logdir runs/`; "
                   "pip install 'inceptionlab[tensorboard]')")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")


def given_options(args) -> dict:
    """Options the user gave (argparse defaults are None = 'not given')."""
    keys = [f for f in TrainConfig.__dataclass_fields__ if f not in ("preset", "model_options")]
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def build_config(args) -> TrainConfig | None:
    """The TrainConfig of the command line; ``None`` when resuming without changes."""
    given = given_options(args)
    if args.resume is not None:
        fixed = sorted(set(given) - set(RESUMABLE))
        if fixed or args.preset is not None:
            names = ", ".join("--" + k.replace("_", "-") for k in fixed + (["preset"] if args.preset else []))
            raise ConfigError(
                f"{names} cannot change when resuming (the run continues with its saved config); only "
                + ", ".join("--" + k.replace("_", "-") for k in RESUMABLE) + " may be given with --resume"
            )
        if not given:
            return None
        from inceptionlab import runs

        return runs.read_run_config(args.resume).replace(**given)
    return preset_config(args.preset or "d2l", **given)


def run_train(args) -> int:
    from inceptionlab.engine.trainer import train

    config = build_config(args)
    if config is not None:
        config.validate()
    result = train(config, resume=args.resume, run_dir=args.run_dir, progress=args.progress)
    if result.status == "interrupted":
        done = result.summary["epochs_completed"]
        where = f"the checkpoint of epoch {done} in {result.run_dir} is intact" if done else "no epoch had finished"
        print(f"inceptionlab train: interrupted; {where}", file=sys.stderr)
    return result.exit_code


def run_evaluate(args) -> int:
    from inceptionlab.engine.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, data_dir=args.data_dir, device=args.device, batch_size=args.batch_size,
                          flip_tta=args.flip_tta, shift_tta=args.shift_tta)
    if args.json:
        print_json(result)
        return 0
    tta = ", each with its mirror image (--flip-tta)" if result["flip_tta"] else ""
    tta += ", each averaged over its one-pixel shifts (--shift-tta)" if result["shift_tta"] else ""
    print(f"{result['model']} ({result['run_dir']}): test acc {result['test_acc']:.4f} "
          f"on {result['count']:,} images{tta}, test loss {result['test_loss']:.4f}")
    width = max(len(n) for n in result["class_names"])
    for name in result["class_names"]:
        print(f"  {name:<{width}}  {result['per_class_acc'][name]:.3f}")
    names = result["class_names"]
    print("confusion (rows: true, columns: predicted):")
    print(" " * (width + 2) + " ".join(f"{i:>5}" for i in range(len(names))))
    for i, (name, row) in enumerate(zip(names, result["confusion"], strict=True)):
        print(f"  {name:<{width}}" + " ".join(f"{v:>5}" for v in row) + f"   {i}")
    return 0
