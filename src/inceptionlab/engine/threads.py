"""CPU threads that suit a shared machine: while the run's threads get the cores they ask for, nothing changes;
when another process takes a share of them, the trainer times its own steps with fewer threads and keeps the
fastest count, and looks again now and then, because the load of a laptop comes and goes.

Why: PyTorch's OpenMP threads wait for each other in every parallel region. When another busy process takes one
of the cores, a descheduled thread stalls all the others: a 2-thread step on 2 cores became 4-12x slower than
idle while 1 thread kept 60 % (BENCHMARKS.md, "Training under load"). The signal is the process's CPU time per
wall second per thread: ~1.0 on an idle machine, ~0.65 with one competing process (measured there). Thread counts
change the order of some sums (rounding), so ``--num-threads N`` pins them for bit-exact reruns; the tuner runs
only when that is unset.
"""

from __future__ import annotations

import statistics
import time

import torch

CONTENDED = 0.85  # CPU time per wall second per thread below this: another process is taking our cores
SWITCH_GAIN = 1.1  # another count must be this much faster than the chosen one: a blip must not move it


class ThreadTuner:
    """Call :meth:`step_done` after every training step with its images and seconds (a CPU step is synchronous).

    After ``warmup`` steps (kernel set-up), every ``window`` steps it compares the CPU time the process got with
    what its threads could use. Short of it (:data:`CONTENDED`) with all threads, it probes: ``window`` timed steps
    with each candidate count (``max_threads``, half of it, 1; the first step after a switch is not timed), and
    moves to the fastest only when it beats the chosen count by :data:`SWITCH_GAIN` (the chosen count is timed
    again in the probe, not taken from the window that raised the alarm, which a passing blip may have slowed).
    After a probe it waits ``every`` steps before the next, an interval that doubles (up to 8x) while probes keep
    confirming the count; with fewer threads than ``max_threads`` it probes again when that interval ends.
    """

    def __init__(self, max_threads: int, *, window: int = 3, every: int = 200, warmup: int = 2,
                 wall_clock=time.perf_counter, cpu_clock=time.process_time):
        self.candidates = sorted({max_threads, max(1, max_threads // 2), 1}, reverse=True)
        self.max_threads, self.window, self.base_every, self.every = max_threads, window, every, every
        self.chosen = max_threads
        self.history: list[dict[int, float]] = []  # images/s per count, one dict per probe
        self.utilisation: list[float] = []  # CPU time per wall second per thread, one value per window watched
        self._wall, self._cpu = wall_clock, cpu_clock
        self._skip = warmup  # steps not to time: the run's first ones, and the first after each switch
        self._queue: list[int] = []
        self._rates: dict[int, float] = {}
        self._times: list[float] = []  # images/s of the probe's steps so far
        self._mark: tuple[float, float] | None = None
        self._since_probe = 0

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    @property
    def probing(self) -> bool:
        """Timing thread counts: the steps run with other counts than the chosen one."""
        return bool(self._queue)

    def step_done(self, images: int, seconds: float) -> None:
        if not self.active:
            return
        if self._skip:
            self._skip -= 1
            self._mark = None
        elif self._queue:
            self._probe_step(images, seconds)
        else:
            self._watch(images / max(seconds, 1e-9))

    def _watch(self, rate: float) -> None:
        now = (self._wall(), self._cpu())
        if self._mark is None:
            self._mark, self._times = now, []
            return
        self._times.append(rate)
        self._since_probe += 1
        if self.chosen < self.max_threads:
            if self._since_probe >= self.every:
                self._start_probe()
            return
        if len(self._times) >= self.window:
            wall, cpu = now[0] - self._mark[0], now[1] - self._mark[1]
            self.utilisation.append(cpu / max(wall * self.chosen, 1e-9))
            self._mark = now
            waited = not self.history or self._since_probe >= self.every
            if self.utilisation[-1] < CONTENDED and waited:
                self._start_probe()
            self._times = []

    def _start_probe(self) -> None:
        self._rates, self._times = {}, []
        self._queue = [self.chosen, *(c for c in self.candidates if c != self.chosen)]

    def _probe_step(self, images: int, seconds: float) -> None:
        if torch.get_num_threads() != self._queue[0]:
            torch.set_num_threads(self._queue[0])  # this step ran with the previous count,
            self._skip = 1  # and the next sets up the new thread pool: neither is timed
            return
        self._times.append(images / max(seconds, 1e-9))
        if len(self._times) < self.window:
            return
        self._rates[self._queue.pop(0)] = statistics.median(self._times)
        self._times = []
        if not self._queue:
            self._choose()

    def _choose(self) -> None:
        self.history.append(self._rates)
        best = max(self._rates, key=self._rates.get)
        if self._rates[best] < SWITCH_GAIN * self._rates[self.chosen]:
            best = self.chosen
        self.every = min(self.every * 2, 8 * self.base_every) if best == self.chosen else self.base_every
        self.chosen = best
        torch.set_num_threads(best)
        self._mark, self._since_probe = None, 0
