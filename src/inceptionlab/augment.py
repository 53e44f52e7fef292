"""Stable import path for the batch augmentations; they live in :mod:`inceptionlab.data.augment`."""

from inceptionlab.data.augment import build_transform, horizontal_flip, random_crop, random_erasing

__all__ = ["build_transform", "horizontal_flip", "random_crop", "random_erasing"]
