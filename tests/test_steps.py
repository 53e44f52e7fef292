"""``steps``: a run of exactly N optimisation steps. The schedule ends at step N, the last epoch is partial (it
evaluates and saves as any epoch end), and a resume at an epoch end or inside an epoch gives the numbers of the
uninterrupted run."""

from __future__ import annotations

import math

import pytest
import torch

from inceptionlab import runs
from inceptionlab.cli import main
from inceptionlab.config import TrainConfig, preset_config
from inceptionlab.errors import ConfigError
from inceptionlab.train import train

KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "steps", "epoch_fraction")


def config(tmp_path, **changes) -> TrainConfig:
    # 320 images in batches of 32: 10 steps per epoch, so 25 steps are 2 epochs and half of a third
    values = dict(model="lenet", image_size=28, steps=25, batch_size=32, limit_train=320, limit_test=64, lr=0.1,
                  optimizer="adamw", schedule="onecycle", warmup_epochs=0.5, crop_padding=2, flip=True,
                  num_threads=1, device="cpu", precision="fp32", sync_every=4, checkpoint_every=0.0,
                  out=str(tmp_path))
    return TrainConfig(**{**values, **changes})


def expected_last_lr(schedule: str, lr: float, warmup: int, steps: int) -> float:
    """The last step's learning rate, written out here: the decay runs from step ``warmup`` to ``steps``."""
    t = (steps - 1 - warmup) / (steps - warmup)
    return lr * (1 - t) if schedule == "onecycle" else lr * 0.5 * (1 + math.cos(math.pi * t))


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_steps_train_exactly_that_many_steps_and_the_schedule_ends_there(fmnist, tmp_path, schedule):
    result = train(config(tmp_path, schedule=schedule), data=fmnist, log=None)
    assert [r["epoch"] for r in result.metrics] == [1, 2, 3]
    assert [r["steps"] for r in result.metrics] == [10, 20, 25]
    assert [r["epoch_fraction"] for r in result.metrics] == [1.0, 1.0, 0.5]
    last_lr = result.metrics[-1]["lr"]
    assert last_lr == pytest.approx(expected_last_lr(schedule, 0.1, 5, 25), rel=1e-12)
    assert last_lr < 0.1 / 19  # near 0: the decay ended at the run's end, not at 3 whole epochs (30 steps)
    adam_steps = {int(s["step"]) for s in torch.load(result.run_dir / runs.CHECKPOINT,
                                                      weights_only=True)["optimizer"]["state"].values()}
    assert adam_steps == {25}
    saved = runs.read_run_config(result.run_dir)
    assert (saved.steps, saved.epochs) == (25, 3)
    assert (result.run_dir / runs.WEIGHTS).is_file() and result.summary["epochs_completed"] == 3


class Crash(Exception):
    """The process dies right after a checkpoint reached the disk."""


def crash_after(monkeypatch, wanted):
    real_save = runs.save_checkpoint

    def save_then_crash(run_dir, state):
        real_save(run_dir, state)
        if wanted(state):
            raise Crash()

    monkeypatch.setattr(runs, "save_checkpoint", save_then_crash)


@pytest.mark.parametrize("where", ["epoch end", "inside the partial epoch"])
def test_a_resumed_step_count_run_ends_with_the_uninterrupted_numbers(fmnist, tmp_path, monkeypatch, where,
                                                                       same_training):
    reference = train(config(tmp_path / "reference"), data=fmnist, log=None)
    if where == "epoch end":
        crash_after(monkeypatch, lambda s: "partial" not in s and s["epoch"] == 2)
    else:  # a recovery point at step 4 of epoch 3, which has 5 steps
        crash_after(monkeypatch, lambda s: "partial" in s and s["epoch"] == 2)
    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(config(tmp_path, checkpoint_every=1e-9), data=fmnist, run_dir=run_dir, log=None)
    monkeypatch.undo()
    resumed = train(resume=run_dir, data=fmnist, log=None)
    same_training(reference, resumed, KEYS)


def test_steps_and_epochs_together_are_refused_naming_both(capsys):
    with pytest.raises(ConfigError, match="--epochs and --steps"):
        preset_config("d2l", epochs=3, steps=100)
    assert main(["train", "--steps", "100", "--epochs", "3"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--epochs and --steps" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "ten"])
def test_steps_must_be_a_positive_whole_number(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--steps", bad])
    assert exc.value.code == 2 and "--steps" in capsys.readouterr().err


def test_a_warmup_longer_than_the_steps_is_refused_before_training(fmnist, tmp_path):
    with pytest.raises(ConfigError, match="warmup_epochs 1 .10 steps. must end before the run's 8 steps"):
        train(config(tmp_path, steps=8, warmup_epochs=1.0), data=fmnist, log=None)
