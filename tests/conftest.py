"""Shared fixtures. The real Fashion-MNIST files are required (Debian's dataset-fashion-mnist or
$INCEPTIONLAB_DATA): tests that need them fail with instructions instead of being skipped."""

from __future__ import annotations

import pytest
import torch

from inceptionlab.data import ImageDataset, load_fashion_mnist
from inceptionlab.errors import DatasetError


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite. The suite also starts training subprocesses (SIGKILL, SIGTERM,
    two torchrun ranks) on a 2-core CI box; oversubscribed OpenMP threads spin against each other and made small
    convolutions ~20x slower (inception-v3 forward+backward at 28 px: 1.5 s with 2 threads, 0.1 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory) -> ImageDataset:
    """Both splits of the real, verified Fashion-MNIST on the CPU, loaded once per test session."""
    with pytest.MonkeyPatch.context() as mp:
        # The verification cache goes to a temporary directory, not the user's ~/.cache.
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        try:
            return load_fashion_mnist(download=False, progress=False)
        except DatasetError as exc:
            pytest.fail(
                f"the test suite needs the real Fashion-MNIST files: {exc}\n"
                "Run `make data` (apt-get install dataset-fashion-mnist) or set INCEPTIONLAB_DATA.",
                pytrace=False,
            )


SMALL_TEST_IMAGES = 500


@pytest.fixture(scope="session")
def small_test_data(fmnist) -> ImageDataset:
    """Fashion-MNIST with the first 500 test images as its test split (what evaluate_run then evaluates)."""
    return ImageDataset(fmnist.train_images, fmnist.train_labels, fmnist.test_images[:SMALL_TEST_IMAGES],
                        fmnist.test_labels[:SMALL_TEST_IMAGES], fmnist.info)


@pytest.fixture(scope="session")
def small_run_dir(small_test_data, tmp_path_factory):
    """A small trained run shared by the inspect and explorer tests: googlenet-bn at 28 px, 2 epochs on 1,280
    images, the default precision (bf16 + channels_last where the CPU has fast bf16): well above chance (measured
    0.58 on these 500 test images)."""
    from inceptionlab.config import TrainConfig
    from inceptionlab.engine.trainer import train

    config = TrainConfig(model="googlenet-bn", image_size=28, epochs=2, batch_size=64, limit_train=1280, lr=0.05,
                         optimizer="nesterov", schedule="onecycle", warmup_epochs=0.3, num_threads=1,
                         out=str(tmp_path_factory.mktemp("runs")))
    result = train(config, data=small_test_data, log=None)
    assert result.status == "completed"
    return result.run_dir


@pytest.fixture
def isolated_data_env(tmp_path, monkeypatch):
    """No $INCEPTIONLAB_DATA/$INCEPTIONLAB_MIRROR, an empty cache, and no Debian directory: only what a test
    puts in place is found. Returns the cache directory."""
    import inceptionlab.data.fashion_mnist as data

    monkeypatch.delenv("INCEPTIONLAB_DATA", raising=False)
    monkeypatch.delenv("INCEPTIONLAB_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    return data.cache_dir()


@pytest.fixture
def fail_path(monkeypatch):
    """``fail_path(method, when, error)``: ``Path.<method>`` raises ``error`` for the paths ``when(path)`` picks and
    works as usual for the rest (a read-only disk, a locked directory, a taken name, without needing them)."""
    from pathlib import Path

    def install(method: str, when, error: OSError) -> None:
        real = getattr(Path, method)

        def failing(self, *args, **kwargs):
            if when(self):
                raise error
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, method, failing)

    return install


WRITER = """import os, sys, time
from inceptionlab.fileio import atomic_open
with atomic_open(sys.argv[1]) as f:
    f.write(b"half")
    f.flush()
    print("writing", flush=True)
    time.sleep(300) if sys.argv[2] == "live" else os.kill(os.getpid(), 9)
"""


@pytest.fixture
def write_in_a_process():
    """``write_in_a_process(path, live)``: a process writes ``path`` with atomic_open and, past its first bytes, is
    SIGKILLed (``live=False``: waited for, its temporary file left as a kill leaves it) or keeps writing
    (``live=True``: returned, killed at the test's end)."""
    import subprocess
    import sys

    started = []

    def start(path, live: bool) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "live" if live else "killed"],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == "writing\n"
        if not live:
            proc.wait(timeout=60)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()


@pytest.fixture
def same_training():
    """``check(reference, other, keys)``: two TrainResults with equal metrics rows (on ``keys``) and bit-identical
    weights, the resume and reproduction tests' test of "the same run"."""

    def check(reference, other, keys) -> None:
        assert [tuple(r[k] for k in keys) for r in other.metrics] == [tuple(r[k] for k in keys)
                                                                      for r in reference.metrics]
        for (name, a), b in zip(reference.model.state_dict().items(), other.model.state_dict().values(),
                                strict=True):
            assert torch.equal(a, b), name

    return check
