"""The data layer: every source returns one :class:`ImageDataset` (uint8 ``N x C x H x W`` images, labels and a
:class:`DataInfo`). :mod:`.fashion_mnist` (find, verify, download, load the IDX files), :mod:`.images` (decode one
picture), :mod:`.folder` / :mod:`.cache` (a folder of images or a CSV, decoded once into a cache), :mod:`.resize`
(PIL-exact resize, once per split), :mod:`.loader` (batches), :mod:`.augment`."""

from inceptionlab.data.dataset import DataInfo, ImageDataset, channel_stats, class_counts, content_fingerprint
from inceptionlab.data.fashion_mnist import (
    CLASS_NAMES,
    DEBIAN_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FILES,
    SHA256,
    cache_dir,
    candidate_dirs,
    download_fashion_mnist,
    fashion_mnist_info,
    find_dataset,
    load_fashion_mnist,
    parse_idx,
    read_idx,
)
from inceptionlab.data.loader import DeviceLoader
from inceptionlab.data.resize import pre_resize, resize_batch, want_pre_resize
from inceptionlab.data.sources import DataSpec, default_info, load_data

__all__ = [
    "CLASS_NAMES", "DEBIAN_DIR", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FILES", "SHA256", "DataInfo", "DataSpec",
    "DeviceLoader", "ImageDataset", "cache_dir", "candidate_dirs", "channel_stats", "class_counts",
    "content_fingerprint", "default_info", "download_fashion_mnist", "fashion_mnist_info", "find_dataset",
    "load_data", "load_fashion_mnist", "parse_idx", "pre_resize", "read_idx", "resize_batch", "want_pre_resize",
]
