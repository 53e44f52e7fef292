"""Selective backprop, probed before building it (issue 27, EXPERIMENTS.md (13)): the `quick` preset at a time budget
whose every step scores a batch of ``--seen`` images without gradients and trains on the ``--keep`` of them with
the highest loss (Jiang et al. 2019, "Accelerating Deep Learning by Focusing on the Biggest Losers"); an epoch's
last, smaller batch keeps the same share. Scored on the held-out images like budget_preset.py's select.

    .venv/bin/python benchmarks/selective_probe.py --seen 256 --keep 128 --seed 0 --out X
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from budget_preset import probe_parser, train_and_score  # the script's own folder is on sys.path


def selective_step(model, optimizer, config, share: float):
    """A step like engine.step's eager one that trains on the highest-loss ``share`` of its batch; its statistics
    (loss x batch, #correct) are of the whole scored batch."""
    from inceptionlab.inputs import forward_loss, make_criterion

    criterion = make_criterion(config)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            _, logits = forward_loss(model, x, y, None, config)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
        hardest = losses.topk(max(1, round(len(y) * share))).indices
        loss, _ = forward_loss(model, x[hardest], y[hardest], criterion, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return losses.sum(), (logits.argmax(dim=1) == y).sum()

    return step


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--seen", type=int, default=256, help="images scored a step (the loader's batch)")
    parser.add_argument("--keep", type=int, default=128, help="of them, the highest-loss ones trained on")
    args = parser.parse_args()

    from inceptionlab.config import preset_config
    from inceptionlab.engine import trainer

    trainer.build_train_step = lambda model, optimizer, config, device, **_: selective_step(
        model, optimizer, config, args.keep / args.seen)
    config = preset_config("quick", time_budget=args.budget, val_split=args.val_split, seed=args.seed, device="cpu",
                           batch_size=args.seen)
    train_and_score(config, f"select{args.keep}of{args.seen}", args.out, "selective.jsonl", budget=args.budget)


if __name__ == "__main__":
    main()
