"""Mid-epoch recovery points (``checkpoint_every``): a run that dies inside an epoch resumes from the last recovery
point and ends with exactly the numbers of an uninterrupted run (threads pinned, as for any bit-exact rerun)."""

from __future__ import annotations

import pytest
import torch

from inceptionlab import runs
from inceptionlab.config import TrainConfig
from inceptionlab.train import train

KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")


class Crash(Exception):
    """The process dies right after a recovery point reached the disk."""


def config(tmp_path, **changes) -> TrainConfig:
    # augmentation, momentum and a schedule: everything a resume must restore mid-epoch
    values = dict(model="lenet", image_size=28, epochs=2, batch_size=32, limit_train=640, limit_test=128,
                  lr=0.1, optimizer="momentum", schedule="cosine", crop_padding=2, flip=True, erasing=0.5,
                  num_threads=1, device="cpu", precision="fp32", sync_every=4, checkpoint_every=0.0,
                  out=str(tmp_path))
    return TrainConfig(**{**values, **changes})


@pytest.mark.parametrize("crash_after", [1, 6])  # a recovery point in epoch 1, and one in epoch 2
def test_resume_from_a_mid_epoch_recovery_point_gives_the_uninterrupted_numbers(fmnist, tmp_path, monkeypatch,
                                                                                  crash_after, same_training):
    reference = train(config(tmp_path / "reference"), data=fmnist, log=None)
    saved = []
    real_save = runs.save_checkpoint

    def save_then_crash(run_dir, state):
        real_save(run_dir, state)
        if "partial" in state:
            saved.append(state["partial"]["step"])
            if len(saved) == crash_after:
                raise Crash()

    monkeypatch.setattr(runs, "save_checkpoint", save_then_crash)
    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(config(tmp_path, checkpoint_every=1e-9), data=fmnist, run_dir=run_dir, log=None)
    monkeypatch.undo()
    on_disk = torch.load(run_dir / runs.CHECKPOINT, weights_only=True)
    assert on_disk["partial"]["step"] == saved[-1] and 0 < saved[-1] < 20  # died inside an epoch
    resumed = train(resume=run_dir, data=fmnist, log=None)
    same_training(reference, resumed, KEYS)
    assert "partial" not in torch.load(run_dir / runs.CHECKPOINT, weights_only=True)  # the epoch's checkpoint


def test_a_damaged_recovery_point_is_refused_by_name(fmnist, tmp_path):
    from inceptionlab.errors import RunDirError

    run = train(config(tmp_path, epochs=1), data=fmnist, log=None)
    state = torch.load(run.run_dir / runs.CHECKPOINT, weights_only=True)
    state["partial"] = {"step": 999, "loss_sum": torch.zeros(()), "correct": torch.zeros(()), "seen": 1,
                        "rng": {"torch": torch.get_rng_state()}}
    runs.save_checkpoint(run.run_dir, state)
    with pytest.raises(RunDirError, match="recovery point"):
        train(config(tmp_path, epochs=2), resume=run.run_dir, data=fmnist, log=None)
