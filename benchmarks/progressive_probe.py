"""Progressive resizing, probed before building it (issue 27, EXPERIMENTS.md (11)): the `quick` preset trained for a
fixed number of steps whose first ``--fraction`` see the training images shrunk to ``--small`` px (antialiased
bilinear, per batch), the rest at the preset's 28 px; scored on the held-out images like budget_preset.py's select.

Pick ``--steps`` so that the run fills the budget it stands for (the row's ``wall_seconds`` says whether it did):
the step costs at 16 / 20 / 24 / 28 px are in EXPERIMENTS.md (11).

    .venv/bin/python benchmarks/progressive_probe.py --small 20 --fraction 0.5 --steps 2680 --out X
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from budget_preset import probe_parser, train_and_score  # the script's own folder is on sys.path


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
    parser = probe_parser(__doc__, budget=False)
    parser.add_argument("--small", type=int, required=True)
    parser.add_argument("--fraction", type=float, required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args()

    from inceptionlab.config import preset_config
    from inceptionlab.engine import trainer

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
    train_and_score(config, label, args.out, "progressive.jsonl", small=args.small, fraction=args.fraction)


if __name__ == "__main__":
    main()
