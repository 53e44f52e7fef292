"""CPU threads that suit a shared machine: the trainer times its own steps with a few thread counts, keeps the
fastest, and looks again when the speed drops or after a while, because the load of a laptop changes.

Why: PyTorch's OpenMP threads wait for each other in every parallel region. When another busy process takes one
of the cores, a descheduled thread stalls all the others: a 2-thread step on 2 cores became 12x slower than idle
while 1 thread kept 60 % (BENCHMARKS.md, "Training under load"). Thread counts change the order of some sums
(rounding), so ``--num-threads N`` pins them for bit-exact runs; the tuner runs only when that is unset.
"""

from __future__ import annotations

import statistics

import torch


class ThreadTuner:
    """Call :meth:`step_done` after every training step with its images and seconds (a CPU step is synchronous).

    A probe times ``probe`` steps with each candidate count (``max_threads``, half of it, 1; the run's first
    ``warmup`` steps and the first step after a switch are not timed) and keeps the fastest. A new probe starts
    when the chosen count runs ``slowdown`` times slower than when it was chosen, or after ``every`` steps; the
    interval doubles (up to 8x) while probes keep confirming the same count, so an idle machine pays for few.
    """

    def __init__(self, max_threads: int, *, probe: int = 4, every: int = 200, slowdown: float = 0.7,
                 warmup: int = 5):
        self.candidates = sorted({max_threads, max(1, max_threads // 2), 1}, reverse=True)
        self.probe, self.base_every, self.slowdown = probe, every, slowdown
        self.every = every
        self.chosen = max_threads
        self.history: list[dict[int, float]] = []  # images/s per count, one dict per probe
        self._queue: list[int] = list(self.candidates)  # probe once the first steps (kernel set-up) are done
        self._skip = warmup  # steps not to time: the run's first ones, and the first after each switch
        self._times: list[float] = []  # images/s of the probe's steps so far
        self._rates: dict[int, float] = {}
        self._chosen_rate = 0.0
        self._recent: list[float] = []
        self._since_probe = 0

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    def step_done(self, images: int, seconds: float) -> None:
        if not self.active:
            return
        if self._queue:
            self._probe_step(images, seconds)
        else:
            self._watch(images / max(seconds, 1e-9))

    def _probe_step(self, images: int, seconds: float) -> None:
        if torch.get_num_threads() != self._queue[0]:
            torch.set_num_threads(self._queue[0])  # this step ran with the previous count,
            self._skip = 1  # and the next sets up the new thread pool: neither is timed
            return
        if self._skip:
            self._skip -= 1
            return
        self._times.append(images / max(seconds, 1e-9))
        if len(self._times) < self.probe:
            return
        self._rates[self._queue.pop(0)] = statistics.median(self._times)
        self._times = []
        if not self._queue:
            self._choose()

    def _choose(self) -> None:
        self.history.append(self._rates)
        best = max(self._rates, key=self._rates.get)
        self.every = min(self.every * 2, 8 * self.base_every) if best == self.chosen else self.base_every
        self.chosen, self._chosen_rate = best, self._rates[best]
        torch.set_num_threads(best)
        self._rates, self._recent, self._since_probe = {}, [], 0

    def _watch(self, rate: float) -> None:
        self._since_probe += 1
        self._recent = (self._recent + [rate])[-self.probe:]
        slow = len(self._recent) == self.probe and statistics.median(self._recent) < self.slowdown * self._chosen_rate
        if slow or self._since_probe >= self.every:
            self._queue = [self.chosen] + [c for c in self.candidates if c != self.chosen]
