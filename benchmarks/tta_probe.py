"""Test-time views scored afterwards on a run's validation images (a run trained with ``--val-split``): one view, the
mirror, the four one-pixel shifts (``shift4``: what ``--shift-tta`` does, with ``--padding replicate``) and the two
horizontal shifts, each as averaged logits and averaged probabilities. The figures of EXPERIMENTS.md (10),
``benchmarks/results/2026-12-04-cpu/shift-tta-posthoc.txt``.

    .venv/bin/python benchmarks/tta_probe.py [--padding zeros|replicate] RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from inceptionlab import runs
from inceptionlab.data.resize import resize_batch
from inceptionlab.devices import resolve_precision
from inceptionlab.engine.rundata import validation_split
from inceptionlab.inputs import forward_loss, load_run_dataset, prepare_model

VIEWS = {"plain": [(0, 0, False)], "flip": [(0, 0, False), (0, 0, True)],
         "shift4": [(0, 0, False), (1, 0, False), (-1, 0, False), (0, 1, False), (0, -1, False)],
         "shiftx": [(0, 0, False), (1, 0, False), (-1, 0, False)]}


def view(x: torch.Tensor, dx: int, dy: int, mirror: bool, padding: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = F.pad(x, (1, 1, 1, 1), mode="constant" if padding == "zeros" else "replicate")[
        ..., 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
    return x.flip(-1) if mirror else x


@torch.inference_mode()
def scores(run_dir: str, padding: str) -> dict:
    model, saved = runs.load_run_model(run_dir)
    saved, _ = resolve_precision(saved, torch.device("cpu"))
    prepare_model(model, saved).eval()
    data = load_run_dataset(saved, run_dir, progress=False, log=None)
    _, index = validation_split(len(data.train_labels), saved.val_split)
    images, labels = data.train_images[index], data.train_labels[index]
    logits = {}
    for v in {v for views in VIEWS.values() for v in views}:
        logits[v] = torch.cat([forward_loss(model, view(resize_batch(images[s : s + 500], saved.image_size), *v,
                                                        padding), None, None, saved)[1].float()
                               for s in range(0, len(labels), 500)])
    out = {}
    for name, views in VIEWS.items():
        for kind, f in (("logit", lambda t: t), ("prob", lambda t: t.softmax(-1))):
            pred = sum(f(logits[v]) for v in views).argmax(-1)
            out[f"{name}-{kind}"] = round(float((pred == labels).float().mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--padding", choices=("zeros", "replicate"), default="replicate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for run_dir in args.run_dirs:
        print(run_dir, scores(run_dir, args.padding), flush=True)


if __name__ == "__main__":
    main()
