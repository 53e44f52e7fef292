"""--val-split: a validation set held out of the real Fashion-MNIST training split, the same for every run.

The held-out images are checked against what the loader really yields, the validation numbers against a plain
forward pass over those images, and compare's ranking against the validation accuracies its runs wrote.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from inceptionlab import experiments, runs
from inceptionlab.cli import main
from inceptionlab.config import TrainConfig
from inceptionlab.data import ImageDataset
from inceptionlab.data.resize import resize_batch
from inceptionlab.engine.distributed import Distributed
from inceptionlab.engine.evaluate import evaluate
from inceptionlab.engine.rundata import build_data, validation_split
from inceptionlab.engine.trainer import train
from inceptionlab.errors import ConfigError

CPU = torch.device("cpu")


def tiny(**changes) -> TrainConfig:
    """A run of a second or two on a CPU: fp32 NCHW, so the numbers compared below are exact."""
    base = TrainConfig(model="lenet", image_size=28, epochs=1, batch_size=64, limit_train=256, limit_test=100,
                       val_split=300, device="cpu", num_threads=1, precision="fp32", channels_last=False)
    return base.replace(**changes)


def image_counts(images: torch.Tensor) -> Counter:
    """How often each distinct 28x28 image occurs (Fashion-MNIST has duplicates, so a multiset, not a set)."""
    return Counter(bytes(row) for row in images.reshape(len(images), -1).numpy())


def loader_images(loader) -> torch.Tensor:
    """Every image one epoch of the loader yields, back to uint8 (28 px, no augmentation: only a division)."""
    return torch.cat([(x * 255).round().to(torch.uint8) for x, _ in loader]).squeeze(1)


def test_held_out_images_are_never_trained_on_and_nothing_is_lost(fmnist):
    config = TrainConfig(image_size=28, batch_size=8192, limit_train=None, val_split=5000, device="cpu")
    data = build_data(config, Distributed(), CPU, fmnist)

    trained = loader_images(data.loader)
    assert len(trained) == 55_000 and len(data.val_images) == 5000
    # the images trained on plus the held-out ones are exactly the training split, each image once
    assert image_counts(trained) + image_counts(data.val_images) == image_counts(fmnist.train_images)
    _, val_index = validation_split(60_000, 5000)
    assert torch.equal(data.val_images, fmnist.train_images[val_index])
    assert torch.equal(data.val_labels, fmnist.train_labels[val_index])
    # a random draw over the whole split, not its first images: every class, roughly 500 of each
    assert val_index.max() > 50_000 and torch.bincount(data.val_labels, minlength=10).min() > 400


def test_the_split_depends_on_n_alone_not_on_seed_model_rank_or_limit_train(fmnist):
    configs = [tiny(), tiny(seed=1), tiny(model="googlenet"), tiny(limit_train=None), tiny(limit_train=50, seed=7)]
    reference = build_data(configs[0], Distributed(), CPU, fmnist)
    for config in configs[1:]:
        torch.manual_seed(config.seed + 123)  # another global RNG state, as in another process
        got = build_data(config, Distributed(), CPU, fmnist)
        assert torch.equal(got.val_images, reference.val_images) and torch.equal(got.val_labels, reference.val_labels)
    # under torchrun every rank holds out the same images (its training shard differs)
    rank1 = build_data(tiny(), Distributed(rank=1, world_size=2, local_rank=1), CPU, fmnist)
    assert torch.equal(rank1.val_images, reference.val_images)
    # limit_train takes the first images of what is left after the hold-out
    everything = build_data(tiny(limit_train=None), Distributed(), CPU, fmnist)
    assert torch.equal(reference.loader.images, everything.loader.images[:256])
    # a smaller split's images are inside a larger one's
    small, large = validation_split(60_000, 100)[1], validation_split(60_000, 300)[1]
    assert set(small.tolist()) <= set(large.tolist())


def test_val_metrics_are_a_plain_evaluation_of_the_held_out_images(fmnist, tmp_path):
    # augmentation on: validation images must get the test-time preprocessing, not the training transform; 30 px:
    # the trainer resizes the held-out images once, evaluate() below per batch
    config = tiny(epochs=2, image_size=30, crop_padding=2, flip=True, erasing=0.5, out=str(tmp_path))
    result = train(config, data=fmnist, log=None, progress=False)

    _, val_index = validation_split(60_000, 300)
    images, labels = fmnist.train_images[val_index], fmnist.train_labels[val_index]
    last = result.metrics[-1]
    direct = evaluate(result.model, images, labels, config)
    assert (last["val_acc"], last["val_loss"]) == (direct["acc"], direct["loss"])
    # and independently of evaluate(): the model's forward pass on the resized pixels / 255
    result.model.eval()
    with torch.no_grad():
        logits = result.model(resize_batch(images, 30))
    assert last["val_acc"] == (logits.argmax(1) == labels).double().mean().item()
    assert last["val_loss"] == pytest.approx(F.cross_entropy(logits.double(), labels).item(), rel=1e-6)

    summary = runs.read_summary(result.run_dir)
    assert summary["val_acc"] == last["val_acc"]
    assert summary["best_val_acc"] == max(r["val_acc"] for r in result.metrics)
    assert [r["val_acc"] for r in runs.read_metrics(result.run_dir)] == [r["val_acc"] for r in result.metrics]


def test_without_a_split_rows_and_summary_keep_their_keys(fmnist, tmp_path):
    result = train(tiny(val_split=0, limit_train=64, out=str(tmp_path)), data=fmnist, log=None, progress=False)
    assert list(result.metrics[0]) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
                                       "images_per_sec", "epoch_seconds", "elapsed_seconds"]
    assert "val_acc" not in result.summary and "best_val_acc" not in result.summary


def test_a_resumed_run_holds_out_the_same_images(fmnist, tmp_path):
    straight = train(tiny(epochs=2, out=str(tmp_path / "a")), data=fmnist, log=None, progress=False)
    first = train(tiny(epochs=1, out=str(tmp_path / "b")), data=fmnist, log=None, progress=False)
    # as `train --resume RUN_DIR --epochs 2` does: the run's own config.json, extended
    saved = TrainConfig.from_dict(runs.read_config(first.run_dir)).replace(epochs=2)
    resumed = train(saved, resume=first.run_dir, data=fmnist, log=None, progress=False)
    assert [(r["val_loss"], r["val_acc"]) for r in resumed.metrics] == \
        [(r["val_loss"], r["val_acc"]) for r in straight.metrics]


def test_compare_ranks_rows_by_validation_accuracy(fmnist, tmp_path):
    out = tmp_path / "cmp"
    # listed worst first: a learning rate too small to move lenet in 128 steps, then one that learns (0.45-0.47)
    recipe = dict(optimizer="adamw", batch_size=16, limit_train=2048)
    variants = [experiments.Variant("frozen", tiny(lr=1e-6, **recipe)),
                experiments.Variant("learns", tiny(lr=3e-3, **recipe))]
    experiments.run_variants("compare", variants, seeds=2, out_dir=out, data=fmnist, log=None)

    saved = json.loads((out / "results.json").read_text())
    by_label = {row["label"]: row for row in saved["rows"]}
    for row in saved["rows"]:  # each run's own summary.json is where the numbers come from
        summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in row["run_dirs"]]
        assert row["val_acc"] == [s["val_acc"] for s in summaries]
        assert row["val_acc_mean"] == pytest.approx(sum(row["val_acc"]) / 2)
    expected = sorted(by_label, key=lambda label: -by_label[label]["val_acc_mean"])
    assert by_label["learns"]["val_acc_mean"] > by_label["frozen"]["val_acc_mean"] + 0.2
    assert saved["ranked_by"] == "val_acc_mean" and saved["ranking"] == expected == ["learns", "frozen"]

    lines = (out / "table.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert "val acc (mean ± std)" in header and "test acc (mean ± std)" in header
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")][2:]
    assert [r[0] for r in rows] == expected
    for cells in rows:
        row = by_label[cells[0]]
        assert cells[3] == experiments.format_mean_std(row["val_acc"])
        assert cells[4] == experiments.format_mean_std(row["test_acc"])  # the test accuracy is still reported
    assert any("ranked by validation accuracy" in line for line in lines)
    assert "300 held out for validation" in (out / "table.md").read_text()


def test_ranking_uses_validation_not_test_accuracy():
    """Where the two disagree, validation decides; rows without one (all seeds diverged) go last."""
    def row(label, val, test):
        return experiments.RowResult(label, "lenet", 28, 1, 0.0, seeds=[0], val_acc=val, test_acc=test)

    rows = [row("val-best", [0.9], [0.1]), row("diverged", [], []), row("test-best", [0.5], [0.99]),
            row("middle", [0.7, 0.6], [0.5, 0.5])]
    assert [r.label for r in experiments.ranked(rows)] == ["val-best", "middle", "test-best", "diverged"]
    assert experiments.ranked([row("no-val", [], [0.9])]) is None  # nothing is ever ranked on the test set


@pytest.mark.parametrize("value, match", [(-1, ">= 0"), (True, ">= 0"), (1.5, ">= 0")])
def test_bad_split_sizes_are_refused(value, match):
    with pytest.raises(ConfigError, match=match) as exc:
        TrainConfig(val_split=value).validate()
    assert "\n" not in str(exc.value)


def test_a_split_as_large_as_smaller_data_is_refused(fmnist):
    small = ImageDataset(fmnist.train_images[:100], fmnist.train_labels[:100], fmnist.test_images[:10],
                         fmnist.test_labels[:10], fmnist.info)
    with pytest.raises(ConfigError, match=r"--val-split 100 .*100 training images.*e\.g\. --val-split 8"):
        build_data(tiny(val_split=100), Distributed(), CPU, small)


def test_cli_val_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the data verification cache
    code = main(["train", "--val-split", "60000", "--out", str(tmp_path / "r")])
    assert code == 1 and "--val-split 60,000 must be between 1 and 59,999" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--val-split", "-5"])
    assert exc.value.code == 2
    out = tmp_path / "sweep"
    code = main(["sweep", "--model", "lenet", "--image-size", "28", "--epochs", "1", "--batch-size", "64",
                 "--limit-train", "128", "--limit-test", "100", "--val-split", "200", "--device", "cpu",
                 "--num-threads", "1", "--no-progress", "--out-dir", str(out)])
    assert code == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["base_config"]["val_split"] == 200 and saved["ranking"] == ["28px"]
    assert "val acc (mean ± std)" in (out / "table.md").read_text()
