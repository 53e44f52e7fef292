"""The data of a run, on its device: the dataset the config names (any source), the training loader, the test split
and the validation images, each resized once when it fits; and the config completed from the data (classes,
channels, statistics), so that nothing above the data layer assumes a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from inceptionlab.config import TrainConfig, option_error
from inceptionlab.data import DataInfo, DeviceLoader, ImageDataset, pre_resize, want_pre_resize
from inceptionlab.data.augment import build_transform
from inceptionlab.engine import distributed
from inceptionlab.errors import ConfigError
from inceptionlab.inputs import SPLIT_FILE

# The held-out permutation's seed is fixed, not config.seed: every seed, model and rank then holds out the same images
VAL_SPLIT_SEED = 20_170_828


class RunData(NamedTuple):
    """What :func:`build_data` puts on the device; ``val_*`` are None without a validation split."""

    loader: DeviceLoader
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    dataset: ImageDataset | None = None  # the source (CPU), for the run directory's split.csv and bad_files.txt


def with_data(config: TrainConfig, info: DataInfo) -> TrainConfig:
    """``config`` for a model of this data: its classes and channels, and the record the run keeps. A run that
    already recorded other data (a resume, a torchrun restart) is refused: its checkpoint belongs to that data."""
    if config.data_info is not None and config.data_info.get("fingerprint") != info.fingerprint:
        raise ConfigError(
            f"the data changed since this run started (it trained on {config.data_info.get('source')} data "
            f"{str(config.data_info.get('fingerprint'))[:12]}, now {info.fingerprint[:12]}); restore the data, or "
            "train a new run"
        )
    return config.replace(num_classes=info.num_classes, in_channels=info.channels, data_info=info.to_dict())


def validation_split(num_train: int, val_split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) indices into a training split of ``num_train`` images, each in dataset order.

    The ``val_split`` held-out images are the first of one fixed permutation (:data:`VAL_SPLIT_SEED`, drawn on the
    CPU), so they depend on ``val_split`` alone: the same for every seed, model, device and torchrun rank, and a
    smaller split's images are inside a larger one's."""
    if not 0 < val_split < num_train:
        raise option_error(f"--val-split {val_split:,} must be between 1 and {num_train - 1:,} (there are "
                           f"{num_train:,} training images); hold out fewer, e.g. --val-split {num_train // 12:,}",
                           f"val_split {val_split:,} leaves no training images (the data has {num_train:,})")
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return order[val_split:].sort().values, order[:val_split].sort().values


def _splits(config: TrainConfig, data: ImageDataset, device: torch.device):
    """(train images, labels, val images, labels): the source's validation split, else ``config.val_split`` held
    out of the training split (``limit_train`` applies to the images left after the hold-out)."""
    train_images, train_labels, val_images, val_labels = data.train_images, data.train_labels, data.val_images, \
        data.val_labels
    if config.val_split:
        train_index, val_index = (i.to(device) for i in validation_split(len(train_labels), config.val_split))
        val_images, val_labels = train_images[val_index], train_labels[val_index]
        train_images, train_labels = train_images[train_index], train_labels[train_index]
    return train_images[: config.limit_train], train_labels[: config.limit_train], val_images, val_labels


def build_data(config: TrainConfig, dist_info: distributed.Distributed, device: torch.device,
               data: ImageDataset) -> RunData:
    """The training loader, the test split and the validation images, uint8 on the device, each resized once when
    it fits."""
    source = data
    data = data.to(device)
    train_images, train_labels, val_images, val_labels = _splits(config, data, device)
    test_images, test_labels = data.test_images[: config.limit_test], data.test_labels[: config.limit_test]
    num_val = 0 if val_labels is None else len(val_labels)
    pixels = (len(train_images) + len(test_images) + num_val) * data.channels
    if want_pre_resize(pixels, config.image_size):
        train_images = pre_resize(train_images, config.image_size)
        test_images = pre_resize(test_images, config.image_size)
        val_images = None if val_images is None else pre_resize(val_images, config.image_size)
    transform = build_transform(crop_padding=config.crop_padding, flip=config.flip, erasing=config.erasing)
    loader = DeviceLoader(train_images, train_labels, config.batch_size // dist_info.world_size,
                          image_size=config.image_size, shuffle=True, seed=config.seed, rank=dist_info.rank,
                          world_size=dist_info.world_size, transform=transform, drop_last=config.drop_last)
    if len(loader) == 0:
        over = f" over {dist_info.world_size} processes" if dist_info.enabled else ""
        raise ConfigError(f"--drop-last leaves no training batch: {len(train_labels):,} training images{over} are "
                          f"fewer than one batch of {config.batch_size}; use --no-drop-last or a smaller --batch-size")
    return RunData(loader, test_images, test_labels, val_images, val_labels, source)


def write_data_files(run_dir: Path, dataset: ImageDataset | None) -> None:
    """A folder run's split.csv (and bad_files.txt when files were skipped) in its run directory."""
    if dataset is None or dataset.info.source == "fashion-mnist":
        return
    from inceptionlab.data.folder import write_bad_files, write_split_csv

    write_split_csv(dataset, run_dir / SPLIT_FILE)
    if dataset.report.get("bad"):
        write_bad_files(dataset, run_dir / "bad_files.txt")
