"""``inceptionlab compare | sweep``: the chapter's exercises as grids of training runs.

A thin layer over :mod:`inceptionlab.experiments`; both accept every option of ``inceptionlab train``
(:func:`inceptionlab.cli.train.add_training_options`), which sets the shared base config of all runs.
"""

from __future__ import annotations

import argparse
import sys

from inceptionlab.cli._args import model_name, positive_int
from inceptionlab.cli.train import add_training_options, given_options
from inceptionlab.config import TrainConfig, preset_config


def size_list(text: str) -> list[int]:
    """``16,24,32`` -> [16, 24, 32]; a usage error (exit 2) for anything but positive whole numbers."""
    sizes = []
    for part in text.split(","):
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated pixel sizes like 16,32,96, got {text!r}") \
                from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"image sizes must be positive, got {value} in {text!r}")
        sizes.append(value)
    return sizes


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="train several models under the same budget; table, results.json and overlaid accuracy curves",
        description="Train each model with the same options (any `inceptionlab train` option) for --seeds seeds; "
        "write table.md (parameters, FLOPs, final test accuracy mean ± std, wall time), results.json, curves.png "
        "and the run directories into <out>/compare-<time>/ (or --out-dir).",
    )
    p.add_argument("models", nargs="+", type=model_name, metavar="MODEL", help="registered model names")
    _common(p)
    add_training_options(p, skip=("model",))
    p.set_defaults(func=run_compare)

    p = subparsers.add_parser(
        "sweep",
        help="test accuracy against input size for one model",
        description="Train --model at each of --image-size (comma-separated) with the same options; write table.md, "
        "results.json, accuracy.png (accuracy against size), curves.png and the run directories into "
        "<out>/sweep-<time>/ (or --out-dir). Sizes the model cannot take are refused before any training.",
    )
    p.add_argument("--image-size", dest="image_sizes", type=size_list, required=True, metavar="SIZES",
                   help="comma-separated input sides, e.g. 16,24,32,48,64,96")
    _common(p)
    add_training_options(p, skip=("image_size",))
    p.set_defaults(func=run_sweep)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="runs per row, with seeds --seed, --seed + 1, ... (default 1)")
    p.add_argument("--out-dir", help="write here instead of a new <out>/<command>-<time>/; the rows an earlier run "
                   "left there are kept (a row trained again is replaced)")
    p.add_argument("--replace", action="store_true",
                   help="drop the rows an earlier run left in --out-dir instead of keeping them")


def _base_config(args) -> TrainConfig:
    config = preset_config(args.preset or "d2l", **given_options(args))
    return config.validate()


def _finish(result) -> int:
    print(result.out_dir / "table.md")
    print((result.out_dir / "table.md").read_text())
    if result.status != "completed":
        print(f"inceptionlab {result.kind}: interrupted; finished rows are in {result.out_dir}", file=sys.stderr)
    return result.exit_code


def run_compare(args) -> int:
    from inceptionlab.experiments import compare

    return _finish(compare(args.models, _base_config(args), seeds=args.seeds, out_dir=args.out_dir,
                           progress=args.progress, replace=args.replace))


def run_sweep(args) -> int:
    from inceptionlab.experiments import check_sweep_sizes, sweep

    config = _base_config(args)
    check_sweep_sizes(config.model, args.image_sizes, config.in_channels)  # before anything loads
    return _finish(sweep(config.model, args.image_sizes, config, seeds=args.seeds, out_dir=args.out_dir,
                         progress=args.progress, replace=args.replace))
