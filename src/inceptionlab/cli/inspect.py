"""``inceptionlab inspect RUN_DIR``: inside a run's Inception blocks (a thin layer over :mod:`inceptionlab.inspect`).

The library is imported inside the command, so that building the parser (``--help``) does not import torch.
"""

from __future__ import annotations

import argparse

from inceptionlab.cli._args import positive_int, print_json


def image_or_index(text: str) -> int | str:
    """A whole number is a test-set index; anything else is an image file's path."""
    return int(text) if text.isdigit() else text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="branch channels, energy and ablation of every Inception block of a run",
        description="For every multi-branch (Inception) block of the run's model: the channels of each branch, "
        "its share of the block's output energy, and the test accuracy and loss when the branch (or the whole "
        "block) is replaced by its mean over the test set or by zero. Evaluated as `inceptionlab evaluate` does. "
        "Writes branches.png, errors.png (the most confident mistakes), inspect.json and, with --image, "
        "features.png into --out.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--image", type=image_or_index, metavar="FILE_OR_INDEX",
                   help="also draw each branch's feature maps for this test-set index or image file")
    p.add_argument("--blocks", type=lambda text: [n for n in text.split(",") if n], metavar="NAME[,NAME...]",
                   help="only these blocks, by module path (e.g. b3.0,b4.0; default: all)")
    p.add_argument("--limit-test", type=positive_int, metavar="N",
                   help="only the first N test images (default: the full test set; each block costs "
                   "2 x (branches + 1) evaluations)")
    p.add_argument("--errors", type=positive_int, default=16, metavar="K",
                   help="how many confident mistakes to draw (default 16)")
    p.add_argument("--out", metavar="DIR", help="where the files go (default: RUN_DIR/inspect)")
    p.add_argument("--data-dir")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                   help="--image FILE is dark-on-light and must be inverted (default: decide from its border)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from inceptionlab.inspect import inspect_run

    invert = {"auto": "auto", "yes": True, "no": False}[args.invert]
    report = inspect_run(args.run_dir, data_dir=args.data_dir, device=args.device, batch_size=args.batch_size,
                         limit_test=args.limit_test, blocks=args.blocks, image=args.image, out_dir=args.out,
                         top_errors=args.errors, invert=invert,
                         progress=False if args.json else None)
    if args.json:
        print_json(report)
        return 0
    print_report(report)
    return 0


def print_report(report: dict) -> None:
    print(f"{report['model']} ({report['run_dir']}): test acc {report['test_acc']:.4f}, test loss "
          f"{report['test_loss']:.4f} on {report['count']:,} images ({report['precision']})")
    width = max(5, *(len(b["block"]) for b in report["blocks"]))
    print(f"{'block':<{width}}  {'branch':>6}  {'channels':>8}  {'energy':>7}  {'mean acc':>8}  {'drop':>7}  "
          f"{'loss':>7}  {'zero acc':>8}  {'drop':>7}  {'loss':>7}")
    for block in report["blocks"]:
        for row in [*block["branches"], block["all"]]:
            print(f"{block['block']:<{width}}  {row['branch']:>6}  {row['channels']:>8,}  {row['energy_share']:>7.1%}  "
                  f"{row['mean_acc']:>8.4f}  {row['mean_drop']:>+7.4f}  {row['mean_loss']:>7.4f}  "
                  f"{row['zero_acc']:>8.4f}  {row['zero_drop']:>+7.4f}  {row['zero_loss']:>7.4f}")
    print("\nmean: the branch's output replaced by its per-channel mean over these test images; zero: by zero; "
          "all: every branch of the block; energy: the branch's share of the sum of squares of the block's "
          "branch outputs.")
    if report["errors"]:
        print("\nmost confident mistakes:")
        for e in report["errors"][:5]:
            print(f"  test image {e['index']:>5}: {e['true_name']} taken for {e['predicted_name']} "
                  f"({e['confidence']:.2f})")
    print("\nwrote " + ", ".join(report["files"].values()))
