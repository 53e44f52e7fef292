"""The CPU thread tuner against a simulated machine whose speed and CPU share per thread count we set: idle it
never changes anything; when another process takes a share of the cores it finds the faster count, and when the
other process goes away it finds its way back."""

from __future__ import annotations

import pytest
import torch

from inceptionlab.engine.threads import ThreadTuner

# images/s and CPU share (CPU time per wall second per thread) per thread count, shaped like the 2-core machine's
# (BENCHMARKS.md, "Training under load")
IDLE = {2: (900.0, 1.0), 1: (530.0, 1.0)}
LOADED = {2: (240.0, 0.64), 1: (500.0, 1.0)}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class Machine:
    """Fake wall and CPU clocks, advanced by each simulated step."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def tuner(self, **options) -> ThreadTuner:
        return ThreadTuner(2, wall_clock=lambda: self.wall, cpu_clock=lambda: self.cpu, **options)

    def run(self, tuner: ThreadTuner, profile: dict, steps: int, images: int = 128, setup: int = 0) -> list[int]:
        """``steps`` steps (the first ``setup`` of them 20x slower: kernel set-up); the thread count of each."""
        used = []
        for step in range(steps):
            threads = torch.get_num_threads()
            rate, share = profile[threads]
            seconds = images / rate * (20 if step < setup else 1)
            self.wall += seconds
            self.cpu += seconds * threads * share
            used.append(threads)
            tuner.step_done(images, seconds)
        return used


def test_idle_it_never_probes_and_keeps_every_thread():
    torch.set_num_threads(2)
    machine = Machine()
    tuner = machine.tuner()
    used = machine.run(tuner, IDLE, 400, setup=5)
    assert used == [2] * 400 and tuner.history == []
    assert tuner.utilisation and min(tuner.utilisation) == pytest.approx(1.0)


def test_a_competing_process_moves_it_to_one_thread_within_a_few_steps():
    torch.set_num_threads(2)
    machine = Machine()
    tuner = machine.tuner(window=4)
    machine.run(tuner, IDLE, 40, setup=5)
    used = machine.run(tuner, LOADED, 40)
    assert tuner.chosen == 1 and tuner.history == [pytest.approx({2: 240.0, 1: 500.0})]
    # noticed within one window, one probe at 2 threads, then 1 thread to the end
    assert used.count(2) <= 4 + 1 + 4 + 1 and used[-20:] == [1] * 20


def test_the_load_going_away_is_found_and_probes_get_rarer_while_it_stays():
    torch.set_num_threads(2)
    machine = Machine()
    tuner = machine.tuner(window=4, every=20)
    machine.run(tuner, LOADED, 30)
    assert tuner.chosen == 1
    machine.run(tuner, LOADED, 600)
    assert tuner.every == 8 * 20  # confirmed again and again: the interval grew to its cap
    steps = 0
    while tuner.chosen == 1 and steps < 1000:  # the other process ended
        machine.run(tuner, IDLE, 1)
        steps += 1
    assert tuner.chosen == 2 and tuner.every == 20 and steps <= 8 * 20 + 2 * (4 + 2) + 1


def test_a_passing_blip_does_not_move_it_off_every_thread():
    # one window slowed by a short-lived process (a build, an editor): the probe times 2 threads again, idle,
    # instead of comparing 1 thread with the slowed window (which once chose 1 thread on an idle machine)
    torch.set_num_threads(2)
    machine = Machine()
    tuner = machine.tuner(window=4)
    machine.run(tuner, IDLE, 40, setup=5)
    machine.run(tuner, LOADED, 4)
    used = machine.run(tuner, IDLE, 100)
    assert tuner.history == [pytest.approx({2: 900.0, 1: 530.0})] and tuner.chosen == 2
    assert used[-80:] == [2] * 80


def test_a_count_barely_faster_is_not_worth_a_switch_and_probes_back_off():
    # mild contention: the CPU share stays below the alarm line, and 1 thread is 5 % faster (within the noise)
    torch.set_num_threads(2)
    machine = Machine()
    tuner = machine.tuner(window=4, every=50)
    used = machine.run(tuner, {2: (600.0, 0.8), 1: (630.0, 1.0)}, 300)
    assert tuner.chosen == 2 and all(rates == pytest.approx({2: 600.0, 1: 630.0}) for rates in tuner.history)
    assert used.count(1) <= 2 * len(tuner.history) * (4 + 1)  # each probe: one window and a switch at 1 thread
    assert 2 <= len(tuner.history) <= 4  # waits 50, then 100, then 200 steps between probes, not every window


def test_slow_set_up_steps_are_not_mistaken_for_load():
    torch.set_num_threads(2)
    machine = Machine()
    tuner = machine.tuner(warmup=5)
    machine.run(tuner, {2: (900.0, 0.5), 1: (530.0, 1.0)}, 5)  # set-up: one thread busy, the other waiting
    used = machine.run(tuner, IDLE, 100)
    assert tuner.history == [] and used == [2] * 100


def test_one_thread_means_nothing_to_tune():
    torch.set_num_threads(1)
    tuner = ThreadTuner(1)
    assert not tuner.active
    tuner.step_done(128, 0.1)
    assert tuner.history == [] and torch.get_num_threads() == 1


def test_the_trainer_tunes_only_when_threads_are_not_pinned(fmnist, tmp_path):
    from inceptionlab.config import TrainConfig
    from inceptionlab.train import train

    config = TrainConfig(model="lenet", image_size=28, epochs=1, batch_size=32, limit_train=640, limit_test=64,
                         device="cpu", precision="fp32", out=str(tmp_path))
    torch.set_num_threads(2)
    free = train(config, data=fmnist, log=None)
    assert free.summary["threads"]["utilisation"]  # it watched the run's CPU share
    pinned = train(config.replace(num_threads=2), data=fmnist, log=None)
    assert "threads" not in pinned.summary and torch.get_num_threads() == 2  # restored after the run
