"""Bit-for-bit regression: tiny deterministic CPU runs must keep the per-epoch numbers recorded from main at
commit ba6e355, before the package was re-layered (the architecture issue). A refactor that changes any of
these numbers changed the arithmetic, not only where the code lives.

These are recorded values, not independent references: they guard against drift, not against a wrong result
(the other test modules check correctness against PyTorch, Pillow and the chapter's code).
"""

from __future__ import annotations

import pytest
import torch

from inceptionlab.config import TrainConfig
from inceptionlab.train import train

KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
RECIPE = dict(model="googlenet-bn", optimizer="nesterov", schedule="onecycle", warmup_epochs=0.5, weight_decay=5e-4,
              label_smoothing=0.1, crop_padding=2, flip=True, erasing=0.5, normalize=True, precision="bf16",
              channels_last=True)
# (train_loss, train_acc, test_loss, test_acc, lr) per epoch, recorded at ba6e355 with 1 thread on the CPU
RECORDED = {
    "googlenet": (dict(model="googlenet", precision="fp32", channels_last=False), [
        (2.3046555519104004, 0.07421875, 2.3009886741638184, 0.14453125, 0.1),
        (2.303891181945801, 0.08203125, 2.3011133670806885, 0.109375, 0.1),
    ]),
    "googlenet-bn": (dict(model="googlenet-bn", precision="fp32", channels_last=False), [
        (2.813714027404785, 0.162109375, 4.1666483879089355, 0.1328125, 0.1),
        (2.218820810317993, 0.439453125, 3.4098615646362305, 0.17578125, 0.1),
    ]),
    "googlenet-bn-recipe": (RECIPE, [
        (3.748612880706787, 0.134765625, 9673.37890625, 0.14453125, 0.08333333333333334),
        (3.769087791442871, 0.205078125, 1659.6878662109375, 0.09375, 0.016666666666666663),
    ]),
}


@pytest.mark.parametrize("name", list(RECORDED))
def test_tiny_runs_match_recorded_numbers(name, fmnist, tmp_path):
    options, expected = RECORDED[name]
    config = TrainConfig(image_size=32, epochs=2, limit_train=512, limit_test=256, num_threads=1, device="cpu",
                         step_mode="eager", out=str(tmp_path), **options)
    result = train(config, data=fmnist, log=None, progress=False)
    got = [tuple(row[k] for k in KEYS) for row in result.metrics]
    assert got == expected


def test_captured_step_on_cpu_matches_recorded_parameter_change():
    """The captured step's body (static buffers, warm-up and roll-back, tensor lr), run without a graph on the CPU,
    in float64: the same parameter change as recorded, and exactly the eager step's."""
    from inceptionlab.engine import checks as fast

    config, dtype = fast._check_setup("googlenet-bn", "fp32", None, 16, 32)
    batches = fast._check_batches(3, 16, 32, dtype)
    captured = fast._parameter_change(torch.device("cpu"), config, batches, dtype, captured=True)
    eager = fast._parameter_change(torch.device("cpu"), config, batches, dtype)
    assert float(captured.norm()) == 23.704265599333823
    assert float(captured.sum()) == -102.35597356494624
    assert torch.equal(captured, eager)
