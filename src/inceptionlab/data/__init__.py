"""Fashion-MNIST from the IDX files to batches on the device: :mod:`.fashion_mnist` (find, verify, download,
load), :mod:`.resize` (PIL-exact resize, once per split), :mod:`.loader` (batches), :mod:`.augment`."""

from inceptionlab.data.fashion_mnist import (
    CLASS_NAMES,
    DEBIAN_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FILES,
    SHA256,
    FashionMNIST,
    cache_dir,
    candidate_dirs,
    class_counts,
    download_fashion_mnist,
    find_dataset,
    load_fashion_mnist,
    parse_idx,
    read_idx,
)
from inceptionlab.data.loader import DeviceLoader
from inceptionlab.data.resize import pre_resize, resize_batch, want_pre_resize

__all__ = [
    "CLASS_NAMES", "DEBIAN_DIR", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FILES", "SHA256", "DeviceLoader",
    "FashionMNIST", "cache_dir", "candidate_dirs", "class_counts", "download_fashion_mnist", "find_dataset",
    "load_fashion_mnist", "parse_idx", "pre_resize", "read_idx", "resize_batch", "want_pre_resize",
]
