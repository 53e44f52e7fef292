"""Fashion-MNIST: find the four IDX files, read them, and feed whole batches on the training device.

No DataLoader: each split lives on the device as one uint8 tensor; every batch is gathered, converted and
resized there (bilinear, like d2l's PIL resize followed by ``ToTensor``).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from inceptionlab.errors import DatasetError

CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inceptionlab" / "fashion-mnist"


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where the files are looked for, in order: ``data_dir``, ``$INCEPTIONLAB_DATA``, the cache, Debian's."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get("INCEPTIONLAB_DATA"):
        dirs.append(Path(os.environ["INCEPTIONLAB_DATA"]))
    dirs += [cache_dir(), DEBIAN_DIR]
    return dirs


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_dataset(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The paths of the four files, from the first directory that has all four."""
    for directory in candidate_dirs(data_dir):
        found = {key: _find_file(directory, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    looked = "\n  ".join(str(d) for d in candidate_dirs(data_dir))
    raise DatasetError(
        f"Fashion-MNIST not found. Looked in:\n  {looked}\n"
        "Get it with `apt-get install dataset-fashion-mnist` (Debian), or pass --data-dir DIR holding the "
        "four IDX files (.gz or decompressed)."
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@dataclass
class FashionMNIST:
    train_images: torch.Tensor  # uint8, N x 28 x 28
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    paths: dict[str, Path]

    def to(self, device: torch.device | str) -> FashionMNIST:
        return FashionMNIST(
            self.train_images.to(device), self.train_labels.to(device),
            self.test_images.to(device), self.test_labels.to(device), self.paths,
        )


def load_fashion_mnist(data_dir: str | os.PathLike | None = None) -> FashionMNIST:
    paths = find_dataset(data_dir)
    arrays = {key: read_idx(path) for key, path in paths.items()}
    return FashionMNIST(
        torch.from_numpy(arrays["train_images"].copy()),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        torch.from_numpy(arrays["test_images"].copy()),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        paths,
    )


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x H x W (or N x 1 x H x W) -> float N x 1 x size x size in [0, 1].

    Matches d2l's ``Resize(size)`` (PIL bilinear on the uint8 image) + ``ToTensor`` to within 1/255: PIL's
    bilinear filter is plain bilinear with half-pixel centres when enlarging and antialiased when shrinking.
    """
    x = images if images.dim() == 4 else images.unsqueeze(1)
    x = x.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        shrinking = size < x.shape[-1]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
        x = x.clamp_(0, 255)
    return x.div_(255)


class DeviceLoader:
    """Batches of one split, gathered and resized on ``images.device``.

    ``set_epoch(e)`` picks the permutation of epoch ``e`` (seeded by ``seed`` and ``e``), so a resumed run
    sees the same batches as an uninterrupted one. With ``world_size > 1`` each rank takes its own shard of
    every epoch's permutation (DistributedSampler-style: padded to a multiple of ``world_size``).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        image_size: int = 96,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        transform=None,
    ):
        self.images, self.labels = images, labels
        self.batch_size, self.image_size = batch_size, image_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.transform = transform  # callable(x_float, generator) -> x_float, applied per batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])
            order = order[self.rank :: self.world_size]
        return order.to(self.images.device)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.world_size > 1:
            n = -(-n // self.world_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._indices()
        gen = None
        if self.transform is not None:
            gen = torch.Generator(device=self.images.device).manual_seed(self.seed * 7919 + self.epoch + 1)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = resize_batch(self.images[idx], self.image_size)
            if self.transform is not None:
                x = self.transform(x, gen)
            yield x, self.labels[idx]
