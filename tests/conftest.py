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
