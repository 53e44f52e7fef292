"""The CPU thread tuner against a simulated machine whose speed per thread count we set: it must keep the fastest
count, notice when a competing process makes that count slow, and move."""

from __future__ import annotations

import pytest
import torch

from inceptionlab.engine.threads import ThreadTuner

IDLE = {2: 700.0, 1: 450.0}  # images/s per thread count, shaped like the 2-core machine's (BENCHMARKS.md)
LOADED = {2: 60.0, 1: 430.0}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(tuner: ThreadTuner, speeds: dict[int, float], steps: int, images: int = 128) -> list[int]:
    """Feed ``steps`` steps timed as the simulated machine would run them; returns the thread count of each step."""
    used = []
    for _ in range(steps):
        threads = torch.get_num_threads()
        used.append(threads)
        tuner.step_done(images, images / speeds[threads])
    return used


def test_idle_keeps_all_threads_and_a_busy_machine_moves_to_one():
    torch.set_num_threads(2)
    tuner = ThreadTuner(2, probe=4, every=100)
    assert tuner.candidates == [2, 1] and tuner.active
    used = run(tuner, IDLE, 60)
    assert tuner.chosen == 2 and used[-40:] == [2] * 40
    assert tuner.history[0] == pytest.approx({2: 700.0, 1: 450.0})
    used = run(tuner, LOADED, 30)  # another process starts: 2 threads collapse
    assert tuner.chosen == 1 and used[-10:] == [1] * 10
    # once found, the slow count costs only the steps that noticed it and one probe of it
    assert used.count(2) <= 4 + 1 + 4


def test_probes_get_rarer_while_they_confirm_the_choice_and_the_load_going_away_is_found():
    torch.set_num_threads(2)
    tuner = ThreadTuner(2, probe=4, every=20)
    run(tuner, LOADED, 20)
    assert tuner.chosen == 1
    run(tuner, LOADED, 400)
    assert tuner.every == 8 * 20  # confirmed again and again: the interval grew to its cap
    steps = 0
    while tuner.chosen == 1 and steps < 1000:  # the other process ended: the next periodic probe finds out
        run(tuner, IDLE, 1)
        steps += 1
    assert tuner.chosen == 2 and tuner.every == 20  # a new choice: probes are frequent again
    assert steps <= 8 * 20 + 2 * (4 + 2) + 1  # within one interval and one probe


def test_the_slow_first_steps_and_the_step_after_a_switch_are_not_timed():
    """The first steps set up the kernels (bf16 oneDNN: many times a normal step), and so does the first step with a
    new thread count: timing them would pick the count that happened to run them second."""
    torch.set_num_threads(2)
    tuner = ThreadTuner(2, probe=4, every=100, warmup=5)
    counts_seen = set()
    for step in range(30):
        threads = torch.get_num_threads()
        slow = step < 5 or threads not in counts_seen  # set-up steps: 20x a normal step
        counts_seen.add(threads)
        tuner.step_done(128, 128 / (IDLE[threads] / (20 if slow else 1)))
    assert tuner.chosen == 2 and tuner.history[0] == pytest.approx({2: 700.0, 1: 450.0})


def test_one_thread_means_nothing_to_tune():
    torch.set_num_threads(1)
    tuner = ThreadTuner(1)
    assert not tuner.active
    run(tuner, {1: 100.0}, 10)
    assert tuner.history == [] and torch.get_num_threads() == 1


def test_the_trainer_tunes_only_when_threads_are_not_pinned(fmnist, tmp_path):
    from inceptionlab.config import TrainConfig
    from inceptionlab.train import train

    config = TrainConfig(model="lenet", image_size=28, epochs=1, batch_size=32, limit_train=640, limit_test=64,
                         device="cpu", precision="fp32", out=str(tmp_path))
    torch.set_num_threads(2)
    free = train(config, data=fmnist, log=None)
    assert set(free.summary["threads"]["probes"][0]) == {1, 2}
    pinned = train(config.replace(num_threads=2), data=fmnist, log=None)
    assert "threads" not in pinned.summary and torch.get_num_threads() == 2  # restored after the run
