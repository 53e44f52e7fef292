"""Evaluate a finished run: test accuracy, per-class accuracy and the confusion matrix of its saved model.

The weights come from ``model.safetensors`` (never unpickled code); the preprocessing (image size,
normalisation), memory layout and precision come from the run's ``config.json``, as the trainer evaluated.
"""

from __future__ import annotations

import os

from inceptionlab import data as data_module
from inceptionlab import runs
from inceptionlab.config import TrainConfig
from inceptionlab.train import evaluate, per_class_report, prepare_model, resolve_device


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    data: data_module.FashionMNIST | None = None,
    flip_tta: bool = False,
) -> dict:
    """``{"run_dir", "model", "image_size", "flip_tta", "test_acc", "test_loss", "count", "per_class_acc",
    "class_names", "confusion"}`` for the run's final model on the full Fashion-MNIST test set. ``flip_tta``: each
    image's logits averaged with its mirror image's (:func:`inceptionlab.train.evaluate`)."""
    dev = resolve_device(device)
    model, config_dict = runs.load_run_model(run_dir, device=dev)
    config = TrainConfig.from_dict(config_dict)
    prepare_model(model, config)  # the layout the trainer evaluated in
    if data is None:
        data = data_module.load_fashion_mnist(data_dir if data_dir is not None else config.data_dir)
    result = evaluate(model, data.test_images.to(dev), data.test_labels.to(dev), config, batch_size=batch_size,
                      flip=flip_tta)
    report = per_class_report(result["confusion"])
    return {
        "run_dir": str(run_dir),
        "model": config.model,
        "image_size": config.image_size,
        "flip_tta": flip_tta,
        "test_acc": result["acc"],
        "test_loss": result["loss"],
        "count": result["count"],
        "per_class_acc": report["per_class_acc"],
        "class_names": report["class_names"],
        "confusion": report["confusion"],
    }
