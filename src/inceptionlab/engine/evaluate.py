"""Evaluation: accuracy, mean cross-entropy and the confusion matrix of a model on uint8 images, during training
(every epoch, every rank its shard) and afterwards for a saved run (:func:`evaluate_run`)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab import runs
from inceptionlab.argcheck import FLAG, PATH, check, optional, whole
from inceptionlab.config import TrainConfig
from inceptionlab.data import ImageDataset
from inceptionlab.data.dataset import DATASET
from inceptionlab.data.resize import resize_batch
from inceptionlab.devices import DEVICE, resolve_device, resolve_precision
from inceptionlab.engine.distributed import all_reduce_sum
from inceptionlab.inputs import SHIFTS, class_names, forward_loss, load_run_dataset, prepare_model, shifted


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, *,
             batch_size: int | None = None, rank: int = 0, world_size: int = 1, flip: bool = False,
             shift: bool = False) -> dict:
    """``correct``, ``count``, ``acc``, ``loss`` and ``confusion`` (num_classes^2, on the CPU) of ``model``.

    Test-time augmentation: ``flip`` averages each image's logits with its mirror image's (the trainer passes the
    run's ``flip_tta``), ``shift`` over the image and its four one-pixel shifts (``shift_tta``, final evaluation);
    with ``shift`` the result also holds the unshifted view's numbers as ``one_view`` (the curves' last point).
    With ``world_size > 1`` each rank evaluates a strided shard and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    device = images.device
    index = torch.arange(len(labels), device=device)[rank::world_size]
    tallies = [Tally(config.num_classes, device) for _ in range(2 if shift else 1)]  # [averaged, unshifted]
    batch_size = batch_size or config.eval_batch_size
    for start in range(0, len(index), batch_size):
        idx = index[start : start + batch_size]
        x, y = resize_batch(images[idx], config.image_size), labels[idx]
        for tally, logits in zip(tallies, view_logits(model, x, config, flip=flip, shift=shift), strict=False):
            tally.add(logits, y)
    count = torch.tensor(len(index), dtype=torch.int64, device=device)
    if world_size > 1:
        all_reduce_sum(*(t for tally in tallies for t in (tally.correct, tally.loss_sum, tally.confusion)), count)
    model.train(was_training)
    result = tallies[0].result(int(count))
    if shift:
        result["one_view"] = tallies[1].result(int(count))
    return result


def view_logits(model: nn.Module, x: torch.Tensor, config: TrainConfig, *, flip: bool,
                shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of a [0, 1] batch averaged over its test-time views (see :func:`evaluate`), and the unshifted
    view's: one forward per shift, so a batch's memory stays that of two views at most."""
    total = first = None
    for dx, dy in SHIFTS if shift else SHIFTS[:1]:
        v = shifted(x, dx, dy)
        _, logits = forward_loss(model, torch.cat([v, v.flip(-1)]) if flip else v, None, None, config)
        logits = logits.float().view(2, len(x), -1).mean(dim=0) if flip else logits
        total, first = (logits, logits) if total is None else (total + logits.float(), first)
    return (total / len(SHIFTS) if shift else total), first


def one_view(result: dict) -> dict:
    """The unshifted view's numbers of an :func:`evaluate` result (itself when it was not shifted)."""
    return result.get("one_view", result)


def evaluate_in_run(state, images: torch.Tensor, labels: torch.Tensor, *, final: bool = False) -> dict:
    """:func:`evaluate` as a training run does (``state``: the trainer's RunState): its model and config, its torchrun
    shard, each image averaged with its mirror when the run has ``flip_tta``, and (``final``: the run's closing
    evaluation) over its one-pixel shifts when it has ``shift_tta``."""
    config = state.config
    return evaluate(state.model, images, labels, config, rank=state.dist.rank, world_size=state.dist.world_size,
                    flip=config.flip_tta, shift=final and config.shift_tta)


class Tally:
    """Correct predictions, summed cross-entropy and the confusion matrix of batches of logits, kept on the device
    (read on the host once, in :meth:`result`); :func:`evaluate` and inspect's ablations share it."""

    def __init__(self, num_classes: int, device: torch.device):
        self.k = num_classes
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        logits = logits.float()
        pred = logits.argmax(dim=1)
        self.correct += (pred == y).sum()
        self.loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        # scatter_add_, not bincount: on CUDA bincount reads its input's min and max on the host
        self.confusion.scatter_add_(0, y * self.k + pred, torch.ones_like(pred))

    def result(self, count: int) -> dict:
        n = max(1, count)
        return {"correct": int(self.correct), "count": count, "acc": int(self.correct) / n,
                "loss": float(self.loss_sum) / n, "confusion": self.confusion.view(self.k, self.k).cpu()}


def per_class_report(confusion: torch.Tensor, config: TrainConfig) -> dict:
    """per_class.json: per-class accuracy (recall) and the confusion matrix (rows: true, columns: predicted)."""
    confusion = confusion.cpu().long()
    totals = confusion.sum(dim=1).clamp_min(1)
    names = class_names(config)
    return {
        "test_acc": float(confusion.diag().sum()) / max(1, int(confusion.sum())),
        "per_class_acc": {name: float(confusion[i, i]) / float(totals[i]) for i, name in enumerate(names)},
        "class_names": names,
        "confusion": confusion.tolist(),
    }


def evaluate_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int | None = None, data: ImageDataset | None = None, flip_tta: bool | None = None,
                 shift_tta: bool | None = None) -> dict:
    """The run's final model on its data's full test set (a folder run: the test images of its split.csv),
    preprocessed, laid out and autocast as the trainer's final evaluation did (``flip_tta``, ``shift_tta``: None =
    as the run did): ``run_dir``, ``model``, ``image_size``, ``flip_tta``, ``shift_tta``, ``test_acc``,
    ``test_loss``, ``count``, ``per_class_acc``, ``class_names``, ``confusion``."""
    check(run_dir=(run_dir, PATH), data_dir=(data_dir, optional(PATH)), device=(device, DEVICE),
          batch_size=(batch_size, optional(whole(1))), data=(data, optional(DATASET)),
          flip_tta=(flip_tta, optional(FLAG)), shift_tta=(shift_tta, optional(FLAG)))
    dev = resolve_device(device)
    model, config = runs.load_run_model(run_dir, device=dev)
    config, _ = resolve_precision(config, dev)  # a no-op for the resolved config a run saves
    flip_tta = config.flip_tta if flip_tta is None else flip_tta
    shift_tta = config.shift_tta if shift_tta is None else shift_tta
    prepare_model(model, config)
    if data is None:
        data = load_run_dataset(config, run_dir, data_dir=data_dir, progress=False, log=None)
    result = evaluate(model, data.test_images.to(dev), data.test_labels.to(dev), config, batch_size=batch_size,
                      flip=flip_tta, shift=shift_tta)
    report = per_class_report(result["confusion"], config)
    return {"run_dir": str(run_dir), "model": config.model, "image_size": config.image_size, "flip_tta": flip_tta,
            "shift_tta": shift_tta,
            "test_acc": result["acc"], "test_loss": result["loss"], "count": result["count"],
            "per_class_acc": report["per_class_acc"], "class_names": report["class_names"],
            "confusion": report["confusion"]}
