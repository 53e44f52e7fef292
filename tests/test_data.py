"""Fashion-MNIST: finding, verifying, downloading, the device pipeline, augmentation and `inceptionlab data`."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inceptionlab.data as data
from inceptionlab.augment import build_transform, horizontal_flip, random_crop, random_erasing
from inceptionlab.cli import main
from inceptionlab.errors import ConfigError, DatasetError

# ---------------------------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_small_dataset(directory: Path, n_train: int = 20, n_test: int = 10, gz: bool = True) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    content = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    for key, array in content.items():
        write_file(directory, data.FILES[key], idx_bytes(array), gz)
    return directory


def write_file(directory: Path, stem: str, payload: bytes, gz: bool = True) -> Path:
    for old in (directory / stem, directory / (stem + ".gz")):
        old.unlink(missing_ok=True)
    path = directory / (stem + ".gz" if gz else stem)
    path.write_bytes(gzip.compress(payload, compresslevel=1) if gz else payload)
    return path


def link_real_files(fmnist, directory: Path, skip: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, path in fmnist.report["files"].items():
        if key != skip:
            (directory / path.name).symlink_to(path)
    return directory


# ---------------------------------------------------------------------------------------------------------
# the real files


def test_real_data_counts_labels_and_checksums(fmnist):
    assert fmnist.report["verified"]
    assert fmnist.train_images.shape == (60_000, 1, 28, 28) and fmnist.train_images.dtype == torch.uint8
    assert fmnist.test_images.shape == (10_000, 1, 28, 28)
    assert fmnist.train_labels.dtype == torch.int64
    assert fmnist.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert set(data.class_counts(fmnist.train_labels, fmnist.classes).values()) == {6000}
    assert set(data.class_counts(fmnist.test_labels, fmnist.classes).values()) == {1000}
    info = fmnist.info  # what a run records of it
    assert (info.channels, info.image_size, info.source, info.num_classes) == (1, 28, "fashion-mnist", 10)
    assert info.mean == (data.FASHION_MNIST_MEAN,) and info.std == (data.FASHION_MNIST_STD,)
    assert data.DataInfo.from_dict(info.to_dict()) == info
    for path in fmnist.report["files"].values():
        content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert hashlib.sha256(content).hexdigest() == data.SHA256[path.name.removesuffix(".gz")]


def test_pixel_mean_and_std_constants(fmnist):
    x = fmnist.train_images.double() / 255
    assert x.mean().item() == pytest.approx(data.FASHION_MNIST_MEAN, abs=1e-6)
    assert x.std().item() == pytest.approx(data.FASHION_MNIST_STD, abs=1e-6)


def test_verification_is_cached_by_path_size_and_mtime(fmnist, isolated_data_env, tmp_path):
    directory = link_real_files(fmnist, tmp_path / "real")
    data.load_fashion_mnist(directory, progress=False)
    entries = json.loads((isolated_data_env / "verified.json").read_text())
    assert {Path(p).name.removesuffix(".gz") for p in entries} == set(data.FILES.values())
    assert all(e["sha256"] == data.SHA256[Path(p).name.removesuffix(".gz")] for p, e in entries.items())


def test_a_cached_verdict_skips_the_hash_and_a_changed_file_is_hashed_again(fmnist, isolated_data_env, tmp_path,
                                                                            monkeypatch):
    """verified.json holds {size, mtime_ns, sha256} per resolved path (os.stat is the reference); a second load
    hashes nothing, and a file whose size or mtime changed is hashed again (and refused if its content is wrong)."""
    directory = link_real_files(fmnist, tmp_path / "real", skip="test_labels")
    labels = tmp_path / "real" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(gzip.decompress(fmnist.report["files"]["test_labels"].read_bytes()))
    data.load_fashion_mnist(directory, progress=False)
    entries = json.loads((isolated_data_env / "verified.json").read_text())
    for path in directory.iterdir():
        st = path.stat()  # follows the symlinks, as the cache does
        expected = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "sha256": data.SHA256[path.name.removesuffix(".gz")]}
        assert entries[str(path.resolve())] == expected, path.name

    hashed = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: hashed.append(a) or real_sha256(*a))
    data.load_fashion_mnist(directory, progress=False)
    assert hashed == []  # all four verdicts came from the cache

    content = bytearray(labels.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # same size, valid label: only the hash can tell
    st = labels.stat()
    labels.write_bytes(bytes(content))
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DatasetError, match=r"not the published Fashion-MNIST; delete it .*verify=False"):
        data.load_fashion_mnist(directory, progress=False)
    assert len(hashed) == 1  # only the changed file


@pytest.mark.parametrize("size", [96, 64, 32, 16])
def test_resize_matches_pillow_bilinear_on_real_images(fmnist, size):
    images = fmnist.test_images[:400]
    ours = data.resize_batch(images, size)
    assert ours.shape == (400, 1, size, size) and ours.dtype == torch.float32
    reference = np.stack(
        [np.asarray(Image.fromarray(im[0].numpy()).resize((size, size), Image.BILINEAR)) for im in images]
    )
    reference = torch.from_numpy(reference).float().div(255)  # what ToTensor gives
    assert (ours[:, 0] - reference).abs().max().item() <= 1 / 255 + 1e-7
    # Stronger than required: the fixed-point transcription reproduces Pillow bit for bit.
    assert torch.equal(ours[:, 0], reference)


def test_resize_same_size_is_totensor(fmnist):
    x = data.resize_batch(fmnist.test_images[:4], 28)
    assert torch.equal(x, fmnist.test_images[:4].float() / 255)


# ---------------------------------------------------------------------------------------------------------
# clear errors on bad files


def test_missing_everywhere_says_where_it_looked_and_how_to_get_it(isolated_data_env):
    with pytest.raises(DatasetError) as info:
        data.load_fashion_mnist(download=False)
    message = str(info.value)
    assert str(isolated_data_env) in message and "no-debian" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_named_directory_missing_a_file(isolated_data_env, tmp_path):
    directory = write_small_dataset(tmp_path / "d")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"lacks t10k-labels-idx1-ubyte"):
        data.load_fashion_mnist(directory, verify=False)


def test_env_directory_is_used(isolated_data_env, tmp_path, monkeypatch):
    directory = write_small_dataset(tmp_path / "env", gz=False)
    monkeypatch.setenv("INCEPTIONLAB_DATA", str(directory))
    ds = data.load_fashion_mnist(verify=False)
    assert ds.report["files"]["train_images"].parent == directory and len(ds.train_labels) == 20
    assert not ds.report["verified"]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncated", r"train-images-idx3-ubyte.gz: truncated: 1,016 bytes, but its header \[60000, 28, 28\]"),
        ("magic", r"t10k-labels-idx1-ubyte.gz: bad IDX magic number 2050"),
        ("count", r"train-images-idx3-ubyte.gz: 20 examples, expected 60,000"),
        ("bad_gzip", r"train-labels-idx1-ubyte.gz: unreadable or corrupted"),
        ("cut_gzip", r"train-labels-idx1-ubyte.gz: unreadable or corrupted"),
        ("dims", r"t10k-images-idx3-ubyte.gz: images of 32x32, expected 28x28"),
    ],
)
def test_damaged_files_are_refused_by_name(isolated_data_env, tmp_path, damage, expected):
    directory = write_small_dataset(tmp_path / "d")
    if damage == "truncated":
        header = idx_bytes(np.zeros((0, 28, 28)))[:4] + b"".join(d.to_bytes(4, "big") for d in (60000, 28, 28))
        write_file(directory, "train-images-idx3-ubyte", header + bytes(1000))
    elif damage == "magic":
        write_file(directory, "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(10), magic=2050))
    elif damage == "bad_gzip":
        (directory / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip")
    elif damage == "cut_gzip":
        path = directory / "train-labels-idx1-ubyte.gz"
        path.write_bytes(path.read_bytes()[:20])
    elif damage == "dims":
        write_file(directory, "t10k-images-idx3-ubyte", idx_bytes(np.zeros((10, 32, 32))))
    with pytest.raises(DatasetError, match=expected):
        data.load_fashion_mnist(directory, verify=damage in ("truncated", "count"), download=False)


def test_labels_out_of_range(isolated_data_env, tmp_path):
    directory = write_small_dataset(tmp_path / "d", gz=False)
    labels = np.arange(10) % 10
    labels[7] = 12
    write_file(directory, "t10k-labels-idx1-ubyte", idx_bytes(labels), gz=False)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: label 12 at index 7 is outside 0..9"):
        data.load_fashion_mnist(directory, verify=False)


def test_images_and_labels_disagree(isolated_data_env, tmp_path):
    directory = write_small_dataset(tmp_path / "d")
    write_file(directory, "train-labels-idx1-ubyte", idx_bytes(np.zeros(19)))
    with pytest.raises(DatasetError, match=r"train split: 20 images but 19 labels"):
        data.load_fashion_mnist(directory, verify=False)


# IDX at its edges. The headers are packed here by hand from the format's definition (big-endian: 0x00 0x00, type
# 0x08 = uint8, number of dims; then one uint32 per dim), independently of inceptionlab's parser.


def _header(ndim: int, *dims: int) -> bytes:
    return struct.pack(">HBB", 0, 0x08, ndim) + struct.pack(f">{len(dims)}I", *dims)


def test_parse_idx_reads_what_the_format_says():
    labels = bytes([0, 9, 3])
    parsed = data.parse_idx(_header(1, 3) + labels)
    assert parsed.shape == (3,) and parsed.tolist() == [0, 9, 3]
    pixels = bytes(range(2 * 3 * 4))
    assert data.parse_idx(_header(3, 2, 3, 4) + pixels).tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    # a header and nothing else is a valid, empty file: the length check is exact, not "at least"
    assert data.parse_idx(_header(1, 0)).shape == (0,)
    assert data.parse_idx(_header(3, 0, 28, 28)).shape == (0, 28, 28)
    # every dimension is a whole 4-byte big-endian word (high bytes set here)
    assert data.parse_idx(_header(3, 0, 2**24 + 1, 2**16 + 2)).shape == (0, 2**24 + 1, 2**16 + 2)


def test_read_idx_reads_plain_and_gzip_files(tmp_path):
    payload = _header(3, 2, 2, 3) + bytes(range(12))
    plain, packed = tmp_path / "x-idx3-ubyte", tmp_path / "x-idx3-ubyte.gz"
    plain.write_bytes(payload)
    packed.write_bytes(gzip.compress(payload))
    for path in (plain, packed):
        assert data.read_idx(path).tolist() == np.arange(12).reshape(2, 2, 3).tolist()
    packed.write_bytes(gzip.compress(payload + b"\0"))
    with pytest.raises(DatasetError, match=r"x-idx3-ubyte.gz: has trailing bytes"):  # named by its path
        data.read_idx(packed)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"", r"too short for an IDX header \(0 bytes\)"),
        (_header(1)[:3], r"too short for an IDX header \(3 bytes\)"),
        (_header(1), r"truncated IDX header \(4 bytes\)"),  # magic alone: its one dimension is missing
        (_header(3, 10, 28), r"truncated IDX header \(12 bytes\)"),  # 16 bytes of header for 3 dims
        (_header(1, 3) + bytes(2), r"truncated: 10 bytes, but its header \[3\] implies 11"),
        (_header(1, 3) + bytes(4), r"has trailing bytes: 12 bytes, but its header \[3\] implies 11"),
        (_header(3, 1, 2, 2) + bytes(5), r"has trailing bytes: 21 bytes, but its header \[1, 2, 2\] implies 20"),
        (_header(2, 1, 784) + bytes(784), r"bad IDX magic number 2050"),  # images flattened to 2 dims
        (_header(1, 2**24), r"truncated: 8 bytes, but its header \[16777216\] implies 16,777,224"),
    ],
)
def test_parse_idx_refuses_malformed_bytes(payload, expected):
    with pytest.raises(DatasetError, match=expected):
        data.parse_idx(payload, "f")
    with pytest.raises(DatasetError, match="^IDX data: "):  # the name when none is given
        data.parse_idx(payload)


def test_label_9_is_accepted_and_10_refused(isolated_data_env, tmp_path):
    directory = write_small_dataset(tmp_path / "d", gz=False)
    nines = np.full(10, 9)
    write_file(directory, "t10k-labels-idx1-ubyte", _header(1, 10) + nines.astype(np.uint8).tobytes(), gz=False)
    assert data.load_fashion_mnist(directory, verify=False).test_labels.tolist() == [9] * 10
    nines[4] = 10
    write_file(directory, "t10k-labels-idx1-ubyte", _header(1, 10) + nines.astype(np.uint8).tobytes(), gz=False)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: label 10 at index 4 is outside 0..9"):
        data.load_fashion_mnist(directory, verify=False)


def test_trailing_bytes_in_a_file_are_refused_by_name(isolated_data_env, tmp_path):
    directory = write_small_dataset(tmp_path / "d")
    write_file(directory, "train-labels-idx1-ubyte", _header(1, 20) + bytes(20) + b"\0")
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte.gz: has trailing bytes: 29 bytes"):
        data.load_fashion_mnist(directory, verify=False)


# Decompression bombs. A gzip file may hold several members and decompresses to their concatenation, so one
# member of 1 GiB of zeros (4.7 MB, built once, streaming) serves behind any header.
BOMB_GIB = 1
PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from inceptionlab.data import read_idx
    from inceptionlab.errors import DatasetError
    try:
        read_idx(Path(sys.argv[1]))
        outcome = "read"
    except DatasetError as exc:
        outcome = str(exc)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, outcome, sep="\\n")  # KiB on Linux
""")


def _gzip_member(chunks) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    return b"".join(packer.compress(chunk) for chunk in chunks) + packer.flush()


@pytest.fixture(scope="module")
def gib_of_zeros() -> bytes:
    zeros = bytes(1 << 20)
    return _gzip_member(zeros for _ in range(BOMB_GIB * 1024))


def _peak_rss_mb(path: Path) -> tuple[int, str]:
    """The peak RSS (MB) of a fresh process that imports inceptionlab and reads ``path``, and what it said."""
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak, outcome = done.stdout.rstrip("\n").split("\n")
    return int(peak), outcome


def test_a_gzip_bomb_is_refused_by_name_at_the_memory_cost_of_a_normal_file(tmp_path, gib_of_zeros):
    """Behind a header that announces the 47 MB training images, or a bad magic number, 1 GiB of zeros is refused
    after at most the announced size plus 64 KiB is read: the peak stays that of reading a normal file of that
    size (the bomb's took 2 GB more before: its content and the chunks it was joined from)."""
    header = _header(3, 60000, 28, 28)
    normal, bomb, bad_magic = (tmp_path / f"{name}-idx3-ubyte.gz" for name in ("normal", "bomb", "magic"))
    normal.write_bytes(_gzip_member([header, bytes(60000 * 28 * 28)]))
    bomb.write_bytes(_gzip_member([header]) + gib_of_zeros)
    bad_magic.write_bytes(_gzip_member([_header(2, 60000, 784)]) + gib_of_zeros)
    (normal_mb, read), (bomb_mb, refused), (magic_mb, bad) = map(_peak_rss_mb, (normal, bomb, bad_magic))
    assert bomb_mb <= normal_mb + 16 and magic_mb <= normal_mb + 16, (normal_mb, bomb_mb, magic_mb)
    assert read == "read"
    assert refused == (f"{bomb}: has trailing bytes: more than 47,105,552 bytes, but its header [60000, 28, 28] "
                       "implies 47,040,016; delete it and fetch it again.")
    assert bad.startswith(f"{bad_magic}: bad IDX magic number 2050 ")


def test_a_few_trailing_bytes_are_still_counted_and_a_lying_header_is_named_truncated(tmp_path):
    """Within the 64 KiB read past the header's size the count stays exact; a header announcing 4 GiB over a few
    bytes is named as truncated, with the count of what is there."""
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_header(1, 3) + bytes(3 + 65_536)))
    with pytest.raises(DatasetError, match=r"has trailing bytes: 65,547 bytes, but its header \[3\] implies 11\.$"):
        data.read_idx(path)
    path.write_bytes(gzip.compress(_header(1, 3) + bytes(3 + 65_537)))
    with pytest.raises(DatasetError, match=r"has trailing bytes: more than 65,547 bytes, but its header \[3\] "):
        data.read_idx(path)
    path.write_bytes(gzip.compress(_header(3, 2**16, 2**8, 2**8) + bytes(10)))
    with pytest.raises(DatasetError, match=r"truncated: 26 bytes, but its header \[65536, 256, 256\] implies "
                                           r"4,294,967,312\.$"):
        data.read_idx(path)


@pytest.mark.parametrize(
    ("stem", "payload", "expected"),
    [
        # images in a labels-type file (one dimension, valid magic 2049): 10 "images" of nothing
        ("t10k-images-idx3-ubyte", _header(1, 10) + bytes(10), r"1 dimensions where images \(3\) belong"),
        # labels in an images-type file (three dimensions, valid magic 2051); values 0, so only the rank is wrong
        ("t10k-labels-idx1-ubyte", _header(3, 10, 1, 1) + bytes(10), r"3 dimensions where labels \(1\) belong"),
        ("t10k-images-idx3-ubyte", _header(2, 10, 784) + bytes(7840), r"bad IDX magic number 2050"),
        ("t10k-images-idx3-ubyte", _header(3, 10, 28, 27) + bytes(7560), r"images of 28x27, expected 28x28"),
    ],
)
def test_files_with_the_wrong_number_of_dimensions_are_refused(isolated_data_env, tmp_path, stem, payload, expected):
    directory = write_small_dataset(tmp_path / "d", gz=False)
    write_file(directory, stem, payload, gz=False)
    with pytest.raises(DatasetError, match=f"{stem}: .*{expected}"):
        data.load_fashion_mnist(directory, verify=False)


def test_an_empty_split_loads_with_verify_false(isolated_data_env, tmp_path):
    """Zero labels have no maximum: the range check must not ask for one (custom data may hold an empty split)."""
    directory = write_small_dataset(tmp_path / "d", gz=False)
    write_file(directory, "t10k-images-idx3-ubyte", _header(3, 0, 28, 28), gz=False)
    write_file(directory, "t10k-labels-idx1-ubyte", _header(1, 0), gz=False)
    ds = data.load_fashion_mnist(directory, verify=False)
    assert ds.test_images.shape == (0, 1, 28, 28) and ds.test_labels.shape == (0,) and len(ds.train_labels) == 20


def test_checksum_mismatch_is_refused_with_both_hashes(fmnist, isolated_data_env, tmp_path):
    directory = link_real_files(fmnist, tmp_path / "d", skip="test_labels")
    labels = fmnist.test_labels.numpy().copy()
    labels[0] = (labels[0] + 1) % 10  # same size, valid range: only the hash can tell
    write_file(directory, "t10k-labels-idx1-ubyte", idx_bytes(labels), gz=False)
    actual = hashlib.sha256(idx_bytes(labels)).hexdigest()
    with pytest.raises(DatasetError) as info:
        data.load_fashion_mnist(directory)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and actual in message
    assert data.SHA256["t10k-labels-idx1-ubyte"] in message
    assert data.load_fashion_mnist(directory, verify=False).test_labels[0] == labels[0]  # the documented opt-out


# ---------------------------------------------------------------------------------------------------------
# download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Serve a directory on 127.0.0.1; returns the base URL."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_download_from_mirror_into_cache(fmnist, isolated_data_env, tmp_path, serve):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for path in fmnist.report["files"].values():
        shutil.copy(path, mirror / path.name)
    ds = data.load_fashion_mnist(mirror=serve(mirror), progress=False)
    assert ds.report["verified"] and torch.equal(ds.test_labels, fmnist.test_labels)
    assert sorted(p.name for p in isolated_data_env.iterdir() if p.suffix == ".gz") == sorted(
        stem + ".gz" for stem in data.FILES.values()
    )
    assert all(p.parent == isolated_data_env for p in ds.report["files"].values())


@pytest.mark.parametrize("problem", ["truncated", "not_found", "wrong_content"])
def test_failed_download_leaves_no_partial_file(fmnist, isolated_data_env, tmp_path, serve, monkeypatch, problem):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    if problem == "truncated":
        gz = fmnist.report["files"]["train_images"].read_bytes()
        (mirror / "train-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    elif problem == "wrong_content":
        (mirror / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * 1000))
    monkeypatch.setenv("INCEPTIONLAB_MIRROR", serve(mirror))
    expected = {"truncated": "truncated", "not_found": "404", "wrong_content": "SHA-256"}[problem]
    with pytest.raises(DatasetError, match=expected) as info:
        data.load_fashion_mnist(progress=False)
    assert "train-images-idx3-ubyte.gz" in str(info.value) and "apt-get install" in str(info.value)
    leftovers = list(isolated_data_env.iterdir()) if isolated_data_env.exists() else []
    assert leftovers == []


def test_download_times_out_cleanly(isolated_data_env):
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        mirror = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with pytest.raises(DatasetError, match="timed out"):
            data.download_fashion_mnist(mirror=mirror, timeout=0.3, progress=False)
    assert not isolated_data_env.exists() or list(isolated_data_env.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# DeviceLoader


def _loader(n=103, **kwargs):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 28, 28).contiguous()
    return data.DeviceLoader(images, torch.arange(n), kwargs.pop("batch_size", 16), image_size=28, **kwargs)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader])


def test_loader_epoch_is_a_seeded_permutation():
    loader = _loader(shuffle=True, seed=3)
    first = _epoch(loader, 0)
    assert sorted(first.tolist()) == list(range(103))  # every example exactly once
    assert torch.equal(first, _epoch(_loader(shuffle=True, seed=3), 0))  # reproducible
    assert not torch.equal(first, _epoch(loader, 1))  # a new order each epoch
    assert torch.equal(_epoch(loader, 1), _epoch(_loader(shuffle=True, seed=3), 1))  # resumable
    assert not torch.equal(first, _epoch(_loader(shuffle=True, seed=4), 0))
    assert torch.equal(_epoch(_loader(), 0), torch.arange(103))


def test_loader_batches_match_images_and_lengths():
    loader = _loader(shuffle=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 7 and [len(y) for _, y in batches][-1] == 103 - 6 * 16
    for x, y in batches:
        assert x.shape[1:] == (1, 28, 28)
        assert torch.equal(x[:, 0, 0, 0], y.float() / 255)  # the image that goes with its label
    assert len(_loader(drop_last=True)) == 6 and len(list(_loader(drop_last=True))) == 6


@pytest.mark.parametrize("n", [100, 103])
def test_rank_shards_are_disjoint_and_cover(n):
    shards = [_epoch(_loader(n, shuffle=True, seed=1, rank=r, world_size=4), 2) for r in range(4)]
    assert len({len(s) for s in shards}) == 1  # equal steps on every rank
    together = torch.cat(shards).tolist()
    assert set(together) == set(range(n))
    assert len(together) - len(set(together)) == (-n) % 4  # only the padding repeats


def test_loader_rejects_bad_arguments():
    with pytest.raises(ConfigError):
        _loader(rank=2, world_size=2)
    with pytest.raises(ConfigError):
        data.DeviceLoader(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(2), 1)


def test_loader_transform_sees_pixels_and_standardisation_is_the_models_input(fmnist):
    from inceptionlab.config import TrainConfig
    from inceptionlab.inputs import prepare_input

    images, labels = fmnist.test_images[:64], fmnist.test_labels[:64]
    seen = []

    def spy(x, generator):
        seen.append((x.min().item(), x.max().item() <= 1.0, isinstance(generator, torch.Generator)))
        return x

    plain = next(iter(data.DeviceLoader(images, labels, 64, image_size=32, transform=spy)))[0]
    assert seen == [(0.0, True, True)]  # the transform sees [0, 1] pixels with the loader's generator
    pixels = fmnist.train_images.double() / 255  # the statistics, computed here from the training split
    mean, std = pixels.mean().item(), pixels.std(unbiased=False).item()
    normed = prepare_input(plain, TrainConfig(normalize=True))
    torch.testing.assert_close(normed, (plain - mean) / std, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# augmentation


def _augmented(fmnist, seed, **options):
    loader = data.DeviceLoader(
        fmnist.test_images[:256], fmnist.test_labels[:256], 128, image_size=64, shuffle=True, seed=seed,
        transform=build_transform(**options),
    )
    return torch.cat([x for x, _ in loader])


def test_augmentation_shapes_ranges_and_determinism(fmnist):
    assert build_transform() is None
    options = {"crop_padding": 4, "flip": True, "erasing": 0.5}
    a, b = _augmented(fmnist, 0, **options), _augmented(fmnist, 0, **options)
    assert a.shape == (256, 1, 64, 64) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, _augmented(fmnist, 1, **options))
    assert not torch.equal(a, _augmented(fmnist, 0))
    with pytest.raises(ConfigError):
        build_transform(erasing=1.5)


def test_random_crop_is_a_shifted_window(fmnist):
    x = data.resize_batch(fmnist.test_images[:32], 28)
    g = torch.Generator().manual_seed(0)
    y = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(32):
        windows = [padded[i, :, r : r + 28, c : c + 28] for r in range(5) for c in range(5)]
        assert any(torch.equal(y[i], w) for w in windows)


def test_flip(fmnist):
    x = data.resize_batch(fmnist.test_images[:64], 28)
    y = horizontal_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    assert all(f or torch.equal(y[i], x[i]) for i, f in enumerate(flipped)) and 10 < sum(flipped) < 54


def _erased_boxes(x: torch.Tensor, z: torch.Tensor):
    """The erased pixels of each image and the rows and columns they span (N x H x W, N x H, N x W)."""
    erased = z[:, 0] != x[:, 0]
    return erased, erased.any(dim=2), erased.any(dim=1)


def test_random_erasing_at_p1_blanks_one_box_per_image_in_the_area_range(fmnist):
    """Zhong et al.: one rectangle of area fraction uniform in (0.02, 0.33), log aspect ratio uniform in (0.3, 3.3),
    position uniform, clipped to the image, filled with 0. The images are lifted to [0.2, 1] so that every erased
    pixel shows (Fashion-MNIST's background is already 0)."""
    n, h, w = 512, 28, 28
    x = 0.2 + 0.8 * data.resize_batch(fmnist.test_images[:n], h)
    z = random_erasing(x, torch.Generator().manual_seed(0), p=1.0)
    erased, rows, cols = _erased_boxes(x, z)
    assert (z[:, 0][erased] == 0).all()
    height, width = rows.sum(dim=1), cols.sum(dim=1)
    assert (height >= 1).all() and (width >= 1).all()  # every image
    # one box: the erased set is all of (its rows) x (its columns), and those rows and columns are contiguous
    assert torch.equal(erased, rows[:, :, None] & cols[:, None, :])
    top, left = rows.int().argmax(dim=1), cols.int().argmax(dim=1)
    # one run of rows and one of columns: a run starts at the first true entry and at no rising edge after it
    assert torch.equal(rows.int().diff(dim=1).clamp(min=0).sum(1), (top > 0).int())
    assert torch.equal(cols.int().diff(dim=1).clamp(min=0).sum(1), (left > 0).int())
    # the area: each side is a rounded (and clipped) square root, so the fraction is in range up to half a pixel
    assert ((height + 0.5) * (width + 0.5) >= 0.02 * h * w).all()
    assert ((height - 0.5) * (width - 0.5) <= 0.33 * h * w).all()
    fraction = (height * width).double() / (h * w)
    assert fraction.min() < 0.03 and fraction.max() > 0.3 and abs(fraction.mean() - 0.175) < 0.02
    aspect = height.double() / width
    assert aspect.min() < 0.5 and aspect.max() > 2 and 0.35 < (aspect > 1).double().mean() < 0.65
    # anywhere in the image: boxes shorter than the image touch each of its four borders
    bottom, right = top + height, left + width
    assert ((top == 0) & (bottom < h)).any() and ((bottom == h) & (top > 0)).any()
    assert ((left == 0) & (right < w)).any() and ((right == w) & (left > 0)).any()
    assert (height == h).any() and (width == w).any()  # a side longer than the image is clipped to it


def test_random_erasing_probability_and_the_configs_transform(fmnist):
    x = 0.2 + 0.8 * data.resize_batch(fmnist.test_images[:512], 28)
    half = _erased_boxes(x, random_erasing(x, torch.Generator().manual_seed(0), p=0.5))[0].flatten(1).any(1)
    assert 0.4 < half.double().mean() < 0.6
    assert torch.equal(random_erasing(x, torch.Generator().manual_seed(0), p=0.0), x)
    every = build_transform(erasing=1.0)(x, torch.Generator().manual_seed(0))
    assert _erased_boxes(x, every)[0].flatten(1).any(1).all()


# ---------------------------------------------------------------------------------------------------------
# CLI


def test_cli_data_reports_and_writes_grid(fmnist, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    grid = tmp_path / "grid.png"
    assert main(["data", "--no-download", "--grid", str(grid), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["found"]["verified"] is True and report["source"] == "fashion-mnist"
    assert report["splits"]["train"]["examples"] == 60_000 and report["splits"]["train"]["imbalance"] == 1.0
    assert report["splits"]["test"]["class_counts"]["ankle boot"] == 1000
    assert report["channels"] == 1 and report["stored_size"] == 28
    # byte-identical images, counted here with numpy (docs/data.md quotes the count)
    both = torch.cat([fmnist.train_images, fmnist.test_images]).reshape(70_000, -1).numpy()
    repeated = len(both) - len(np.unique(both, axis=0))
    dup = report["duplicates"]
    assert dup["same_label"] + dup["conflicting_labels"] + dup["across_splits"] == repeated
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(grid) as png:
        assert png.size[0] > 500
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".grid")] == []  # no temp file left


def test_cli_data_missing_dir_is_a_clean_error(tmp_path, capsys):
    assert main(["data", "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and os.fspath(tmp_path / "nowhere") in err


def test_a_second_load_reads_the_cached_arrays_without_decompressing_or_hashing(tmp_path, monkeypatch):
    """The arrays equal the IDX files parsed here with gzip and numpy; a damaged cache file is read around."""
    import gzip
    import hashlib

    from inceptionlab.data import fashion_mnist

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = data.load_fashion_mnist(download=False, progress=False)
    with gzip.open(first.report["files"]["test_images"]) as f:
        raw = f.read()
    reference = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(10_000, 28, 28)
    assert np.array_equal(first.test_images[:, 0].numpy(), reference)
    assert len(list((tmp_path / "cache" / "inceptionlab" / "fashion-mnist" / "arrays").glob("*.npy"))) == 4

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached load must not decompress or hash")

    with monkeypatch.context() as m:
        m.setattr(fashion_mnist.gzip, "open", forbidden)
        m.setattr(fashion_mnist.hashlib, "sha256", forbidden)
        second = data.load_fashion_mnist(download=False, progress=False)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(first, key), getattr(second, key)), key
    cached = fashion_mnist._array_path(hashlib.sha256(raw).hexdigest())
    cached.write_bytes(cached.read_bytes()[:1000])  # cut short: the next load reads the IDX file again
    third = data.load_fashion_mnist(download=False, progress=False)
    assert np.array_equal(third.test_images[:, 0].numpy(), reference)

    # A pickle in the array cache is never unpickled (that would run its code): the IDX file is read instead.
    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)  # unpickled: creates the file and returns 0

    with gzip.open(first.report["files"]["test_labels"]) as f:
        raw_labels = f.read()
    labels = np.array([RunsCode()] + list(range(1, 10)) * 1111 + [0], dtype=object)
    np.save(fashion_mnist._array_path(hashlib.sha256(raw_labels).hexdigest()), labels, allow_pickle=True)
    fourth = data.load_fashion_mnist(download=False, progress=False)
    assert not (tmp_path / "ran").exists()
    assert fourth.test_labels.tolist() == list(raw_labels[8:])


# ---------------------------------------------------------------------------------------------------------
# where the files are looked for, and downloading (mutation testing of fashion_mnist.py, issue #19)


def test_cache_dir_follows_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "xdg" / "inceptionlab" / "fashion-mnist"
    for unset in (lambda: monkeypatch.setenv("XDG_CACHE_HOME", ""), lambda: monkeypatch.delenv("XDG_CACHE_HOME")):
        unset()  # empty or unset: ~/.cache, as the XDG base directory spec says
        assert data.cache_dir() == tmp_path / "home" / ".cache" / "inceptionlab" / "fashion-mnist"


def test_lookup_order_is_data_dir_env_cache_debian(isolated_data_env, tmp_path, monkeypatch):
    from inceptionlab.data import fashion_mnist

    debian = tmp_path / "no-debian"
    assert fashion_mnist.candidate_dirs() == [isolated_data_env, debian]
    assert fashion_mnist.candidate_dirs(str(tmp_path / "a")) == [tmp_path / "a", isolated_data_env, debian]
    monkeypatch.setenv("INCEPTIONLAB_DATA", str(tmp_path / "env"))
    assert fashion_mnist.candidate_dirs(tmp_path / "a") == [tmp_path / "a", tmp_path / "env", isolated_data_env,
                                                            debian]
    # every candidate holds a copy: the first one wins
    for name in ("a", "env", "xdg-cache/inceptionlab/fashion-mnist", "no-debian"):
        write_small_dataset(tmp_path / name, n_train=10)
    assert data.find_dataset(tmp_path / "a")["test_labels"].parent == tmp_path / "a"
    assert data.find_dataset()["test_labels"].parent == tmp_path / "env"
    monkeypatch.setenv("INCEPTIONLAB_DATA", "")  # empty is unset, not the current directory
    assert data.find_dataset()["test_labels"].parent == isolated_data_env
    shutil.rmtree(isolated_data_env)
    assert data.find_dataset()["test_labels"].parent == debian


def test_a_plain_file_is_preferred_to_its_gz_and_each_file_may_differ(isolated_data_env, tmp_path):
    directory = write_small_dataset(tmp_path / "d", gz=True)
    plain = tmp_path / "d" / "train-labels-idx1-ubyte"
    plain.write_bytes(b"anything")
    found = data.find_dataset(directory)
    assert found["train_labels"] == plain
    assert found["test_labels"] == directory / "t10k-labels-idx1-ubyte.gz"
    (directory / "t10k-images-idx3-ubyte").mkdir()  # a directory with the file's name is not the file
    assert data.find_dataset(directory)["test_images"] == directory / "t10k-images-idx3-ubyte.gz"


def test_a_named_directory_is_never_replaced_by_a_copy_further_down(isolated_data_env, tmp_path, monkeypatch):
    write_small_dataset(isolated_data_env)  # a complete copy in the cache
    partial = write_small_dataset(tmp_path / "partial")
    (partial / "train-images-idx3-ubyte.gz").unlink()
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as info:
        data.load_fashion_mnist(partial, verify=False, download=True, mirror="http://127.0.0.1:9/")
    message = str(info.value)
    assert message.splitlines()[0] == (
        f"Fashion-MNIST directory {partial} lacks train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz].")
    assert "apt-get install dataset-fashion-mnist" in message and "Downloading" not in message
    monkeypatch.setenv("INCEPTIONLAB_DATA", str(tmp_path / "typo"))
    with pytest.raises(DatasetError) as info:
        data.load_fashion_mnist(verify=False, mirror="http://127.0.0.1:9/")
    assert str(info.value).splitlines()[0] == f"Fashion-MNIST directory {tmp_path / 'typo'} does not exist."


def test_not_found_lists_every_directory_in_order(isolated_data_env, tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTIONLAB_DATA", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    write_small_dataset(tmp_path / "env")
    (tmp_path / "env" / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv("INCEPTIONLAB_DATA", "")
    with pytest.raises(DatasetError) as info:
        data.find_dataset()
    lines = str(info.value).splitlines()
    assert lines[:3] == ["Fashion-MNIST not found. Looked in:", f"  {isolated_data_env}", f"  {tmp_path / 'no-debian'}"]


def test_a_directory_that_cannot_be_searched_is_named_with_the_fix(isolated_data_env, tmp_path, fail_path):
    # The suite may run as root, which chmod cannot lock out: make is_file raise as it does for other users.
    directory = write_small_dataset(tmp_path / "locked")
    fail_path("is_file", lambda p: p.parent == directory, PermissionError(13, "Permission denied"))
    with pytest.raises(DatasetError) as info:
        data.find_dataset(directory)
    assert str(info.value) == (f"{directory}: permission denied; make it readable for you (its owner can run "
                               f"`chmod -R a+rX {directory}`) or pass --data-dir with a readable copy.")


def _gz_mirror(directory: Path, contents: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for stem, payload in contents.items():
        (directory / (stem + ".gz")).write_bytes(gzip.compress(payload))
    return directory


def _small_contents() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    return {
        data.FILES["train_images"]: idx_bytes(rng.integers(0, 256, (20, 28, 28))),
        data.FILES["train_labels"]: idx_bytes(np.arange(20) % 10),
        data.FILES["test_images"]: idx_bytes(rng.integers(0, 256, (10, 28, 28))),
        data.FILES["test_labels"]: idx_bytes(np.arange(10) % 10),
    }


def test_unverified_download_falls_back_to_the_next_mirror_and_keeps_existing_files(isolated_data_env, tmp_path,
                                                                                      serve, monkeypatch):
    """verify=False downloads custom data; a mirror without a file (HTTP 404) is skipped for the next one."""
    from inceptionlab.data import fashion_mnist

    contents = _small_contents()
    first = _gz_mirror(tmp_path / "first", {k: v for k, v in contents.items() if "t10k" not in k})
    second = _gz_mirror(tmp_path / "second", contents)
    dest = tmp_path / "dest"
    dest.mkdir()
    kept = dest / "train-labels-idx1-ubyte"
    kept.write_bytes(contents["train-labels-idx1-ubyte"])  # already there, decompressed: not downloaded again
    base1, base2 = serve(first), serve(second)
    monkeypatch.setattr(fashion_mnist, "MIRRORS", (base1, base2))
    paths = data.download_fashion_mnist(dest, progress=False, verify=False)
    assert paths["train_labels"] == kept and len(paths) == 4
    for key, stem in data.FILES.items():
        if key != "train_labels":
            assert paths[key] == dest / (stem + ".gz")
            assert gzip.decompress(paths[key].read_bytes()) == contents[stem]
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [kept.name] + [stem + ".gz" for key, stem in data.FILES.items() if key != "train_labels"])
    ds = data.load_fashion_mnist(dest, verify=False)
    assert ds.test_labels.tolist() == list(np.arange(10) % 10) and not ds.report["verified"]


def test_a_download_that_fails_everywhere_names_every_url(isolated_data_env, tmp_path, serve, monkeypatch):
    from inceptionlab.data import fashion_mnist

    empty = tmp_path / "empty"
    empty.mkdir()
    base = serve(empty)
    monkeypatch.setattr(fashion_mnist, "MIRRORS", (base, base + "second/"))
    with pytest.raises(DatasetError) as info:
        data.download_fashion_mnist(tmp_path / "dest", progress=False)
    assert str(info.value).splitlines() == [
        "could not download train-images-idx3-ubyte.gz:",
        f"  {base}train-images-idx3-ubyte.gz: HTTP 404 File not found",
        f"  {base}second/train-images-idx3-ubyte.gz: HTTP 404 File not found",
    ]
    # a mirror given without its trailing slash still names the files under it
    with pytest.raises(DatasetError) as info:
        data.download_fashion_mnist(tmp_path / "dest", mirror=base + "sub", progress=False)
    assert f"  {base}sub/train-images-idx3-ubyte.gz: HTTP 404" in str(info.value)
    monkeypatch.setenv("INCEPTIONLAB_MIRROR", base + "env")
    with pytest.raises(DatasetError) as info:
        data.download_fashion_mnist(tmp_path / "dest", progress=False)
    assert str(info.value).splitlines()[1:] == [f"  {base}env/train-images-idx3-ubyte.gz: HTTP 404 File not found"]


def test_load_downloads_into_the_cache_only_when_nothing_was_named(isolated_data_env, tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTIONLAB_MIRROR", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(DatasetError) as info:
        data.load_fashion_mnist(progress=False)
    message = str(info.value)
    assert message.startswith("Fashion-MNIST not found. Looked in:")
    assert f"\nDownloading into {isolated_data_env} failed too: could not download train-images-idx3-ubyte.gz:" \
           "\n  http://127.0.0.1:9/train-images-idx3-ubyte.gz: " in message
    assert "refused" in message.lower() and "<urlopen error" not in message  # the reason, not the wrapper


def test_download_checks_the_announced_length_and_verifies_against_the_published_hash(isolated_data_env, tmp_path,
                                                                                       monkeypatch):
    """urlopen replaced by a fake response: what reaches the disk is exactly the bytes served, whole or nothing."""
    import io

    from inceptionlab.data import fashion_mnist

    payload = _small_contents()["t10k-labels-idx1-ubyte"]
    body = gzip.compress(payload)
    seen = {}

    class Response(io.BytesIO):
        def __init__(self, content, length):
            super().__init__(content)
            self.headers = http.client.HTTPMessage()  # what urlopen's responses carry (case-insensitive)
            if length is not None:
                self.headers["Content-Length"] = str(length)

    def fake_urlopen(served, length):
        def urlopen(url, timeout):
            seen["url"], seen["timeout"] = url, timeout
            return Response(served, length)
        return urlopen

    stem = "t10k-labels-idx1-ubyte"
    target = tmp_path / "out" / (stem + ".gz")
    target.parent.mkdir()
    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", fake_urlopen(body, len(body) + 5))
    with pytest.raises(DatasetError, match=rf"connection closed after {len(body):,} of {len(body) + 5:,} bytes"):
        fashion_mnist._download_one("http://x/" + stem + ".gz", target, stem, 7.5, False, False)
    assert seen == {"url": "http://x/" + stem + ".gz", "timeout": 7.5}
    assert list(target.parent.iterdir()) == []
    # wrong content: refused with both hashes when verifying
    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", fake_urlopen(body, len(body)))
    with pytest.raises(DatasetError) as info:
        fashion_mnist._download_one("http://x/f.gz", target, stem, 1.0, False, True)
    assert hashlib.sha256(payload).hexdigest() in str(info.value)
    assert list(target.parent.iterdir()) == []
    # without verification (custom data) the same bytes are kept, as served, with or without a length header
    for length in (len(body), None):
        monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", fake_urlopen(body, length))
        fashion_mnist._download_one("http://x/f.gz", target, stem, 1.0, False, False)
        assert target.read_bytes() == body
    # a body larger than one read arrives whole
    big = gzip.compress(np.random.default_rng(2).integers(0, 256, 300_000, dtype=np.uint8).tobytes(), 0)
    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", fake_urlopen(big, len(big)))
    fashion_mnist._download_one("http://x/f.gz", target, stem, 1.0, False, False)
    assert target.read_bytes() == big


def test_to_keeps_the_paths_and_the_verified_flag(isolated_data_env, tmp_path):
    ds = data.load_fashion_mnist(write_small_dataset(tmp_path / "d"), verify=False)
    moved = ds.to("cpu")
    assert moved.report["files"] == ds.report["files"] and moved.report["verified"] is False
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(moved, key), getattr(ds, key))
    assert ds.train_labels.dtype == torch.int64 and ds.train_images.dtype == torch.uint8
    on_meta = ds.to("meta")  # a device other than the CPU, without one: every tensor moves
    assert [getattr(on_meta, key).device.type for key in ("train_images", "train_labels", "test_images",
                                                          "test_labels")] == ["meta"] * 4


def test_class_counts_names_every_class_even_when_absent():
    counts = data.class_counts(torch.tensor([0, 0, 8, 3]), data.CLASS_NAMES)  # no 9: the last classes appear, with 0
    assert list(counts) == ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                            "ankle boot"]  # Fashion-MNIST's README, labels 0-9
    assert list(counts.values()) == [2, 0, 0, 1, 0, 0, 0, 0, 1, 0]
    with pytest.raises(DatasetError):  # a label outside 0..9 is an error, not silently left out of the counts
        data.class_counts(torch.tensor([0, 10]), data.CLASS_NAMES)


def test_download_progress_bar_names_the_file_and_its_size_and_clears_itself(tmp_path, monkeypatch, capsys):
    import io

    from inceptionlab.data import fashion_mnist

    body = gzip.compress(idx_bytes(np.random.default_rng(3).integers(0, 10, 600)))
    assert 100 <= len(body) < 1000  # tqdm then writes the size as an integer: "0.00/<size>"

    class Response(io.BytesIO):
        headers = http.client.HTTPMessage()

    Response.headers["Content-Length"] = str(len(body))
    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", lambda url, timeout: Response(body))
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    fashion_mnist._download_one("http://x/f.gz", target, "t10k-labels-idx1-ubyte", 1.0, True, False)
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz:   0%" in err and f"0.00/{len(body)} [" in err and "B/s]" in err
    assert "100%" not in err  # leave=False: the finished bar is erased, not left on the screen
    fashion_mnist._download_one("http://x/f.gz", target, "t10k-labels-idx1-ubyte", 1.0, False, False)
    assert capsys.readouterr().err == ""
    assert target.read_bytes() == body
    # download_fashion_mnist's defaults: a progress bar, and verification (this content is not the published one)
    with pytest.raises(DatasetError, match="SHA-256 of the content is " + hashlib.sha256(gzip.decompress(body))
                       .hexdigest()):
        data.download_fashion_mnist(tmp_path / "dest", mirror="http://x/")
    assert "train-images-idx3-ubyte.gz:   0%" in capsys.readouterr().err


def test_download_passes_its_timeout_to_every_request(tmp_path, monkeypatch):
    import io

    from inceptionlab.data import fashion_mnist

    body = gzip.compress(b"x")
    timeouts = []

    def urlopen(url, timeout):
        timeouts.append(timeout)
        response = io.BytesIO(body)
        response.headers = http.client.HTTPMessage()
        return response

    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", urlopen)
    paths = data.download_fashion_mnist(tmp_path, mirror="http://x/", timeout=7.5, progress=False, verify=False)
    assert timeouts == [7.5] * 4 and sorted(paths) == sorted(data.FILES)


def test_load_passes_timeout_and_progress_to_the_download(isolated_data_env, tmp_path, monkeypatch, capsys):
    import io

    from inceptionlab.data import fashion_mnist

    contents = _small_contents()
    timeouts = []

    def urlopen(url, timeout):
        timeouts.append(timeout)
        response = io.BytesIO(gzip.compress(contents[url.rsplit("/", 1)[1].removesuffix(".gz")]))
        response.headers = http.client.HTTPMessage()
        return response

    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", urlopen)
    ds = data.load_fashion_mnist(verify=False, mirror="http://x/", timeout=3.5)  # progress: the default
    assert timeouts == [3.5] * 4 and ds.test_labels.tolist() == list(np.arange(10) % 10)
    assert "t10k-labels-idx1-ubyte.gz: 0.00B [" in capsys.readouterr().err  # no Content-Length: no percentage
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    data.load_fashion_mnist(verify=False, mirror="http://x/", progress=False)
    assert capsys.readouterr().err == ""
