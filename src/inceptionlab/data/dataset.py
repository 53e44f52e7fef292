"""The one dataset type every source returns (the IDX files, a folder of images, a CSV): uint8 images at a stored
size, int64 labels, and a :class:`DataInfo` saying what they are. Nothing above the data layer knows where the
images came from; it reads classes, channels, statistics and the natural size from here (or from the run directory,
which keeps the same :class:`DataInfo` as ``data.json``)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from inceptionlab.argcheck import instance
from inceptionlab.errors import DatasetError

DATA_INFO_VERSION = 1


@dataclass(frozen=True)
class DataInfo:
    """What a model trained on a dataset must know about it, and what a run records (``data.json``)."""

    classes: tuple[str, ...]
    channels: int  # 1 (grey) or 3 (RGB)
    image_size: int  # the stored (natural) size: 28 for Fashion-MNIST, the decode size for a folder
    mean: tuple[float, ...]  # per channel, of [0, 1] pixels of the training split
    std: tuple[float, ...]
    source: str = "fashion-mnist"  # "fashion-mnist", "folder" or "csv"
    path: str | None = None  # the folder or CSV the user named; None for Fashion-MNIST found by the usual lookup
    fingerprint: str = ""  # SHA-256 of the content (images, labels, classes): a copy elsewhere is the same data
    color: str = "grey"  # how images were prepared: "grey" or "rgb" (resolved from --color auto)
    resize: str = "squash"  # "squash", "crop" or "pad" (how a non-square image became square)
    background: tuple[int, int, int] = (255, 255, 255)  # what transparent pixels were composited on

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON's own types (lists, not tuples): the record in memory equals the one read back from config.json."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {"version": DATA_INFO_VERSION, **values}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataInfo:
        """Inverse of :meth:`to_dict`; a damaged or foreign record is a :class:`DatasetError`."""
        if not isinstance(data, dict) or data.get("version") != DATA_INFO_VERSION:
            raise DatasetError(f"not a data record of version {DATA_INFO_VERSION}")
        values = {k: v for k, v in data.items() if k != "version"}
        try:
            info = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        except TypeError as exc:
            raise DatasetError(f"damaged data record ({exc})") from None
        return info.check()

    def check(self) -> DataInfo:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DatasetError(f"a dataset needs two or more distinct classes, got {list(self.classes)[:5]}")
        if self.channels not in (1, 3) or len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DatasetError(f"{self.channels} channels with {len(self.mean)} means and {len(self.std)} stds")
        if not (isinstance(self.image_size, int) and self.image_size > 0):
            raise DatasetError(f"bad stored image size {self.image_size!r}")
        return self


@dataclass
class ImageDataset:
    """Both splits (and a validation split when the source has one) as uint8 ``N x C x H x W`` and int64 tensors."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    info: DataInfo
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    report: dict[str, Any] = field(default_factory=dict)  # what loading found: files, skipped, bad, duplicates

    def __post_init__(self):
        for split in ("train", "test", "val"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images is None and labels is None and split == "val":
                continue
            if images.dim() != 4 or images.shape[1] != self.info.channels or images.dtype != torch.uint8:
                raise DatasetError(f"{split} images must be uint8 N x {self.info.channels} x H x W, got "
                                   f"{images.dtype} {tuple(images.shape)}")
            if len(images) != len(labels):
                raise DatasetError(f"{split} split: {len(images):,} images but {len(labels):,} labels")

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def channels(self) -> int:
        return self.info.channels

    def to(self, device: torch.device | str) -> ImageDataset:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return dataclasses.replace(
            self, train_images=move(self.train_images), train_labels=move(self.train_labels),
            test_images=move(self.test_images), test_labels=move(self.test_labels),
            val_images=move(self.val_images), val_labels=move(self.val_labels),
        )


DATASET = instance(ImageDataset, "an ImageDataset (see inceptionlab.data.load_data)")  # what a ``data`` argument takes


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 ``N x C x H x W`` images as [0, 1] pixels,
    summed in float64 chunk by chunk (a memory-mapped split larger than RAM is read once)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].to(torch.float64).transpose(0, 1).reshape(channels, -1)
        total += x.sum(1)
        squares += x.square().sum(1)
    count = max(1, images.numel() // channels)
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(v / 255, 7) for v in mean.tolist()), tuple(round(v / 255, 7) for v in std.tolist())


def content_fingerprint(*parts: bytes | torch.Tensor | str, chunk: int = 1 << 24) -> str:
    """SHA-256 over the parts in order (tensors by their bytes): the same data gives the same fingerprint anywhere.
    A tensor is hashed ``chunk`` elements at a time (a memory-mapped split larger than RAM is never copied whole)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            flat = part.reshape(-1)
            digest.update((flat.numel() * flat.element_size()).to_bytes(8, "little"))
            for start in range(0, flat.numel(), chunk):
                digest.update(flat[start : start + chunk].contiguous().cpu().numpy())
            continue
        if isinstance(part, str):
            part = part.encode()
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def class_counts(labels: torch.Tensor, classes: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Examples per class, by class name (absent classes included, with 0)."""
    labels = labels.cpu()
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise DatasetError(f"labels outside 0..{len(classes) - 1}")
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return dict(zip(classes, counts, strict=True))


def duplicate_report(dataset: ImageDataset, max_listed: int = 20) -> dict[str, Any]:
    """Identical decoded images: within each split (same label, and with different labels) and across splits
    (the same image in train and test), by a hash of each image's bytes."""
    seen: dict[bytes, tuple[str, int, int]] = {}
    report = {"same_label": 0, "conflicting_labels": 0, "across_splits": 0, "examples": []}
    for split in ("train", "val", "test"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        if images is None:
            continue
        flat = images.reshape(len(images), -1).cpu().numpy()
        for index, (row, label) in enumerate(zip(flat, labels.tolist(), strict=True)):
            key = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            first = seen.setdefault(key, (split, index, label))
            if first == (split, index, label):
                continue
            kind = "across_splits" if first[0] != split else (
                "same_label" if first[2] == label else "conflicting_labels")
            report[kind] += 1
            if len(report["examples"]) < max_listed:
                report["examples"].append({"kind": kind, "first": f"{first[0]}[{first[1]}]",
                                           "second": f"{split}[{index}]", "labels": [first[2], label]})
    return report
