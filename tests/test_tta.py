"""Shift test-time augmentation (``shift_tta``): each image's logits averaged over it and its four one-pixel shifts,
in a run's closing evaluation, ``evaluate``, predict and export. The references shift with slices, not F.pad, and
run plain forward passes of the saved network."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab import runs
from inceptionlab.cli import main
from inceptionlab.config import TrainConfig
from inceptionlab.data import resize_batch
from inceptionlab.engine.evaluate import evaluate, evaluate_run
from inceptionlab.engine.rundata import validation_split
from inceptionlab.inputs import SHIFTS, normalization, normalize, pixel_model, shifted
from inceptionlab.train import train


def moved(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` one pixel right (dx 1) / left (-1) / down (dy 1) / up (-1), the vacated column or row a copy of the
    edge it left."""
    if dx == 1:
        x = torch.cat([x[..., :, :1], x[..., :, :-1]], dim=-1)
    if dx == -1:
        x = torch.cat([x[..., :, 1:], x[..., :, -1:]], dim=-1)
    if dy == 1:
        x = torch.cat([x[..., :1, :], x[..., :-1, :]], dim=-2)
    if dy == -1:
        x = torch.cat([x[..., 1:, :], x[..., -1:, :]], dim=-2)
    return x


def five_views(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sum(model(moved(x, dx, dy)) for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))) / 5


def test_a_shift_moves_the_image_one_pixel_and_repeats_the_edge():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert shifted(x, 1, 0)[0, 0].tolist() == [[0, 0, 1], [3, 3, 4], [6, 6, 7]]
    assert shifted(x, -1, 0)[0, 0].tolist() == [[1, 2, 2], [4, 5, 5], [7, 8, 8]]
    assert shifted(x, 0, 1)[0, 0].tolist() == [[0, 1, 2], [0, 1, 2], [3, 4, 5]]
    assert shifted(x, 0, -1)[0, 0].tolist() == [[3, 4, 5], [6, 7, 8], [6, 7, 8]]
    assert shifted(x, 0, 0) is x and sorted(SHIFTS) == [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)]


@pytest.mark.parametrize("flip", [False, True])
def test_shift_tta_averages_each_images_logits_over_its_one_pixel_shifts(fmnist, flip):
    config = TrainConfig(model="lenet", image_size=28, eval_batch_size=37, precision="fp32")  # ragged last batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))  # position-dependent: a shift changes its answer
    images, labels = fmnist.test_images[:300], fmnist.test_labels[:300]
    result = evaluate(model, images, labels, config, shift=True, flip=flip)
    x = resize_batch(images, 28)
    logits = five_views(model, x)
    if flip:  # every shifted view also with its mirror image: ten views
        logits = (logits + five_views(model, x.flip(-1))) / 2
    with torch.no_grad():
        plain = model(x)
    pred = logits.argmax(dim=1)
    assert (pred != plain.argmax(dim=1)).any()  # the average decides some images differently
    assert result["correct"] == int((pred == labels).sum()) and result["count"] == 300
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert torch.equal(result["confusion"], torch.bincount(labels * 10 + pred, minlength=100).view(10, 10))


@pytest.fixture(scope="module")
def shift_run(fmnist, tmp_path_factory):
    """A small googlenet-lite (it learns in one epoch) trained with shift_tta, standardised inputs, 200 held out."""
    config = TrainConfig(model="googlenet-lite", model_options={"width": 0.125, "blocks": [1, 1, 0]}, image_size=28,
                         epochs=1, batch_size=64, limit_train=1280, limit_test=256, lr=0.05, optimizer="momentum",
                         shift_tta=True, normalize=True, precision="fp32", channels_last=False, val_split=200,
                         num_threads=1, out=str(tmp_path_factory.mktemp("shift")))
    result = train(config, data=fmnist, log=None)
    model, saved = runs.load_run_model(result.run_dir)
    mean, std = normalization(saved)
    return result, model.eval(), (lambda x: model(normalize(x, mean, std))), saved


def test_a_shift_tta_runs_closing_numbers_are_the_five_view_average(shift_run, fmnist):
    """summary.json's test and validation numbers and per-class report come from the five views; the curves' last
    point (metrics) and ``*_one_view`` stay the single view."""
    result, _, net, _ = shift_run
    labels, x = fmnist.test_labels[:256], resize_batch(fmnist.test_images[:256], 28)
    tta = five_views(net, x)
    with torch.no_grad():
        plain = net(x)
    summary, row = result.summary, result.metrics[-1]
    assert summary["test_acc"] == int((tta.argmax(1) == labels).sum()) / 256
    assert summary["test_loss"] == pytest.approx(float(F.cross_entropy(tta, labels)), rel=1e-5)
    assert summary["test_acc_one_view"] == row["test_acc"] == int((plain.argmax(1) == labels).sum()) / 256
    assert row["test_loss"] == pytest.approx(float(F.cross_entropy(plain, labels)), rel=1e-5)
    assert abs(float(F.cross_entropy(tta, labels)) - row["test_loss"]) > 1e-3  # the checks tell the two apart
    per_class = json.loads((result.run_dir / runs.SUMMARY).read_text())["per_class_acc"]
    for i, acc in enumerate(per_class.values()):
        assert acc == pytest.approx(float((tta.argmax(1)[labels == i] == i).float().mean()))
    _, val_index = validation_split(len(fmnist.train_labels), 200)
    val_labels = fmnist.train_labels[val_index]
    val = five_views(net, resize_batch(fmnist.train_images[val_index], 28))
    assert summary["val_acc"] == int((val.argmax(1) == val_labels).sum()) / 200
    assert summary["val_acc_one_view"] == row["val_acc"]


def test_evaluate_and_predict_follow_the_runs_shift_tta(shift_run, fmnist, capsys):
    result, model, net, saved = shift_run
    default = evaluate_run(result.run_dir, data=fmnist)
    x = resize_batch(fmnist.test_images, 28)
    tta = five_views(net, x)
    assert default["shift_tta"] and default["count"] == 10_000
    assert default["test_acc"] == int((tta.argmax(1) == fmnist.test_labels).sum()) / 10_000
    assert main(["evaluate", str(result.run_dir), "--json", "--no-shift-tta"]) == 0
    without = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        plain = net(x)
    assert not without["shift_tta"] and without["test_acc"] == int((plain.argmax(1) == fmnist.test_labels).sum()) / 1e4
    with torch.no_grad():  # what predict and export wrap: pixels in, the five-view average out
        torch.testing.assert_close(pixel_model(model, saved)(x[:7]), tta[:7], rtol=1e-5, atol=1e-5)


def test_shift_tta_is_a_flag_of_train_off_by_default_and_refuses_anything_but_true_or_false():
    from inceptionlab.cli import build_parser
    from inceptionlab.cli.train import build_config
    from inceptionlab.config import PRESETS, preset_config
    from inceptionlab.errors import ConfigError

    parser = build_parser()
    assert build_config(parser.parse_args(["train", "--shift-tta"])).shift_tta is True
    assert build_config(parser.parse_args(["train", "--preset", "quick", "--no-shift-tta"])).shift_tta is False
    assert not any(preset_config(name).shift_tta for name in PRESETS) and TrainConfig().shift_tta is False
    with pytest.raises(ConfigError, match="shift_tta must be true or false, got 'yes'"):
        TrainConfig(shift_tta="yes").validate()
