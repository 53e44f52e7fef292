"""Checkpoints and recovery points of a run: what is saved (model, optimizer, RNG, the epoch's progress) and how a
resume restores it. ``state`` is the trainer's ``RunState``; this module sits below the trainer and never imports
it."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from inceptionlab import runs
from inceptionlab.errors import RunDirError

CHECKPOINT_FORMAT = 1


def restore_checkpoint(state) -> None:
    """Model, optimizer, scaler, epoch and metrics from the run's last complete checkpoint, which must be this
    model's and hold no more epochs than the config asks for."""
    saved = runs.load_checkpoint(state.run_dir, map_location=state.device)
    path, config = Path(state.run_dir) / runs.CHECKPOINT, state.config
    if saved["epoch"] > config.epochs:
        raise RunDirError(f"{path} holds {saved['epoch']} epochs but the run asks for {config.epochs}; resume with "
                          f"--epochs {saved['epoch']} or more")
    try:
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        if state.scaler is not None and saved.get("scaler"):
            state.scaler.load_state_dict(saved["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # torch's multi-line key and shape report
        raise RunDirError(f"{path}: the checkpoint does not match this model ({config.model}); start a new "
                          "run") from exc
    done = saved.get("schedule", {}).get("step", saved["epoch"] * state.steps_per_epoch)
    if done < saved["epoch"] * state.steps_per_epoch and saved["epoch"] < config.epochs:
        raise RunDirError(f"{path}: the run ended inside epoch {saved['epoch']} (after {done} steps); a step count's "
                          "run cannot be extended, start a new run")
    state.start_epoch, state.rows = saved["epoch"], list(saved["metrics"])
    state.elapsed_before = float(saved.get("elapsed_s", 0.0))
    state.plotted = len(state.rows)
    state.partial = recovery_point(saved, path, state)
    step = f", step {state.partial['step']}" if state.partial else ""
    state.say(f"continuing {state.run_dir} after epoch {state.start_epoch}{step}")
    if state.start_epoch >= config.epochs:
        state.say(f"{state.run_dir}: all {config.epochs} epochs were already done; writing the final results")


def recovery_point(saved: dict, path: Path, state) -> dict | None:
    """The checkpoint's mid-epoch progress, if any (written by :func:`save_recovery_point`)."""
    partial = saved.get("partial")
    if partial is None or saved["epoch"] >= state.config.epochs:
        return None
    keys = {"step", "loss_sum", "correct", "seen", "rng"}
    if not (isinstance(partial, dict) and keys <= partial.keys() and 0 < partial["step"] < state.steps_per_epoch):
        raise RunDirError(f"{path}: its mid-epoch recovery point is damaged or from another batch size; start a "
                          "new run")
    return partial


def recovery_due(state) -> bool:
    """A mid-epoch recovery point every ``checkpoint_every`` minutes (one process only: under torchrun each rank's
    augmentation state differs, and the epoch-end checkpoint is the recovery point)."""
    every = state.config.checkpoint_every
    return (every > 0 and state.is_main and not state.dist.enabled
            and time.perf_counter() - state.last_recovery >= every * 60)


def save_recovery_point(state, epoch: int, step: int, tally, writes) -> None:
    """checkpoint.pt with the epoch's progress: the next resume continues at ``step`` with the same numbers."""
    with state.timer("write"):
        snapshot = checkpoint_state(state, epoch, state.elapsed())
        snapshot["partial"] = {"step": step, "loss_sum": tally.loss_sum, "correct": tally.correct,
                               "seen": tally.seen, "rng": get_rng(),
                               "loader_rng": None if state.loader.generator is None
                               else state.loader.generator.get_state()}
        writes.submit(runs.save_checkpoint, state.run_dir, host_copy(snapshot))
    state.last_recovery = time.perf_counter()


def host_copy(obj):
    """``obj`` with every tensor copied to host memory (a snapshot the training loop cannot change any more)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


def get_rng() -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([r.cpu() for r in rng["cuda"]])


def checkpoint_state(state, epoch: int, elapsed: float) -> dict:
    """Tensors and plain containers only, so ``torch.load(weights_only=True)`` can read it."""
    rng = get_rng()
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else {},
        "schedule": {"step": min(epoch * state.steps_per_epoch, state.total_steps),
                     "steps_per_epoch": state.steps_per_epoch},
        "rng": rng,
        "metrics": state.rows,
        "elapsed_s": elapsed,
    }
