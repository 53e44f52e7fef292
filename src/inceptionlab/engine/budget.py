"""A time budget (``--time-budget``): the run measures its own speed, plans the optimisation steps that fill the
budget (evaluations included), ends its learning-rate schedule exactly there, and revises the plan at sync points
when the machine's speed changes.

The plan is a step count (``planned_steps``) and the schedule's knots (engine.optim: the decay's progress per step,
piecewise linear), recorded in config.json (``budget_plan``). A resume follows the recorded plan exactly and never
revises it (the interruption broke the wall clock anyway), so it ends with the uninterrupted run's numbers.
``state`` is the trainer's ``RunState``; this module sits below the trainer and never imports it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from inceptionlab import runs
from inceptionlab.config import MIN_BUDGET_S, parse_duration
from inceptionlab.engine import distributed
from inceptionlab.engine.evaluate import evaluate_in_run
from inceptionlab.engine.optim import Knots, revise_knots
from inceptionlab.inputs import SHIFTS

MEASURE_AFTER = 5  # steps not timed: allocator, oneDNN primitive cache, CUDA graph capture make the first ones slow
MEASURE_STEPS = 20  # steps timed for the plan (the thread tuner, when it probes, probes among them)
MEASURE_SECONDS = 3.0  # or fewer steps, once they took this long: a short budget on a slow machine needs its plan
MIN_MEASURED = 2
HOLD_STEPS = 100  # how long the timing may wait for the CPU thread tuner's probe to end (engine.threads)
REVISE_OFF = 0.05  # a projected finish this far from the budget (either way) revises the plan at once
SMALL_OFF = 0.025  # this far, over a full window and since the plan (docs/training.md)
GUARD_OFF = 0.15  # this far over: revise even near the end, bringing the schedule down over the next sync interval
FINAL_S = 0.5  # after the last epoch end, before the summary: the last curves.png and the writes still queued
WINDOW = 4  # sync intervals over which the current speed is measured
MIN_STEPS_LEFT = 10  # a plan ends at least this many steps on: the schedule comes down over them, never cut off

def format_duration(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"


@dataclass
class Plan:
    """The step count that fills the budget, and how it was reached (recorded in config.json)."""

    budget_s: float
    measured_s_per_step: float
    eval_s: float  # one epoch end: evaluation and checkpoint
    planned_steps: int
    steps_per_epoch: int
    planned_at_step: int
    measured_steps: list[int]  # [first, last] step timed
    knots: list[list[float]]  # engine.optim's knots of the whole run, revisions included
    revisions: list[dict] = field(default_factory=list)
    final_eval_s: float = 0.0  # the closing evaluation's views beyond the first (shift_tta)

    def to_dict(self) -> dict:
        """config.json's ``budget_plan``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        return cls(**data)

    @property
    def epochs(self) -> int:
        return -(-self.planned_steps // self.steps_per_epoch)


def plan_steps(available_s: float, s_per_step: float, eval_s: float, step: int, epoch: int, steps_per_epoch: int,
               min_steps: int) -> int:
    """The most steps whose rest (from ``step``, in epoch ``epoch``) and epoch ends fit in ``available_s``; at
    least ``step + min_steps`` (a schedule is brought down over those, never cut off)."""

    def cost(total: int) -> float:
        return (total - step) * s_per_step + (-(-total // steps_per_epoch) - epoch) * eval_s

    low, high = step + min_steps, step + max(min_steps, int(available_s / max(s_per_step, 1e-9)))
    if cost(low) > available_s:
        return low
    while low < high:  # the cost grows with the total: bisect for the last total that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= available_s else (low, mid - 1)
    return low


class BudgetTracker:
    """Times the run's steps through ``clock(step) -> elapsed seconds of the run``, makes the plan after
    :data:`MEASURE_STEPS` timed steps and revises it at sync points. ``agree(values) -> values``: the largest of
    each value across torchrun's ranks (identity in one process), so every rank makes the same plan."""

    def __init__(self, budget_s: float, steps_per_epoch: int, sync_every: int, knots: Knots, *, start_step: int,
                 clock: Callable[[int], float], eval_probe: Callable[[], float],
                 agree: Callable[[list[float]], list[float]], plan: Plan | None = None,
                 hold: Callable[[], bool] = lambda: False, final_views: int = 1):
        self.budget_s, self.steps_per_epoch, self.sync_every, self.knots = budget_s, steps_per_epoch, sync_every, knots
        self.clock, self.eval_probe, self.agree, self.plan, self.hold = clock, eval_probe, agree, plan, hold
        self.final_views = final_views  # the closing evaluation costs this many epoch-end evaluations
        self.hold_until = start_step + HOLD_STEPS
        self.frozen = plan is not None  # resumed after the plan: follow it exactly
        self.measure_from = start_step + MEASURE_AFTER
        self.measure_to = self.measure_from + MEASURE_STEPS
        self.paused = 0.0  # seconds of epoch ends, which the speed of the steps must leave out
        self.epoch_ends: list[float] = []
        self.marks: list[tuple[int, float]] = []  # (step, step seconds so far) at the recent sync points
        self.regime: tuple[int, float] = (0, 0.0)  # the same at the plan or its last revision
        self.last_reason = ""

    def train_seconds(self, step: int) -> float:
        return self.clock(step) - self.paused

    def step_done(self, step: int, epoch: int) -> bool:
        """After ``step`` steps: start timing, or make the plan (True when made)."""
        if self.plan is not None or not self.measure_from <= step <= self.measure_to:
            return False
        if step < self.hold_until and self.hold():  # time the steps after the probe, with the count it chose
            self.measure_from, self.measure_to = step + 2, step + 2 + MEASURE_STEPS
            return False
        if step == self.measure_from:
            self.marks = [(step, self.train_seconds(step))]
            return False
        seconds, timed = self.train_seconds(step) - self.marks[0][1], step - self.measure_from
        enough = step == self.measure_to or (seconds >= MEASURE_SECONDS and timed >= MIN_MEASURED)
        if not self.agree([float(enough)])[0]:  # under torchrun: the first rank with enough decides for all
            return False
        s_per_step, eval_s, elapsed = self.agree([seconds / timed, self.eval_probe(), self.clock(step)])
        final_s = (self.final_views - 1) * eval_s
        total = plan_steps(self.budget_s - elapsed - FINAL_S - final_s, s_per_step, eval_s, step, epoch,
                           self.steps_per_epoch, MIN_STEPS_LEFT)
        self.knots = revise_knots(self.knots, step, total)
        self.plan = Plan(self.budget_s, s_per_step, eval_s, total, self.steps_per_epoch, step,
                         [self.measure_from + 1, step], [list(k) for k in self.knots], final_eval_s=final_s)
        self.marks = [(step, self.train_seconds(step))]
        self.regime = self.marks[0]
        return True

    def epoch_end_cost(self, seconds: float) -> None:
        self.paused += seconds
        self.epoch_ends.append(seconds)

    def eval_s(self) -> float:
        """An epoch end's seconds: the latest measured, else the plan's estimate."""
        return self.epoch_ends[-1] if self.epoch_ends else self.plan.eval_s

    def at_sync(self, step: int, epoch: int) -> bool:
        """At a sync point after ``step`` steps: revise the plan when the projected finish misses the budget by more
        than :data:`REVISE_OFF` at the last window's speed, or by more than :data:`SMALL_OFF` both at the last full
        window's speed and at the speed since the plan or its last revision (True when revised). Every rank
        calls it at the same steps."""
        if self.plan is None or self.frozen:
            return False
        self.marks = [*self.marks, (step, self.train_seconds(step))][-(WINDOW + 1):]
        (s0, t0), (s1, t1), (r0, rt0) = self.marks[0], self.marks[-1], self.regime
        if s1 == s0:
            return False
        rate, steady, elapsed, eval_s = self.agree([(t1 - t0) / (s1 - s0), (t1 - rt0) / (s1 - r0), self.clock(step),
                                                    self.eval_s()])
        off, steady_off = (self._projected_off(r, step, epoch, elapsed, eval_s) for r in (rate, steady))
        near_end = self.plan.planned_steps - step < 2 * self.sync_every  # too late for a small miss; the guard acts
        if abs(off) > REVISE_OFF and not (near_end and off <= GUARD_OFF):
            return self._revise(step, epoch, elapsed, eval_s, rate, off, f"over the last {s1 - s0} steps")
        # a small miss must hold over the last full window and over at least two since the plan or its revision: a
        # drifting box's windows alternate around its speed (docs/training.md)
        small = (len(self.marks) > WINDOW and s1 - r0 >= 2 * WINDOW * self.sync_every and not near_end
                 and min(abs(off), abs(steady_off)) > SMALL_OFF)
        return small and self._revise(step, epoch, elapsed, eval_s, steady, steady_off, f"since step {r0:,}")

    def _projected_off(self, rate: float, step: int, epoch: int, elapsed: float, eval_s: float) -> float:
        """How far from the budget the plan would end at ``rate`` seconds a step (a fraction, + late)."""
        planned = self.plan.planned_steps
        ends = -(-planned // self.steps_per_epoch) - epoch
        finish = elapsed + (planned - step) * rate + ends * eval_s + FINAL_S + self.plan.final_eval_s
        return finish / self.budget_s - 1

    def _revise(self, step: int, epoch: int, elapsed: float, eval_s: float, rate: float, off: float,
                over: str) -> bool:
        """Plan again from ``step`` at ``rate`` (True when the plan changed); a late plan only ever gets shorter
        (past the budget the least it can add is MIN_STEPS_LEFT each time)."""
        planned = self.plan.planned_steps
        total = plan_steps(self.budget_s - elapsed - FINAL_S - self.plan.final_eval_s, rate, eval_s, step, epoch,
                           self.steps_per_epoch, MIN_STEPS_LEFT)
        total = min(total, planned) if off > 0 else total
        if total == planned:
            return False
        self.knots = revise_knots(self.knots, step, total)
        self.plan.knots = [list(k) for k in self.knots]
        self.plan.planned_steps = total
        self.plan.revisions.append({"at_step": step, "elapsed_s": round(elapsed, 3), "s_per_step": rate,
                                    "planned_steps": total, "projected_off": round(off, 4)})
        self.last_reason = (f"{rate:.3f} s/step {over}, the plan would end "
                            f"{abs(off):.0%} {'after' if off > 0 else 'before'} the budget")
        self.marks = self.marks[-1:]
        self.regime = self.marks[0]  # both speeds are measured from here
        return True


@contextlib.contextmanager
def epoch_end(tracker: BudgetTracker | None, step: int):
    """Times an epoch end (evaluation, checkpoint) for the tracker: the speed of the steps leaves it out."""
    if tracker is None:
        yield
        return
    started = tracker.clock(step)
    yield
    tracker.epoch_end_cost(tracker.clock(step) - started)


def all_agree(state) -> Callable[[list[float]], list[float]]:
    if not state.dist.enabled:
        return lambda values: values
    return lambda values: distributed.all_reduce_max(values, state.device)


def tuner_probing(state) -> Callable[[], bool]:
    """One process only: under torchrun each rank's tuner may probe at other steps, and the ranks must time the
    same steps."""
    if state.dist.enabled or state.tuner is None:
        return lambda: False
    return lambda: state.tuner.probing


def make_clocks(state) -> tuple[Callable[[int], float], Callable[[], float]]:
    """The run's clock (its elapsed seconds once the device has done its queued work: an honest wall time) and the
    estimate of an epoch end's seconds. Tests replace this function with a fake clock."""

    def clock(_step: int) -> float:
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        elif state.device.type == "mps":
            torch.mps.synchronize()
        return state.elapsed()

    return clock, lambda: probe_eval(state)


def probe_eval(state) -> float:
    """An epoch end's seconds: a timed evaluation of one batch of test images (after 64 untimed images, which warm
    the evaluation's kernels), scaled to the test and validation images it evaluates."""
    warm = min(64, state.config.eval_batch_size)
    evaluate_in_run(state, state.test_images[:warm], state.test_labels[:warm])
    n = min(len(state.test_labels), state.config.eval_batch_size)
    start = time.perf_counter()
    evaluate_in_run(state, state.test_images[:n], state.test_labels[:n])  # reads its result: synced
    images = len(state.test_labels) + (0 if state.val_labels is None else len(state.val_labels))
    return (time.perf_counter() - start) * images / n


def start(state) -> BudgetTracker | None:
    """The run's tracker (None without a budget), following config.json's plan when the run has one."""
    config, spe = state.config, state.steps_per_epoch
    if config.time_budget is None:
        return None
    done = state.start_epoch * spe + (state.partial["step"] if state.partial else 0)
    plan = Plan.from_dict(config.budget_plan) if config.budget_plan else None
    clock, probe = make_clocks(state)
    tracker = BudgetTracker(config.time_budget, spe, config.sync_every, state.knots, start_step=done, clock=clock,
                            eval_probe=probe, agree=all_agree(state), plan=plan, hold=tuner_probing(state),
                            final_views=len(SHIFTS) if config.shift_tta else 1)
    if plan is not None:
        state.total_steps, state.knots = plan.planned_steps, [tuple(k) for k in plan.knots]
    else:  # a provisional length that reaches the plan's step; only warm-up usually runs before it
        state.total_steps = max(state.total_steps, tracker.measure_to + 1)
        state.config = config.replace(epochs=max(config.epochs, -(-state.total_steps // spe)))
    return tracker


def follow(state, tracker: BudgetTracker) -> None:
    """The run takes the tracker's new plan: its length, schedule and epochs, recorded in config.json and logged."""
    plan = tracker.plan
    state.total_steps, state.knots = plan.planned_steps, tracker.knots
    state.config = state.config.replace(epochs=plan.epochs, budget_plan=plan.to_dict())
    if state.is_main and state.run_dir is not None:
        runs.write_config(state.run_dir, state.config.to_dict())
    state.say(revision_line(plan, tracker.last_reason) if tracker.last_reason else plan_line(plan))


def plan_line(plan: Plan) -> str:
    first, last = plan.measured_steps
    return (f"plan: {plan.measured_s_per_step:.3f} s/step measured over steps {first}-{last} -> "
            f"{plan.planned_steps:,} steps ({plan.planned_steps / plan.steps_per_epoch:.1f} epochs) to end at "
            f"{format_duration(plan.budget_s)} (evaluation {plan.eval_s:.1f} s x {plan.epochs}"
            f"{f', final views {plan.final_eval_s:.1f} s' if plan.final_eval_s else ''})")


def revision_line(plan: Plan, reason: str) -> str:
    r = plan.revisions[-1]
    return (f"plan revised at step {r['at_step']:,} ({r['elapsed_s']:.0f} s elapsed): {reason} -> "
            f"{plan.planned_steps:,} steps ({plan.planned_steps / plan.steps_per_epoch:.1f} epochs)")


def summary_fields(state) -> dict:
    """summary.json's record of the budget: what was planned, what ran, how far the elapsed time is from it."""
    config = state.config
    if config.time_budget is None:
        return {}
    plan = config.budget_plan or {}
    return {"budget_s": config.time_budget, "planned_steps": plan.get("planned_steps"),
            "budget_revisions": len(plan.get("revisions", [])),
            "budget_error": state.elapsed() / config.time_budget - 1}


__all__ = ["MIN_BUDGET_S", "BudgetTracker", "Plan", "parse_duration", "plan_steps", "start", "follow"]
