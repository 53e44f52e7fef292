"""The chapter's exercises, answered by running them: compare architectures, sweep the input size.

Both are grids of ordinary training runs: every cell is :func:`inceptionlab.engine.trainer.train` on a
:class:`~inceptionlab.config.TrainConfig` that differs from the shared base config in one value (the model, or
the image size), repeated over seeds. There is no second training loop. An experiment directory holds

    runs/<model-or-size>-seed<k>/   the individual run directories (the usual layout, see :mod:`inceptionlab.runs`)
    results.json                    every number below, per run and aggregated, plus the base config
    table.md                        parameters, FLOPs, final test accuracy mean ± std over seeds, wall time
    curves.png                      mean test accuracy per epoch of every row (band: ± one std over seeds), and
                                    with a validation split its mean validation accuracy (dashed)
    accuracy.png                    (sweep only) final test accuracy against the input size
    .lock                           held by the experiment running in the directory (as in a run directory)

A later experiment into the same directory keeps the earlier rows (a row it trains again is replaced), unless told
to ``replace`` them; it refuses rows trained under another budget. A table left saying "running" by a killed
experiment is rewritten as "interrupted" when the next one opens the directory.

"Test accuracy" is the FINAL epoch's, not the best epoch's: picking the best epoch on the test set would report
a number tuned on the test set. With ``config.val_split`` (``--val-split N``) every run also holds out the same N
training images, and the table ranks the rows by their final validation accuracy (mean over seeds); the test
accuracy is reported beside it and chooses nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from inceptionlab import analysis, runs
from inceptionlab import data as data_module
from inceptionlab.argcheck import FLAG, FUNCTION, NAME, PATH, check, optional, sequence, whole
from inceptionlab.config import RESUMABLE, TrainConfig, as_config
from inceptionlab.data.dataset import DATASET
from inceptionlab.devices import resolve_device
from inceptionlab.engine.cuda import resolve_cuda_options
from inceptionlab.engine.step import resolve_step_mode
from inceptionlab.engine.trainer import TrainingDiverged, train
from inceptionlab.errors import ConfigError, InceptionLabError, InputSizeError, RunDirError
from inceptionlab.fileio import atomic_write_json, atomic_write_text
from inceptionlab.models import create_model
from inceptionlab.plots import finish_axes, new_figure, save_figure

RESULTS = "results.json"
TABLE = "table.md"
CURVES = "curves.png"
ACCURACY = "accuracy.png"


@dataclass
class Variant:
    """One row of an experiment: a label and the config its runs use (the seed is set per run)."""

    label: str
    config: TrainConfig


@dataclass
class RowResult:
    """The runs of one :class:`Variant` over all seeds, and their aggregate."""

    label: str
    model: str
    image_size: int
    params: int
    gflops: float  # forward GFLOP per image at image_size (multiply-add = 2 FLOP)
    seeds: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)  # final epoch, one per seed
    val_acc: list[float] = field(default_factory=list)  # final epoch on the held-out images (val_split), per seed
    best_test_acc: list[float] = field(default_factory=list)
    wall_seconds: list[float] = field(default_factory=list)  # training + per-epoch evaluation, per run
    images_per_sec: list[float] = field(default_factory=list)
    curves: list[list[float]] = field(default_factory=list)  # test accuracy per epoch, one list per seed
    val_curves: list[list[float]] = field(default_factory=list)  # validation accuracy per epoch (val_split), per seed
    run_dirs: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # a time budget: the steps each run planned and trained, per seed
    diverged: list[dict] = field(default_factory=list)  # seeds whose loss became NaN/inf: {seed, run_dir, error}

    @property
    def test_acc_mean(self) -> float:
        return mean(self.test_acc)

    @property
    def test_acc_std(self) -> float | None:
        return std(self.test_acc)

    @property
    def val_acc_mean(self) -> float:
        return mean(self.val_acc)

    # the epochs all seeds have (under a time budget each seed's run plans its own number of epochs)
    def curve_mean(self) -> list[float]:
        return [mean(epoch) for epoch in zip(*self.curves, strict=False)] if self.curves else []

    def val_curve_mean(self) -> list[float]:
        return [mean(epoch) for epoch in zip(*self.val_curves, strict=False)] if self.val_curves else []

    def curve_std(self) -> list[float | None]:
        return [std(epoch) for epoch in zip(*self.curves, strict=False)] if self.curves else []

    def to_dict(self) -> dict:
        d = {
            **asdict(self),
            # None, not NaN, where every seed diverged (JSON has no NaN)
            "test_acc_mean": self.test_acc_mean if self.test_acc else None, "test_acc_std": self.test_acc_std,
            "wall_seconds_mean": mean(self.wall_seconds) if self.wall_seconds else None,
            "curve_mean": self.curve_mean(), "curve_std": self.curve_std(),
        }
        if not self.steps:  # only a time budget's rows say their steps
            del d["steps"]
        if not self.val_acc:  # the results of runs without a validation split keep their keys
            del d["val_acc"], d["val_curves"]
        else:
            d.update(val_acc_mean=self.val_acc_mean, val_acc_std=std(self.val_acc),
                     val_curve_mean=self.val_curve_mean())
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RowResult:
        """Inverse of :meth:`to_dict` (the aggregates are recomputed, not read)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class ExperimentResult:
    kind: str  # "compare" or "sweep"
    out_dir: Path
    status: str  # "running" (outputs written between runs), "completed" or "interrupted" (SIGINT/SIGTERM)
    rows: list[RowResult]
    base_config: TrainConfig
    seeds: list[int]
    device: str
    total_seconds: float
    exit_code: int = 0

    def to_dict(self) -> dict:
        d = {
            "kind": self.kind, "status": self.status, "out_dir": str(self.out_dir), "device": self.device,
            "host": _host(), "torch": torch.__version__, "seeds": self.seeds, "total_seconds": self.total_seconds,
            "base_config": self.base_config.to_dict(), "rows": [r.to_dict() for r in self.rows],
        }
        order = ranked(self.rows)
        if order is not None:
            d.update(ranked_by="val_acc_mean", ranking=[r.label for r in order])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], out_dir: Path) -> ExperimentResult:
        """Inverse of :meth:`to_dict`, for the experiment directory ``out_dir`` (it may have moved)."""
        return cls(d["kind"], out_dir, d["status"], [RowResult.from_dict(r) for r in d["rows"]],
                   TrainConfig.from_dict(d["base_config"]), list(d["seeds"]), d["device"], float(d["total_seconds"]))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); ``None`` for a single value, where it is undefined."""
    if len(values) < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def format_acc(row: RowResult) -> str:
    return format_mean_std(row.test_acc)


def format_mean_std(values: Sequence[float]) -> str:
    s = std(values)
    return f"{mean(values):.4f} ± {'n/a' if s is None else f'{s:.4f}'}"


def ranked(rows: Sequence[RowResult]) -> list[RowResult] | None:
    """The rows by mean final validation accuracy over seeds, best first (rows without one, e.g. diverged, last);
    None when no run held out a validation set, so that nothing is ever chosen on the test set."""
    if not any(r.val_acc for r in rows):
        return None
    return sorted(rows, key=lambda r: -r.val_acc_mean if r.val_acc else math.inf)


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} ({cpu}, {os.cpu_count()} CPUs)"


# --------------------------------------------------------------------------------------------- the grid


def experiment_dir(root: str | os.PathLike, kind: str) -> Path:
    """A new ``<root>/<kind>-<YYYYmmdd-HHMMSS>/`` (``-2``... on a clash)."""
    return runs.create_unique_dir(root, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in label)


def run_variants(
    kind: str,
    variants: Sequence[Variant],
    *,
    seeds: int = 1,
    out_dir: str | os.PathLike | None = None,
    data: data_module.ImageDataset | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = print,
    replace: bool = False,
) -> ExperimentResult:
    """Train every variant once per seed (``config.seed``, ``config.seed + 1``, ...) and write the outputs.

    All configs are validated (and their input sizes checked) before the first run starts, so a bad row fails in
    seconds, not after an hour. The data is loaded once and shared by every run (your own images, ``--data``: each run
    reads them from the decoded cache at its own image size). Outputs are rewritten after each run, so an
    interrupted experiment still leaves a table of what finished. The rows an earlier experiment left in ``out_dir``
    are kept (those trained again are replaced) unless ``replace``.
    """
    check(seeds=(seeds, whole(1)), out_dir=(out_dir, optional(PATH)), data=(data, optional(DATASET)),
          progress=(progress, optional(FLAG)), log=(log, optional(FUNCTION)), replace=(replace, FLAG))
    check_variants(variants, seeds)
    base = variants[0].config
    say = log or (lambda _line: None)
    out = Path(out_dir) if out_dir is not None else experiment_dir(base.out, kind)
    lock = runs.lock_run_dir(out)  # makes `out`; one experiment at a time, so a "running" table without it is dead
    try:
        result = ExperimentResult(kind, out, "running", [], base, [base.seed + i for i in range(seeds)],
                                  str(resolve_device(base.device)), 0.0)
        keep_earlier_rows(result, replace, say)
        write_outputs(result)  # "running" from the start; with `replace`, the earlier rows are gone at once
        if data is None and all(v.config.data is None for v in variants):
            data = data_module.load_data(data_module.DataSpec(data_dir=base.data_dir), progress=bool(progress),
                                         log=log)
        run_grid(result, variants, data, progress, log)
    finally:
        lock.release()
    say(f"{kind}: {result.status}; {out / TABLE}")
    return result


# options that do not change what a row computes: rows trained with other values of these may share a table
SAME_BUDGET_ANYWAY = {"preset", "out", *RESUMABLE} - {"epochs"}


class _Terminated(Exception):
    """SIGTERM outside the trainer's epochs (which handle it themselves)."""


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`_Terminated` instead of ending the process, so that the table can say so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_grid(result: ExperimentResult, variants: Sequence[Variant], data, progress, log) -> None:
    """Every variant once per seed, the outputs rewritten after each run. A signal between the trainer's epochs
    (SIGINT, SIGTERM) ends the experiment as "interrupted" as one during them does."""
    seeds, before, started = len(result.seeds), result.total_seconds, time.perf_counter()
    try:
        with _sigterm_raises():
            for i, variant in enumerate(variants):
                channels = data.channels if data is not None else variant.config.in_channels
                cost = analysis.model_cost(variant.config.model, variant.config.image_size, channels)
                row = RowResult(variant.label, variant.config.model, variant.config.image_size, cost.params,
                                cost.gflops_at_size or math.nan)
                for j in range(seeds):
                    counter = f"[{result.kind} {i * seeds + j + 1}/{len(variants) * seeds}]"
                    config = variant.config.replace(seed=variant.config.seed + j)
                    run_one(result, row, config, counter, data, progress, log)
                    place_row(result, row)
                    result.total_seconds = before + time.perf_counter() - started
                    if result.status != "running":
                        break
                    write_outputs(result)
                if result.status != "running":
                    break
    except (KeyboardInterrupt, _Terminated) as exc:
        signum = exc.args[0] if isinstance(exc, _Terminated) else signal.SIGINT
        result.status, result.exit_code = "interrupted", 128 + signum
    if result.status == "running":
        result.status = "completed"
    result.total_seconds = before + time.perf_counter() - started
    write_outputs(result)


def place_row(result: ExperimentResult, row: RowResult) -> None:
    """Put ``row`` into the table once it has a result: in place of an earlier row of its label once all its seeds
    ran (an interrupted rerun does not cost the earlier row), else at the end; a sweep stays in size order."""
    runs_done = len(row.test_acc) + len(row.diverged)
    if any(r is row for r in result.rows) or not runs_done:
        return
    labels = [r.label for r in result.rows]
    if row.label not in labels:
        result.rows.append(row)
    elif runs_done == len(result.seeds):
        result.rows[labels.index(row.label)] = row
    if result.kind == "sweep":
        result.rows.sort(key=lambda r: r.image_size)


def keep_earlier_rows(result: ExperimentResult, replace: bool, say: Callable[[str], None]) -> None:
    """The rows an earlier experiment left in the (locked) directory, kept unless ``replace``; its table is first
    rewritten as "interrupted" if it still says "running" (its process was killed). Another budget is refused."""
    if replace:
        return
    earlier = read_experiment(result.out_dir)
    if earlier is None:
        return
    if earlier.status == "running":
        earlier.status = "interrupted"
        write_outputs(earlier)
        say(f"{result.out_dir}: the {earlier.kind} that wrote it was stopped; its table now says interrupted")
    change = budget_change(earlier, result)
    if change:
        raise ConfigError(f"{result.out_dir / RESULTS} holds rows trained under another budget ({change}); pass "
                          "--replace (replace=True) to drop them, or another --out-dir")
    result.rows, result.total_seconds = earlier.rows, earlier.total_seconds


def read_experiment(out_dir: Path) -> ExperimentResult | None:
    """The results.json an earlier experiment wrote into ``out_dir``, or None; a damaged one names the file."""
    path = out_dir / RESULTS
    if not path.exists():
        return None
    try:
        return ExperimentResult.from_dict(json.loads(path.read_text()), out_dir)
    except (OSError, ValueError, TypeError, KeyError, InceptionLabError) as exc:
        raise RunDirError(f"{path} cannot be read back ({type(exc).__name__}: {exc}); pass --replace "
                          "(replace=True) to start a new table there, or another --out-dir") from None


def budget_change(earlier: ExperimentResult, result: ExperimentResult) -> str | None:
    """How ``earlier``'s rows were trained differently from ``result``'s, in words; None when they may share a
    table (only the row's own value, the model or the image size, and options in SAME_BUDGET_ANYWAY differ)."""
    if earlier.kind != result.kind:
        return f"a {earlier.kind} there, a {result.kind} here"
    if earlier.seeds != result.seeds or earlier.device != result.device:
        return f"seeds {earlier.seeds} on {earlier.device} there, {result.seeds} on {result.device} here"
    varied = "model" if result.kind == "compare" else "image_size"
    old, new = earlier.base_config.to_dict(), result.base_config.to_dict()
    differ = [k for k in new if k not in SAME_BUDGET_ANYWAY and k != varied and old.get(k) != new[k]]
    return ", ".join(f"{k} {old.get(k)!r} there, {new[k]!r} here" for k in differ[:3]) or None


def check_variants(variants: Sequence[Variant], seeds: int) -> None:
    """Every row valid, every input size possible, no duplicate labels: before the first run starts."""
    if not variants:
        raise ConfigError("an experiment needs at least one row")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds must be a positive whole number, got {seeds!r}")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"duplicate rows: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))}")
    for v in variants:
        v.config.validate()
        analysis.check_input_size(v.config.model, v.config.image_size, v.config.in_channels)
        if v.config.branch_streams:  # refused for some models on CUDA: say so before the first run, not mid-way
            device = resolve_device(v.config.device)
            resolve_cuda_options(v.config, device, resolve_step_mode(v.config, device), create_model(v.config.model))


def run_one(result: ExperimentResult, row: RowResult, config: TrainConfig, counter: str, data, progress, log) -> None:
    """One training run of a row; its numbers go into ``row`` (a divergence is a result, not a crash)."""
    say = log or (lambda _line: None)
    run_dir = result.out_dir / "runs" / f"{_slug(row.label)}-seed{config.seed}"
    say(f"{counter} {row.label}, seed {config.seed} -> {run_dir}")
    try:
        run = train(config, data=data, run_dir=run_dir, progress=progress, log=log)
    except TrainingDiverged as exc:
        say(f"[{result.kind}] {row.label}, seed {config.seed}: diverged ({exc})")
        row.diverged.append({"seed": config.seed, "run_dir": str(run_dir), "error": str(exc)})
        return
    if run.status != "completed":
        result.status, result.exit_code = run.status, run.exit_code
        return
    row.seeds.append(config.seed)
    row.test_acc.append(run.summary["test_acc"])
    if "val_acc" in run.summary:
        row.val_acc.append(run.summary["val_acc"])
        row.val_curves.append([m["val_acc"] for m in run.metrics])
    row.best_test_acc.append(run.summary["best_test_acc"])
    row.wall_seconds.append(run.summary["elapsed_seconds"])
    row.images_per_sec.append(run.summary["images_per_sec"])
    row.curves.append([m["test_acc"] for m in run.metrics])
    row.run_dirs.append(str(run_dir))
    if config.time_budget is not None:
        row.steps.append(run.summary["steps"])


# --------------------------------------------------------------------------------------------- the exercises


def compare(models: Sequence[str], config: TrainConfig | Mapping[str, Any], *, seeds: int = 1,
            out_dir: str | os.PathLike | None = None, data: data_module.ImageDataset | None = None,
            progress: bool | None = None, log: Callable[[str], None] | None = print,
            replace: bool = False) -> ExperimentResult:
    """Train each of ``models`` with the same ``config`` (same budget, schedule, image size) over ``seeds`` seeds.
    ``out_dir``'s earlier rows are kept (a model trained again replaces its row) unless ``replace``."""
    check(models=(models, sequence(NAME, "a non-empty list of model names")))
    variants = [Variant(m, as_config(config).with_model(m)) for m in models]
    return run_variants("compare", variants, seeds=seeds, out_dir=out_dir, data=data, progress=progress, log=log,
                        replace=replace)


def check_sweep_sizes(model: str, sizes: Sequence[int], in_channels: int = 1) -> None:
    """Refuse, up front and all at once, the sizes ``model`` cannot take, naming its minimum (and maximum)."""
    sizes_rule = sequence(whole(1), "a non-empty list of image sizes (whole numbers >= 1)")
    check(model=(model, NAME), sizes=(sizes, sizes_rule), in_channels=(in_channels, whole(1)))
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"image sizes repeat: {', '.join(map(str, sizes))}")
    report = analysis.input_size_report(model, verify=False, in_channels=in_channels)
    refused = [s for s in sizes if not report.accepts(s)]
    if refused:
        limits = f"its minimum input size is {report.min_size}"
        if report.max_size is not None:
            limits += f" and its maximum {report.max_size}"
        reason = report.limit_reason if any(s < report.min_size for s in refused) else report.upper_reason
        raise InputSizeError(
            f"{model} cannot take image size{'s' if len(refused) > 1 else ''} {', '.join(map(str, refused))}: "
            f"{limits} ({reason}). See `inceptionlab min-size --model {model}`."
        )


def sweep(model: str, sizes: Sequence[int], config: TrainConfig | Mapping[str, Any], *, seeds: int = 1,
          out_dir: str | os.PathLike | None = None, data: data_module.ImageDataset | None = None,
          progress: bool | None = None, log: Callable[[str], None] | None = print,
          replace: bool = False) -> ExperimentResult:
    """Train ``model`` at each input side in ``sizes`` (else the same ``config``): accuracy against input size,
    the measured answer to "what is the minimum image size" next to ``min-size``'s arithmetic one. ``out_dir``'s
    earlier rows are kept (a size trained again replaces its row) unless ``replace``."""
    config = as_config(config)
    check_sweep_sizes(model, sizes, config.in_channels)
    variants = [Variant(f"{s}px", config.with_model(model).replace(image_size=s)) for s in sorted(sizes)]
    return run_variants("sweep", variants, seeds=seeds, out_dir=out_dir, data=data, progress=progress, log=log,
                        replace=replace)


# --------------------------------------------------------------------------------------------- outputs


def write_outputs(result: ExperimentResult) -> None:
    atomic_write_json(result.out_dir / RESULTS, result.to_dict())
    atomic_write_text(result.out_dir / TABLE, markdown_table(result))
    done = [r for r in result.rows if r.curves]
    if done:
        plot_curves(result.out_dir / CURVES, done, title=_title(result))
        if result.kind == "sweep":
            plot_accuracy_vs_size(result.out_dir / ACCURACY, done, title=_title(result))


def _title(result: ExperimentResult) -> str:
    c = result.base_config
    what = f"{c.model}" if result.kind == "sweep" else f"{c.image_size}px"
    return (f"{result.kind} ({what}): {_length(c)}, {c.optimizer} lr {c.lr:g} {c.schedule}, "
            f"{len(result.seeds)} seed(s), {result.device}")


def describe_budget(config: TrainConfig, seeds: Sequence[int], device: str) -> str:
    """One line saying what every row was trained with (the table is meaningless without it)."""
    train_n = f"first {config.limit_train:,}" if config.limit_train else "all"
    if config.val_split:
        rest = f"first {config.limit_train:,} of the rest" if config.limit_train else "the rest"
        train_n = f"{rest} ({config.val_split:,} held out for validation, --val-split)"
    test_n = f"first {config.limit_test:,}" if config.limit_test else "all"
    data = f"data {config.data} ({config.color}, {config.resize_mode}); " if config.data else ""
    extras = [f"label smoothing {config.label_smoothing:g}"] if config.label_smoothing else []
    if config.crop_padding or config.flip or config.erasing:
        extras.append(f"augmentation (crop pad {config.crop_padding}, flip {config.flip}, erasing {config.erasing:g})")
    return (
        f"preset {config.preset}; {_length(config)}, batch {config.batch_size}, {config.optimizer} lr "
        f"{config.lr:g} ({config.schedule}, warm-up {config.warmup_epochs:g}), weight decay {config.weight_decay:g}"
        f"{', ' + ', '.join(extras) if extras else ''}; {config.precision}; {data}training images: {train_n}, test "
        f"images: {test_n}; seeds {', '.join(map(str, seeds))}; device {device}"
    )


def _length(config: TrainConfig) -> str:
    """How long every row trained: a time budget (each row plans its own steps), a step count or epochs."""
    if config.time_budget is not None:
        return f"time budget {config.time_budget:g} s each (the steps each run planned are in the table)"
    return f"{config.steps:,} steps" if config.steps is not None else f"{config.epochs} epochs"


def markdown_table(result: ExperimentResult) -> str:
    """The experiment as a Markdown table, with the budget it was run under stated above it; ranked by validation
    accuracy when the runs held out a validation set (:func:`ranked`), else in the order the rows ran."""
    c = result.base_config
    first = "image size" if result.kind == "sweep" else "model"
    order = ranked(result.rows)
    val = ["val acc (mean ± std)"] if order is not None else []
    steps = ["steps per run"] if c.time_budget is not None else []
    lines = [
        f"# {result.kind}" + (f": {c.model}" if result.kind == "sweep" else f" at {c.image_size}x{c.image_size}"),
        "",
        describe_budget(c, result.seeds, result.device) + f". Status: {result.status}; "
        f"total wall time {datetime.timedelta(seconds=round(result.total_seconds))}.",
        "",
        _cells([first, "parameters", "GFLOP/image", *val, "test acc (mean ± std)", "best-epoch test acc", "seeds",
                *steps, "wall time per run (s)", "train images/s"]),
        _cells(["---"] + ["---:"] * (7 + len(val) + len(steps))),
    ]
    lines += [line for r in (order or result.rows)
              if (line := _table_line(result.kind, r, bool(val), bool(steps)))]
    lines += [
        "",
        "Test accuracy is the final epoch's on the test images used; std is the sample std over seeds (n/a for one "
        "seed). GFLOP: forward pass, multiply-add = 2 FLOP. Wall time: training plus the per-epoch evaluation.",
    ]
    if val:
        lines.append(f"Rows are ranked by validation accuracy: the final epoch's on the {c.val_split:,} training "
                     "images held out by --val-split (the same for every row and seed), mean over seeds. The test "
                     "accuracy is reported, not used to choose.")
    diverged = [(r, d) for r in result.rows for d in r.diverged]
    if diverged:
        runs_text = "; ".join(f"{r.label} seed {d['seed']}" for r, d in diverged)
        lines.append(f"Diverged (training loss NaN/inf; not in the mean): {runs_text}. Each run directory keeps its "
                     "last good checkpoint.")
    lines.append("")
    return "\n".join(lines)


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table_line(kind: str, r: RowResult, with_val: bool, with_steps: bool = False) -> str | None:
    """One row's line of the table; None for a row with neither a result nor a divergence (nothing to report)."""
    label = f"{r.image_size}" if kind == "sweep" else r.label
    seeds = f"{len(r.seeds)}" + (f" (+{len(r.diverged)} diverged)" if r.diverged else "")
    cost = [label, f"{r.params:,}", f"{r.gflops:.3f}"]
    steps = [", ".join(f"{n:,}" for n in r.steps) or "-"] if with_steps else []
    if not r.test_acc:
        return (_cells([*cost, *(["-"] if with_val else []), "diverged", "-", seeds, *steps, "-", "-"]) if r.diverged
                else None)
    val = [format_mean_std(r.val_acc) if r.val_acc else "-"] if with_val else []
    return _cells([*cost, *val, format_acc(r), f"{mean(r.best_test_acc):.4f}", seeds, *steps,
                   f"{mean(r.wall_seconds):,.0f}", f"{mean(r.images_per_sec):,.0f}"])


def plot_curves(path: str | os.PathLike, rows: Sequence[RowResult], title: str = "") -> None:
    """Mean test accuracy per epoch of every row on one axis; a band of ± one std where there are >= 2 seeds; with
    a validation split, each row's mean validation accuracy dashed in the row's colour."""
    fig, ax = new_figure((5.5, 3.6))
    for r in rows:
        _plot_row(ax, r)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    with_val = any(r.val_curves for r in rows)
    if with_val:  # one legend entry for the style, not one more per row: the legend stays as long as the rows
        ax.plot([], [], "k--", marker="o", markersize=3, fillstyle="none", label="dashed: validation")
    ax.set_ylabel("accuracy (solid: test)" if with_val else "test accuracy")
    finish_axes(fig, ax, title=title, legend="lower right", fontsize=7)
    save_figure(fig, path)


def _plot_row(ax, r: RowResult) -> None:
    """One row's mean test curve with its ± std band and, when it has one, its mean validation curve (dashed)."""
    m = r.curve_mean()
    epochs = list(range(1, len(m) + 1))
    score = f"val {r.val_acc_mean:.3f}, test {r.test_acc_mean:.3f}" if r.val_acc else f"{r.test_acc_mean:.3f}"
    (line,) = ax.plot(epochs, m, marker="o", markersize=3, label=f"{r.label} ({score})")
    s = r.curve_std()
    if s and s[0] is not None:
        ax.fill_between(epochs, [a - b for a, b in zip(m, s, strict=True)],
                        [a + b for a, b in zip(m, s, strict=True)], color=line.get_color(), alpha=0.2)
    v = r.val_curve_mean()
    if v:  # no band of its own: two bands per row would hide the curves
        ax.plot(range(1, len(v) + 1), v, "--", color=line.get_color(), marker="o", markersize=3, fillstyle="none")


def plot_accuracy_vs_size(path: str | os.PathLike, rows: Sequence[RowResult], title: str = "") -> None:
    """Final test accuracy (mean, error bar ± std) against the input side."""
    fig, ax = new_figure((5.0, 3.4))
    sizes = [r.image_size for r in rows]
    errors = [r.test_acc_std or 0.0 for r in rows]
    ax.errorbar(sizes, [r.test_acc_mean for r in rows], yerr=errors, marker="o", capsize=3)
    ax.set_xticks(sizes)
    ax.set_xlabel("input side (pixels)")
    ax.set_ylabel("final test accuracy")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
