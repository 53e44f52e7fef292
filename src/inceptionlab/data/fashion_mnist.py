"""Fashion-MNIST: find the four IDX files, verify their content, and load both splits as uint8 tensors.

Where the files come from, in order: ``data_dir`` (``--data-dir``), ``$INCEPTIONLAB_DATA``, the user cache
(``$XDG_CACHE_HOME/inceptionlab/fashion-mnist``), Debian's ``/usr/share/datasets/fashion-mnist``; otherwise
they are downloaded from the dataset's official mirror into the cache. Each file is checked on first use
(IDX header, exact byte length, label range, SHA-256 of the *decompressed* bytes) and the result remembered
in the cache, keyed by path, size and modification time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from inceptionlab.argcheck import FLAG, PATH, TEXT, check, number, optional
from inceptionlab.data.dataset import DataInfo, ImageDataset, content_fingerprint
from inceptionlab.errors import DatasetError
from inceptionlab.fileio import atomic_open, atomic_write_json, atomic_write_with

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
# SHA-256 of the decompressed files: the Debian .gz containers differ from the mirror's (recompressed without
# the stored file name), so only the content can be pinned. Measured on the Debian files (shared/ANCHORS.md).
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # IDX: 0x0000 08 03 (uint8, 3 dims) and 0x0000 08 01 (uint8, 1 dim)
IMAGE_SIZE = 28
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# The dataset's own mirror (Zalando Research's S3 bucket, linked from its README), then the GitHub copy.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# Measured on the 60,000 training images (uint8 / 255): `inceptionlab data --json` reports them again.
FASHION_MNIST_MEAN = 0.2860406
FASHION_MNIST_STD = 0.3530242

_HOW_TO_GET = (
    "Get it with `apt-get install dataset-fashion-mnist` (Debian; installs /usr/share/datasets/fashion-mnist), "
    "or run once on a machine with network access (it downloads into the cache), or pass --data-dir DIR "
    "holding the four IDX files (.gz or decompressed)."
)


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
        try:
            if (directory / name).is_file():
                return directory / name
        except PermissionError:  # a directory we may not search: Path.is_file raises instead of answering
            raise _permission_denied(directory) from None
    return None


def _permission_denied(path: Path) -> DatasetError:
    return DatasetError(f"{path}: permission denied; make it readable for you (its owner can run "
                        f"`chmod -R a+rX {path}`) or pass --data-dir with a readable copy.")


def _user_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """The directories the user named (``data_dir``, ``$INCEPTIONLAB_DATA``): the candidates before the defaults."""
    return candidate_dirs(data_dir)[:-2]


def find_dataset(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The paths of the four files, from the first directory that has all four.

    A directory the user named (``data_dir`` or ``$INCEPTIONLAB_DATA``) must hold all four: a typo or a partial
    copy is reported, not silently replaced by another copy of the data further down the list.
    """
    user_dirs = _user_dirs(data_dir)
    for directory in candidate_dirs(data_dir):
        found = {key: _find_file(directory, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if directory in user_dirs:
            missing = ", ".join(FILES[key] + "[.gz]" for key, path in found.items() if path is None)
            what = "does not exist" if not directory.is_dir() else f"lacks {missing}"
            raise DatasetError(f"Fashion-MNIST directory {directory} {what}.\n{_HOW_TO_GET}")
    looked = "\n  ".join(str(d) for d in candidate_dirs(data_dir))
    raise DatasetError(f"Fashion-MNIST not found. Looked in:\n  {looked}\n{_HOW_TO_GET}")


# ---------------------------------------------------------------------------------------------------------
# Reading and verification


# Read past the size a header announces, so that a few trailing bytes are still counted exactly.
_SLACK = 1 << 16
_CHUNK = 1 << 20


def _read_bytes(path: Path) -> bytearray:
    """The decompressed content of ``path``: never more than its IDX header announces plus :data:`_SLACK`, so a
    gzip bomb costs no more memory than a normal file. A damaged container is a DatasetError naming the file."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            return _read_idx_content(f, str(path))
    except PermissionError:
        raise _permission_denied(path) from None
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError) for a bad header and EOFError for a cut-off stream.
        raise DatasetError(f"{path}: unreadable or corrupted ({exc}); delete it and fetch it again.") from None


def _read_idx_content(f, name: str) -> bytearray:
    """The header first (a bad one is refused before anything else is read), then the size it announces."""
    content = bytearray(f.read(4))
    if len(content) == 4:
        content += f.read(4 * content[3])  # the magic's last byte counts the dimensions
    header, dims = _idx_header(content, name)
    limit = header + math.prod(dims) + _SLACK
    while len(content) < limit and (chunk := f.read(min(_CHUNK, limit - len(content)))):
        content += chunk
    if len(content) == limit and f.read(1):
        raise DatasetError(f"{name}: has trailing bytes: more than {limit:,} bytes, but its header {dims} implies "
                           f"{limit - _SLACK:,}; delete it and fetch it again.")
    return content


def _idx_header(data: bytes | bytearray, name: str) -> tuple[int, list[int]]:
    """The header's length and dimensions, from the start of an IDX file (uint8 content only)."""
    if len(data) < 4:
        raise DatasetError(f"{name}: too short for an IDX header ({len(data)} bytes).")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise DatasetError(
            f"{name}: bad IDX magic number {magic} (expected {IMAGE_MAGIC} for images or {LABEL_MAGIC} for labels)."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{name}: truncated IDX header ({len(data)} bytes).")
    return header, [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]


def parse_idx(data: bytes | bytearray, name: str = "IDX data") -> np.ndarray:
    """Parse one IDX file (uint8 content only) into an array, checking the header against the byte length."""
    header, dims = _idx_header(data, name)
    expected = header + math.prod(dims)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(f"{name}: {what}: {len(data):,} bytes, but its header {dims} implies {expected:,}.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a uint8 array, checking only its structure."""
    return parse_idx(_read_bytes(Path(path)), str(path))


def _check_array(key: str, array: np.ndarray, path: Path, exact_count: bool) -> None:
    images = key.endswith("images")
    ndim = 3 if images else 1
    if array.ndim != ndim:
        kind = "images" if images else "labels"
        raise DatasetError(f"{path}: an IDX file with {array.ndim} dimensions where {kind} ({ndim}) belong.")
    if images and array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"{path}: images of {array.shape[1]}x{array.shape[2]}, expected 28x28.")
    expected = NUM_EXAMPLES[key.split("_")[0]]
    if exact_count and len(array) != expected:
        raise DatasetError(f"{path}: {len(array):,} examples, expected {expected:,}.")
    if not images and len(array) and array.max() > 9:
        bad = int(np.argmax(array > 9))
        raise DatasetError(f"{path}: label {int(array[bad])} at index {bad} is outside 0..9.")


class _VerifiedCache:
    """``{path: {size, mtime_ns, sha256}}`` in the cache dir: the hash of a file is computed once, not per run."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _key(file: Path) -> tuple[str, dict]:
        st = file.stat()
        return str(file.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def known_good(self, file: Path, sha256: str) -> bool:
        key, stamp = self._key(file)
        return self.entries.get(key) == {**stamp, "sha256": sha256}

    def remember(self, file: Path, sha256: str) -> None:
        key, stamp = self._key(file)
        self.entries[key] = {**stamp, "sha256": sha256}
        try:
            atomic_write_json(self.path, self.entries)
        except OSError:
            pass  # a read-only cache only costs the hash again next time


def _load_verified(paths: dict[str, Path], verify: bool) -> dict[str, np.ndarray]:
    cache = _VerifiedCache(cache_dir() / "verified.json")
    arrays = {key: _load_file(key, path, verify, cache) for key, path in paths.items()}
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DatasetError(f"{split} split: {n_images:,} images but {n_labels:,} labels.")
    return arrays


def _load_file(key: str, path: Path, verify: bool, cache: _VerifiedCache) -> np.ndarray:
    """One verified file; its decompressed array is kept in the cache (named by its content's SHA-256), so the next
    run neither decompresses nor hashes it again (BENCHMARKS.md, data pipeline)."""
    expected = SHA256[FILES[key]]
    if verify and cache.known_good(path, expected):
        array = _cached_array(expected)
        if array is not None:
            _check_array(key, array, path, exact_count=True)
            return array
    data = _read_bytes(path)
    array = parse_idx(data, str(path))
    _check_array(key, array, path, exact_count=verify)
    if verify:
        if not cache.known_good(path, expected):
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise DatasetError(
                    f"{path}: SHA-256 of the decompressed content is {actual}, expected {expected}. "
                    "The file is not the published Fashion-MNIST; delete it and fetch it again "
                    "(or pass verify=False for deliberately modified data)."
                )
            cache.remember(path, expected)
        _keep_array(expected, array)
    return array


def _array_path(sha256: str) -> Path:
    return cache_dir() / "arrays" / f"{sha256}.npy"


def _cached_array(sha256: str) -> np.ndarray | None:
    try:
        return np.load(_array_path(sha256), allow_pickle=False)
    except (OSError, ValueError):  # not there yet, or damaged: read the IDX file again
        return None


def _keep_array(sha256: str, array: np.ndarray) -> None:
    try:
        atomic_write_with(_array_path(sha256), lambda f: np.save(f, array, allow_pickle=False))
    except OSError:
        pass  # a read-only cache only costs the decompression again next time


# ---------------------------------------------------------------------------------------------------------
# Download


def _mirrors(mirror: str | None) -> list[str]:
    if mirror is None:
        mirror = os.environ.get("INCEPTIONLAB_MIRROR")
    if mirror:
        return [mirror if mirror.endswith("/") else mirror + "/"]
    return list(MIRRORS)


def _download_one(url: str, target: Path, stem: str, timeout: float, progress: bool, verify: bool) -> None:
    """Stream ``url`` (a .gz) to ``target`` through a temp file; checked while streaming, renamed only if whole."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip container
        digest = hashlib.sha256()
        received = 0
        with atomic_open(target, "wb") as f, tqdm(
            total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress, leave=False
        ) as bar:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                digest.update(inflate.decompress(chunk))
                received += len(chunk)
                bar.update(len(chunk))
            # Raising inside the `with` removes the temp file: a failed download never leaves a partial file.
            if total is not None and received != total:
                raise DatasetError(f"{url}: connection closed after {received:,} of {total:,} bytes.")
            if not inflate.eof:
                raise DatasetError(f"{url}: the gzip stream is truncated ({received:,} bytes received).")
            actual = digest.hexdigest()
            if verify and actual != SHA256[stem]:
                raise DatasetError(f"{url}: SHA-256 of the content is {actual}, expected {SHA256[stem]}.")


def download_fashion_mnist(
    dest: str | os.PathLike | None = None,
    *,
    mirror: str | None = None,
    timeout: float = 20.0,
    progress: bool = True,
    verify: bool = True,
) -> dict[str, Path]:
    """Download the four ``.gz`` files into ``dest`` (default: the cache); files already there are kept.

    ``mirror`` (or ``$INCEPTIONLAB_MIRROR``) replaces the official mirrors: a base URL under which the four
    ``<name>.gz`` files live. Every failure is a :class:`DatasetError` naming what failed.
    """
    dest = Path(dest) if dest is not None else cache_dir()
    paths = {}
    for key, stem in FILES.items():
        existing = _find_file(dest, stem)
        if existing is not None:
            paths[key] = existing
            continue
        errors = []
        for base in _mirrors(mirror):
            url = base + stem + ".gz"
            try:
                _download_one(url, dest / (stem + ".gz"), stem, timeout, progress, verify)
            except DatasetError as exc:
                errors.append(str(exc))
                continue
            except urllib.error.HTTPError as exc:
                errors.append(f"{url}: HTTP {exc.code} {exc.reason}")
                continue
            except (OSError, zlib.error) as exc:  # URLError (unreachable, DNS), timeouts, a corrupt gzip stream
                reason = getattr(exc, "reason", None) or exc
                errors.append(f"{url}: {reason}")
                continue
            paths[key] = dest / (stem + ".gz")
            break
        else:
            tried = "\n  ".join(errors)
            raise DatasetError(f"could not download {stem}.gz:\n  {tried}")
    return paths


# ---------------------------------------------------------------------------------------------------------
# The dataset in memory

# The fingerprint of the published content: the four decompressed files' SHA-256, in FILES order.
FINGERPRINT = hashlib.sha256("".join(SHA256[FILES[key]] for key in FILES).encode()).hexdigest()


def fashion_mnist_info(fingerprint: str = FINGERPRINT) -> DataInfo:
    """What a model trained on Fashion-MNIST must know about it (also what a run from before ``data_info`` was
    recorded trained on)."""
    return DataInfo(CLASS_NAMES, 1, IMAGE_SIZE, (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,), "fashion-mnist",
                    None, fingerprint, "grey", "squash", (0, 0, 0))


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    verify: bool = True,
    download: bool = True,
    mirror: str | None = None,
    timeout: float = 20.0,
    progress: bool = True,
) -> ImageDataset:
    """Find (or download into the cache), verify and load both splits: uint8 ``N x 1 x 28 x 28`` / int64 CPU tensors.

    ``verify=False`` is for deliberately custom data in the same format (e.g. a relabelled subset): the IDX
    structure, 28x28 size and label range are still checked, but neither the SHA-256 nor the example counts.
    ``report`` holds the four files' paths and whether they were verified.
    """
    check(data_dir=(data_dir, optional(PATH)), verify=(verify, FLAG), download=(download, FLAG),
          mirror=(mirror, optional(TEXT)), timeout=(timeout, number(0)), progress=(progress, FLAG))
    try:
        paths = find_dataset(data_dir)
    except DatasetError as not_found:
        if not download or _user_dirs(data_dir):
            raise  # a directory the user named is incomplete: downloading elsewhere would hide that
        try:
            paths = download_fashion_mnist(mirror=mirror, timeout=timeout, progress=progress, verify=verify)
        except DatasetError as failed:
            raise DatasetError(f"{not_found}\nDownloading into {cache_dir()} failed too: {failed}") from None
    arrays = _load_verified(paths, verify)
    # torch.from_numpy over the read-only IDX buffer would warn; one copy of the uint8 data is the whole cost.
    tensors = {key: torch.from_numpy(array.copy() if key.endswith("images") else array.astype(np.int64))
               for key, array in arrays.items()}
    for key in ("train_images", "test_images"):
        tensors[key] = tensors[key].unsqueeze(1)  # N x 1 x 28 x 28: one channel
    fingerprint = FINGERPRINT if verify else content_fingerprint(*tensors.values(), *CLASS_NAMES)
    return ImageDataset(**tensors, info=fashion_mnist_info(fingerprint),
                        report={"files": dict(paths), "verified": verify})
