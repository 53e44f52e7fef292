"""Which data a run trains on, and the one function that loads it from any source (the IDX files, a folder, a CSV).
A reader finds the samples, the decoder prepares them, and every source returns an :class:`ImageDataset`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inceptionlab.data.dataset import DataInfo, ImageDataset
from inceptionlab.data.fashion_mnist import fashion_mnist_info, load_fashion_mnist


@dataclass(frozen=True)
class DataSpec:
    """What to load. ``path`` None is Fashion-MNIST (from ``data_dir`` or the usual places); otherwise a folder of
    class folders, a folder of split folders, or a CSV (``docs/data.md``), decoded at ``image_size``."""

    path: str | None = None
    data_dir: str | None = None
    image_size: int = 96
    color: str = "auto"
    resize: str = "squash"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    classes_file: str | None = None
    on_bad: str = "error"
    split_file: str | None = None  # a run's split.csv: exactly the images that run used, split as it was


def load_data(spec: DataSpec, *, progress: bool = True, log: Callable[[str], None] | None = print,
              download: bool = True) -> ImageDataset:
    """The dataset ``spec`` names, on the CPU."""
    if spec.path is None:
        return load_fashion_mnist(spec.data_dir, progress=progress, download=download)
    from inceptionlab.data.folder import load_image_folder

    split_file = spec.split_file if spec.split_file and Path(spec.split_file).is_file() else None
    return load_image_folder(
        spec.path, image_size=spec.image_size, color=spec.color, resize=spec.resize,
        val_fraction=spec.val_fraction, test_fraction=spec.test_fraction, classes_file=spec.classes_file,
        on_bad=spec.on_bad, split_file=split_file, progress=progress, log=log or (lambda _line: None),
    )


def default_info() -> DataInfo:
    """The data of a run that records none: every run before ``data_info`` existed trained on Fashion-MNIST."""
    return fashion_mnist_info()
