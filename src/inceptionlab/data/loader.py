"""Batches of one split, gathered and resized on the device that holds it (no DataLoader, no per-sample Python)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from inceptionlab.data.resize import resize_batch
from inceptionlab.errors import ConfigError


class DeviceLoader:
    """Batches of one split, gathered and resized on ``images.device``.

    ``set_epoch(e)`` picks the permutation of epoch ``e`` (seeded by ``seed`` and ``e``), so a resumed run
    sees the same batches as an uninterrupted one. With ``world_size > 1`` each rank takes its own shard of
    every epoch's permutation (DistributedSampler-style: padded to a multiple of ``world_size``).
    ``transform(x, generator) -> x`` runs on each float batch (augmentation, :mod:`inceptionlab.data.augment`).
    Standardisation is not the loader's: it is part of what the model sees (:func:`inceptionlab.inputs.prepare_input`).
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
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ):
        if len(images) != len(labels):
            raise ConfigError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1 or image_size < 1:
            raise ConfigError(f"batch_size and image_size must be positive, got {batch_size} and {image_size}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} outside 0..{world_size - 1}")
        self.images, self.labels = images, labels
        self.batch_size, self.image_size = batch_size, image_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.transform = transform
        self.epoch = 0
        self.generator: torch.Generator | None = None  # the augmentation generator of the current pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            # Drawn on the CPU: the same permutation on every device type and every rank.
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
        return self.iterate()

    def iterate(self, start: int = 0, generator_state: torch.Tensor | None = None):
        """The epoch's batches from batch ``start`` on; ``generator_state`` is the augmentation generator's state
        after the first ``start`` batches (:attr:`generator` during an earlier pass), for a mid-epoch resume."""
        order = self._indices()
        self.generator = None
        if self.transform is not None:
            # Seeded per epoch (and per rank, so shards are augmented independently).
            self.generator = torch.Generator(device=self.images.device)
            self.generator.manual_seed(self.seed * 7919 + self.epoch * 104_729 + self.rank + 1)
            if generator_state is not None:
                self.generator.set_state(generator_state)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = resize_batch(self.images[idx], self.image_size)
            if self.transform is not None:
                x = self.transform(x, self.generator)
            yield x, self.labels[idx]
