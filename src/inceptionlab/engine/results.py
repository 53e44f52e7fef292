"""The results of a run's process: summary.json, the final weights, the per-class report and the figures (rank 0).
``state`` is the trainer's ``RunState``; this module sits below the trainer and never imports it."""

from __future__ import annotations

import signal
from pathlib import Path

from inceptionlab import runs
from inceptionlab.config import TrainConfig
from inceptionlab.engine import budget
from inceptionlab.engine.evaluate import per_class_report
from inceptionlab.inputs import class_names


def build_summary(state, status: str) -> dict:
    """summary.json: the run's status, cost and closing numbers (``status``: "completed" or "interrupted")."""
    config, rows, seconds = state.config, state.rows, state.timer.seconds
    setup = {f"{name}_seconds": seconds.get(name, 0.0) for name in ("model", "data", "step", "run_dir")}
    timings = {"setup_seconds": sum(setup.values()), "setup": setup,
               **{f"{name}_seconds": seconds.get(name, 0.0) for name in ("train", "eval", "write", "write_wait")},
               "graph_capture_seconds": getattr(state.step_fn, "prepare_seconds", None)}
    summary = {
        "status": status, "model": config.model, "preset": config.preset, "epochs": config.epochs,
        "epochs_completed": len(rows), "num_parameters": sum(p.numel() for p in state.model.parameters()),
        "device": str(state.device), "world_size": state.dist.world_size, "step_mode": state.step_mode,
        **state.cuda_opts,
        "elapsed_seconds": state.elapsed(),
        **({"steps": rows[-1]["steps"] if rows else 0} if state.counts_steps else {}),
        **budget.summary_fields(state),
        "timings": timings,  # this process only (a resumed run's earlier processes are in elapsed_seconds alone)
    }
    if state.tuner is not None and state.tuner.active:
        summary["threads"] = {"chosen": state.tuner.chosen, "probes": state.tuner.history,
                              "utilisation": [round(u, 3) for u in state.tuner.utilisation[-20:]]}
    if rows:
        last = rows[-1]
        summary.update(train_loss=last["train_loss"], train_acc=last["train_acc"], test_acc=last["test_acc"],
                       best_test_acc=max(r["test_acc"] for r in rows),
                       images_per_sec=sum(r["images_per_sec"] for r in rows) / len(rows))
        if "val_acc" in last:
            summary.update(val_acc=last["val_acc"], best_val_acc=max(r["val_acc"] for r in rows))
        if status == "completed" and state.config.shift_tta:
            summary.update(closing_numbers(state, last))
    if state.stop_signal is not None:
        summary["signal"] = signal.Signals(state.stop_signal).name
    return summary


def closing_numbers(state, last: dict) -> dict:
    """A shift_tta run's closing evaluation (over the shifted views) as its test and validation accuracy; the last
    epoch's one-view numbers beside them (the curves' last point)."""
    numbers = {"test_acc": state.last_eval["acc"], "test_loss": state.last_eval["loss"],
               "test_acc_one_view": last["test_acc"]}
    if state.last_val is not None and "val_acc" in last:
        numbers.update(val_acc=state.last_val["acc"], val_acc_one_view=last["val_acc"])
    return numbers


def write_results(state, summary: dict) -> None:
    """Rank 0's files of a finished process: weights, per-class report and confusion plot (completed), summary."""
    config, run_dir, say = state.config, state.run_dir, state.say
    if summary["status"] == "completed":
        if len(state.rows) > state.start_epoch or not (run_dir / runs.WEIGHTS).is_file():
            # a resumed finished run keeps its file: rewritten, its bytes (and an ONNX export's tie) could change
            runs.save_weights(run_dir / runs.WEIGHTS, state.model,
                              {"model": config.model, "image_size": config.image_size})
        report = per_class_report(state.last_eval["confusion"], state.config)
        summary["per_class_acc"] = report["per_class_acc"]
        runs.write_per_class(run_dir, report)
        plot_confusion_file(run_dir, state.last_eval["confusion"], config)
    runs.write_summary(run_dir, summary)
    if summary["status"] == "completed" and state.rows:
        val = f"val acc {summary['val_acc']:.3f}, " if "val_acc" in summary else ""
        views = f" (shift TTA; one view {summary['test_acc_one_view']:.3f})" if "test_acc_one_view" in summary else ""
        say(f"loss {summary['train_loss']:.3f}, train acc {summary['train_acc']:.3f}, {val}"
            f"test acc {summary['test_acc']:.3f}{views}")
        say(f"{summary['images_per_sec']:.1f} examples/sec on {state.device}")
    elif summary["status"] == "interrupted":
        say(f"interrupted by {summary['signal']} after {len(state.rows)} complete epoch(s); resume with "
            f"`inceptionlab train --resume {run_dir}`")


def plot_curves_file(run_dir: Path, rows, config: TrainConfig) -> None:
    from inceptionlab.plots import plot_curves

    plot_curves(run_dir / runs.CURVES, rows, title=f"{config.model}, {config.image_size}px")


def plot_confusion_file(run_dir: Path, confusion, config: TrainConfig) -> None:
    from inceptionlab.plots import plot_confusion

    names = class_names(config)
    plot_confusion(run_dir / runs.CONFUSION, confusion, names, title=f"{config.model}: test set")
