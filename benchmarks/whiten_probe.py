"""A patch-whitening first layer, probed before building it (issue 27, EXPERIMENTS.md (13)): the `quick` preset at a
time budget whose b1 7x7 convolution starts as the whitening of the training images' 7x7 patches (airbench's
initialisation: the top principal directions over the square root of their variance, each also negated, so that
the ReLU after it keeps both signs), then trained (``--mode train``), frozen (``--mode frozen``), or trained from
the whitening's directions scaled to Xavier's norm (``--mode scaled``); scored on the held-out images like
budget_preset.py's select.

    .venv/bin/python benchmarks/whiten_probe.py --mode frozen --seed 0 --out X
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from budget_preset import probe_parser, train_and_score  # the script's own folder is on sys.path


def whitening_weights(images: torch.Tensor, conv: torch.nn.Conv2d, eps: float) -> torch.Tensor:
    """``conv``'s weights as the whitening of ``images``' patches (as ``conv`` sees them): half the filters are the
    top principal directions divided by sqrt(variance + eps x the largest variance), the other half their negatives."""
    k = conv.kernel_size[0]
    patches = F.unfold(images, k, padding=conv.padding[0], stride=conv.stride[0]).transpose(1, 2).flatten(0, 1)
    patches = patches - patches.mean(0)
    variances, directions = torch.linalg.eigh((patches.T @ patches / len(patches)).double())  # ascending
    top = conv.out_channels // 2
    variances, directions = variances.flip(0)[:top], directions.flip(1)[:, :top].T
    half = directions / torch.sqrt(variances[:, None] + eps * variances[0])
    return torch.cat([half, -half]).reshape(conv.weight.shape).float()


def whiten_stem(model: torch.nn.Module, images: torch.Tensor, mode: str, eps: float) -> None:
    conv = model.b1[0].conv
    weights = whitening_weights(images, conv, eps)
    with torch.no_grad():
        xavier_norm = conv.weight.norm()
        conv.weight.copy_(weights * (xavier_norm / weights.norm()) if mode == "scaled" else weights)
    conv.weight.requires_grad_(mode != "frozen")


def patch_images(config, count: int) -> torch.Tensor:
    """``count`` training images (never held-out ones) drawn with the run's seed, as floats in [0, 1]."""
    from inceptionlab.engine.rundata import validation_split
    from inceptionlab.inputs import load_run_dataset

    data = load_run_dataset(config, progress=False, log=None)
    train_index, _ = validation_split(len(data.train_labels), config.val_split)
    pick = torch.randperm(len(train_index), generator=torch.Generator().manual_seed(config.seed))[:count]
    return data.train_images[train_index[pick]].float() / 255


def main() -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--mode", choices=("train", "frozen", "scaled"), required=True)
    parser.add_argument("--eps", type=float, default=0.01, help="added to each variance, times the largest")
    parser.add_argument("--images", type=int, default=5000, help="training images whose patches are whitened")
    args = parser.parse_args()

    from inceptionlab.config import preset_config
    from inceptionlab.engine import trainer

    config = preset_config("quick", time_budget=args.budget, val_split=args.val_split, seed=args.seed, device="cpu")
    images, build = patch_images(config, args.images), trainer.build_model

    def build_whitened(config, device):
        model = build(config, device)
        whiten_stem(model, images, args.mode, args.eps)
        return model

    trainer.build_model = build_whitened
    train_and_score(config, f"whiten-{args.mode}-eps{args.eps:g}", args.out, "whiten.jsonl", budget=args.budget)


if __name__ == "__main__":
    main()
