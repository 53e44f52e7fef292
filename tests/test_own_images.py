"""Your own images end to end (issue "Your own images"): Fashion-MNIST written as PNG class folders trains bit for
bit like the IDX files; real images made by no one here (scikit-learn's digits) train to a high accuracy; a run on a
folder remembers its data (classes, channels, statistics, split.csv) for evaluate, predict and export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inceptionlab.config import TrainConfig
from inceptionlab.data import DataSpec, load_data
from inceptionlab.data.export import export_folder
from inceptionlab.engine.evaluate import evaluate_run
from inceptionlab.engine.trainer import train
from inceptionlab.errors import ConfigError, DatasetError

TRAIN, TEST = 320, 128


def exact(**changes) -> TrainConfig:
    """A short CPU run whose numbers are exact: fp32 NCHW, one thread."""
    base = TrainConfig(model="googlenet-lite", image_size=32, epochs=2, batch_size=64, device="cpu", num_threads=1,
                       precision="fp32", channels_last=False, limit_train=TRAIN, limit_test=TEST)
    return base.replace(**changes)


@pytest.fixture(scope="module")
def exported(fmnist, tmp_path_factory):
    """The first 320 training and 128 test images of Fashion-MNIST as PNG class folders."""
    folder = tmp_path_factory.mktemp("export") / "fashion"
    counts = export_folder(fmnist, folder, limit_train=TRAIN, limit_test=TEST)
    assert counts == {"train": TRAIN, "test": TEST}
    return folder


def test_export_writes_png_class_folders_that_pillow_reads_back_as_the_idx_pixels(fmnist, exported):
    assert (exported / "classes.txt").read_text().splitlines() == list(fmnist.classes)
    label = int(fmnist.train_labels[17])
    png = exported / "train" / fmnist.classes[label] / "00017.png"
    assert np.array_equal(np.asarray(Image.open(png)), fmnist.train_images[17, 0].numpy())
    assert sum(1 for _ in (exported / "test").rglob("*.png")) == TEST


def test_export_refuses_a_folder_that_holds_files(fmnist, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not an empty folder"):
        export_folder(fmnist, tmp_path, limit_train=2, limit_test=2)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_the_exported_folder_trains_bit_for_bit_like_the_idx_files(fmnist, exported, tmp_path, monkeypatch):
    """Same seed, one thread, fp32: every per-epoch number equal, so the folder path loses nothing (decoding, the
    canonical order, the cache and the Pillow resize to 32 px all give the IDX path's pixels and order)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    idx = train(exact(), data=fmnist, run_dir=tmp_path / "idx", log=None)
    folder = train(exact(data=str(exported), classes_file=str(exported / "classes.txt"), val_fraction=0.0),
                   run_dir=tmp_path / "folder", log=None)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[row[k] for k in keys] for row in folder.metrics] == [[row[k] for k in keys] for row in idx.metrics]
    saved = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert saved["data_info"]["source"] == "folder" and saved["data_info"]["classes"] == list(fmnist.classes)
    assert (tmp_path / "folder" / "split.csv").is_file()


def digits_folder(root) -> tuple:
    """scikit-learn's 1,797 8x8 digits (its wheel ships them) as PNG class folders, 0..16 scaled to 0..255."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f"{i:04d}.png")
    return pixels, digits.target


def test_real_digits_train_to_a_high_accuracy_and_the_run_remembers_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    digits_folder(tmp_path / "digits")
    config = TrainConfig(model="lenet", image_size=28, epochs=10, batch_size=32, lr=0.01, optimizer="adamw",
                         device="cpu", num_threads=1, data=str(tmp_path / "digits"), normalize=True)
    result = train(config, run_dir=tmp_path / "run", log=None)
    assert result.metrics[-1]["test_acc"] >= 0.9, result.metrics
    info = json.loads((tmp_path / "run" / "config.json").read_text())["data_info"]
    assert info["classes"] == [str(i) for i in range(10)] and info["channels"] == 1
    # evaluate reads the same test images back through split.csv
    report = evaluate_run(tmp_path / "run", device="cpu")
    assert report["test_acc"] == pytest.approx(result.metrics[-1]["test_acc"])
    assert report["class_names"] == [str(i) for i in range(10)]


def test_a_run_refuses_data_that_changed_since_it_started(fmnist, tmp_path):
    """A resumed run's checkpoint belongs to its data: other content is a one-line error, not a silent mix."""
    from inceptionlab.engine.rundata import with_data

    config = exact().replace(data_info=fmnist.info.to_dict())
    other = load_data(DataSpec())  # the same: accepted
    assert with_data(config, other.info).num_classes == 10
    changed = other.info.__class__(**{**other.info.__dict__, "fingerprint": "0" * 64})
    with pytest.raises(ConfigError, match="the data changed since this run started"):
        with_data(config, changed)


def test_duplicate_report_counts_planted_copies_by_kind():
    """Identical images planted by hand: one more copy with the same label, one with another label, one in test."""
    from inceptionlab.data import DataInfo, ImageDataset
    from inceptionlab.data.dataset import duplicate_report

    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8, generator=g)
    train[3], train[4] = train[0], train[1]  # 3 copies 0 (same label), 4 copies 1 (another label)
    labels = torch.tensor([0, 1, 0, 0, 0, 1])
    test = torch.cat([train[5:6], torch.full((1, 1, 4, 4), 7, dtype=torch.uint8)])  # test[0] is train[5]
    info = DataInfo(("a", "b"), 1, 4, (0.5,), (0.2,), "folder")
    report = duplicate_report(ImageDataset(train, labels, test, torch.tensor([1, 0]), info))
    assert (report["same_label"], report["conflicting_labels"], report["across_splits"]) == (1, 1, 1)
    assert {e["second"] for e in report["examples"]} == {"train[3]", "train[4]", "test[0]"}


def colour_folder(root, per_class: int = 48) -> None:
    """Two classes told apart by colour alone (reddish and bluish noise), and one grey image among them: the folder
    trains as RGB, the grey one replicated."""
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (20, 24, 3), dtype=np.uint8)
            pixels[..., channel] += 160
            Image.fromarray(pixels, "RGB").save(root / name / f"{i:03d}.png")
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), "L").save(root / "red" / "grey.png")


def test_an_rgb_folder_trains_a_three_channel_model_that_predicts_and_exports_with_the_runs_colours(tmp_path,
                                                                                                    monkeypatch):
    from inceptionlab.deploy.predict import load_predictor, load_run_image, predict
    from inceptionlab.export import export_onnx
    from inceptionlab.inputs import class_names

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    colour_folder(tmp_path / "colours")
    config = TrainConfig(model="lenet", image_size=28, epochs=8, batch_size=16, lr=0.01, optimizer="adamw",
                         device="cpu", num_threads=1, precision="fp32", channels_last=False,
                         data=str(tmp_path / "colours"), normalize=True, val_fraction=0.0, test_fraction=0.25)
    result = train(config, run_dir=tmp_path / "run", log=None)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["in_channels"] == 3 and saved["data_info"]["channels"] == 3 and saved["data_info"]["color"] == "rgb"
    assert len(saved["data_info"]["mean"]) == 3 and saved["data_info"]["mean"][0] > saved["data_info"]["mean"][1]
    assert result.metrics[-1]["test_acc"] == 1.0  # colour alone separates them
    model, run_config = load_predictor(tmp_path / "run")
    probe = tmp_path / "probe.jpg"  # a new file, of another size and format, prepared as the training images were
    blue = np.full((50, 40, 3), 30, dtype=np.uint8)
    blue[..., 2] = 230
    Image.fromarray(blue).save(probe)
    pixels, inverted = load_run_image(probe, run_config)
    assert pixels.shape == (3, 28, 28) and not inverted
    assert predict(model, pixels[None], top_k=1, names=class_names(run_config))[0].names == ["blue"]
    pytest.importorskip("onnxruntime")
    report = export_onnx(tmp_path / "run", tmp_path / "colours.onnx")
    assert report["input"]["shape"] == ["N", 3, 28, 28] and report["check"]["same_top1"] == report["check"]["images"]


def test_cli_data_reports_a_folder_and_compare_trains_every_row_on_it(tmp_path, monkeypatch, capsys):
    """`inceptionlab data --data` says what the folder holds (classes, counts, the skipped and the bad), and
    `compare --data` trains each row on the folder's own classes and channels."""
    from inceptionlab.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    colour_folder(tmp_path / "colours", per_class=12)
    (tmp_path / "colours" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "colours" / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    folder = str(tmp_path / "colours")
    assert main(["data", "--data", folder, "--image-size", "28", "--json"]) == 1  # the bad file, named
    assert "blue/broken.png" in capsys.readouterr().err
    grid = tmp_path / "grid.png"
    assert main(["data", "--data", folder, "--image-size", "28", "--on-bad", "skip", "--grid", str(grid),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["blue", "red"] and report["channels"] == 3 and report["source"] == "folder"
    assert sum(report["splits"]["train"]["class_counts"].values()) + sum(
        report["splits"]["test"]["class_counts"].values()) + sum(
        report["splits"]["val"]["class_counts"].values()) == 25  # 24 colour images and the grey one
    assert report["found"]["skipped"] == [".ipynb_checkpoints"] and report["found"]["bad"][0]["path"] == \
        "blue/broken.png"
    assert Image.open(grid).size[0] > 100
    out = tmp_path / "compare"
    assert main(["compare", "lenet", "googlenet-28", "--data", folder, "--on-bad", "skip", "--image-size", "28",
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--num-threads", "1", "--no-progress",
                 "--out-dir", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["lenet", "googlenet-28"]
    for row in rows:
        saved = json.loads((Path(row["run_dirs"][0]) / "config.json").read_text())
        assert saved["in_channels"] == 3 and saved["data_info"]["classes"] == ["blue", "red"]
