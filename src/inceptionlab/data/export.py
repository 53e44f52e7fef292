"""Write a dataset as PNG class folders (``inceptionlab data --export-folder``), the layout the folder loader reads:
``DIR/{train,val,test}/CLASS/NNNNN.png`` and ``DIR/classes.txt`` (the label order). Files are named by their index
in the split, so the folder loader's order (file name, then class) is the dataset's own order."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from inceptionlab.data.dataset import ImageDataset
from inceptionlab.errors import DatasetError

SPLITS = ("train", "val", "test")


def _split_arrays(dataset: ImageDataset, limits: dict[str, int | None]):
    for split in SPLITS:
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        if images is not None:
            limit = limits.get(split)
            yield split, images[:limit].cpu().numpy(), labels[:limit].cpu().numpy()


def export_folder(dataset: ImageDataset, path: str | os.PathLike, *, limit_train: int | None = None,
                  limit_test: int | None = None) -> dict[str, int]:
    """Write ``dataset`` under ``path`` (which must not exist yet, or be empty); returns the images per split.
    Built in a temporary sibling folder and renamed into place, so an interrupted export leaves no half folder."""
    from PIL import Image

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DatasetError(f"{path} exists and is not an empty folder; name a new folder for --export-folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [name.replace(os.sep, "_") for name in dataset.classes]
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    counts = {}
    try:
        (work / "classes.txt").write_text("".join(f"{name}\n" for name in dataset.classes))
        for split, images, labels in _split_arrays(dataset, {"train": limit_train, "test": limit_test}):
            for name in names:
                (work / split / name).mkdir(parents=True)
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
                Image.fromarray(pixels).save(work / split / names[int(label)] / f"{index:05d}.png")
            counts[split] = len(labels)
        if path.exists():
            path.rmdir()  # empty, checked above
        work.rename(path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return counts
