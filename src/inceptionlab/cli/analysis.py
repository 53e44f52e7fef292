"""``inceptionlab models | shapes | params | min-size``: the registry and the chapter's analysis questions.

A thin layer over :mod:`inceptionlab.analysis`; every command has ``--json``. The library is imported inside each
command, so that building the parser (``--help``, ``--version``) does not import torch.
"""

from __future__ import annotations

import argparse

from inceptionlab.cli._args import model_name, positive_int, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the registered models",
        description="Every model name `--model` accepts, with its natural input size and a one-line description.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser(
        "shapes",
        help="per-stage output shapes of a model (the chapter's shape printout)",
        description="Run one image through the model stage by stage and print each stage's output shape.",
    )
    p.add_argument("--model", type=model_name, default="googlenet", help="registered model (default: googlenet)")
    p.add_argument("--size", type=positive_int, help="input side in pixels (default: the model's natural size)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_shapes)

    p = subparsers.add_parser(
        "params",
        help="parameters, FLOPs and fully connected share of every model",
        description="For every registered model: parameters, forward GFLOP per image (multiply-add = 2 FLOP) at "
        "its natural size and at --size, and the share of parameters in fully connected layers.",
    )
    p.add_argument("--size", type=positive_int, help="also report FLOPs at this input side (e.g. 28)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_params)

    p = subparsers.add_parser(
        "min-size",
        help="smallest (and largest) square input a model accepts",
        description="Compute from layer arithmetic the input sizes a model accepts and the largest size whose "
        "last feature map is 1x1, then confirm with real forward passes at the limits and one pixel outside.",
    )
    p.add_argument("--model", type=model_name, required=True, help="registered model")
    p.add_argument("--no-verify", action="store_true", help="skip the confirming forward passes (CPU)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_min_size)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def cmd_shapes(args: argparse.Namespace) -> int:
    from inceptionlab import analysis
    from inceptionlab.models import get_model_spec

    size = args.size or get_model_spec(args.model).natural_size
    rows = analysis.stage_shapes(args.model, size)
    if args.json:
        print_json(
            {
                "model": args.model,
                "input": [1, size, size],
                "stages": [
                    {"name": r.name, "shape": None if r.shape is None else list(r.shape), "params": r.params}
                    for r in rows
                ],
                "params": sum(r.params for r in rows),
            }
        )
        return 0
    print(f"{args.model}, input 1x{size}x{size}")
    width = max(len(r.name) for r in rows)
    print(f"{'stage':<{width}}  {'output shape':>14}  {'params':>12}")
    for r in rows:
        shape = _shape(r.shape) if r.shape is not None else "training only"
        print(f"{r.name:<{width}}  {shape:>14}  {r.params:>12,}")
    print(f"{'total':<{width}}  {'':>14}  {sum(r.params for r in rows):>12,}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from inceptionlab import analysis

    rows = analysis.cost_table(args.size)
    if args.json:
        models = [r.to_dict() for r in rows]
        print_json({"size": args.size, "models": models, "explanation": analysis.WHY_FEW_PARAMETERS})
        return 0
    at = f"GFLOP@{args.size}" if args.size else ""
    print(f"{'model':<17}{'params':>13}{'FC share':>10}{'natural':>9}{'GFLOP@natural':>15}{at:>12}")
    for r in rows:
        extra = ""
        if args.size:
            extra = f"{r.gflops_at_size:>12.3f}" if r.gflops_at_size is not None else f"{'n/a':>12}"
        print(
            f"{r.model:<17}{r.params:>13,}{r.fc_share:>10.1%}{r.natural_size:>9}{r.gflops_natural:>15.3f}{extra}"
        )
    print("\nFLOPs: forward, per image, multiply-add = 2 FLOP, conv + linear, eval mode (no auxiliary heads).")
    if args.size:
        print(f"n/a: the model does not accept {args.size}x{args.size} inputs (see `inceptionlab min-size`).")
    print()
    print(analysis.WHY_FEW_PARAMETERS)
    return 0


def cmd_min_size(args: argparse.Namespace) -> int:
    from inceptionlab import analysis

    report = analysis.input_size_report(args.model, verify=not args.no_verify)
    if args.json:
        print_json(report.to_dict())
        return 0
    r = report
    print(f"{r.model} accepts {r.describe()} (natural size {r.natural_size}).")
    if r.limit_reason:
        print(f"  at {r.min_size - 1}: {r.limit_reason}")
    if r.upper_reason:
        print(f"  at {r.max_size + 1}: {r.upper_reason}")
    fh, fw = r.final_map_at_natural
    if r.max_size_for_1x1 is not None:
        print(f"  last feature map is 1x1 for inputs up to {r.max_size_for_1x1} ({fh}x{fw} at {r.natural_size})")
    else:
        print(f"  last feature map never shrinks to 1x1 ({fh}x{fw} at {r.natural_size}, fixed by the flatten)")
    if r.verified is not None:
        limits = f"{r.min_size}" + (f" and {r.max_size}" if r.max_size is not None else "")
        outside = [str(n) for n in ([r.min_size - 1] if r.min_size > 1 else []) + (
            [r.max_size + 1] if r.max_size is not None else [])]
        print(f"  forward pass at {limits}: {'works' if r.verified else 'FAILS'}", end="")
        if r.failed_below is not None:
            print(f"; at {' and '.join(outside)}: {'fails as claimed' if r.failed_below else 'WORKS (claim wrong)'}")
        else:
            print("; nothing smaller to try")
    return 0 if r.verified is not False and r.failed_below is not False else 1


def cmd_models(args: argparse.Namespace) -> int:
    from inceptionlab.models import get_model_spec, list_models

    specs = [get_model_spec(name) for name in list_models()]
    if args.json:
        print_json([{"name": s.name, "family": s.family, "natural_size": s.natural_size,
                     "description": s.description} for s in specs])
        return 0
    width = max(len(s.name) for s in specs)
    for s in specs:
        print(f"{s.name:<{width}}  {s.natural_size:>4}px  {s.description}")
    return 0
