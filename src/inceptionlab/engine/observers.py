"""What watches a run besides the run directory: TensorBoard event files and live curves in a Jupyter notebook.

The trainer calls every observer at the same points: :meth:`Observer.progress` at each host read of the running
loss (every ``config.sync_every`` steps, where the loop reads it anyway: an observer never adds a host sync),
:meth:`Observer.epoch` with each metrics row, :meth:`Observer.finish` with the summary and the final confusion
matrix. An observer only reads what it is given.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from inceptionlab.config import TrainConfig
from inceptionlab.errors import ConfigError

LIVE_DRAW_SECONDS = 2.0  # a redraw costs ~0.1 s on the CPU: at most one every 2 s (docs/training.md)


class Observer:
    def progress(self, epoch: float, loss: float, acc: float, lr: float) -> None:
        """``epoch``: fractional (2.5 = halfway through the third epoch); running train loss and accuracy."""

    def epoch(self, row: dict) -> None:
        """One metrics.jsonl row."""

    def finish(self, summary: dict, confusion: torch.Tensor | None) -> None:
        """The summary.json dict and the final confusion matrix (None when the run did not complete)."""


def in_notebook() -> bool:
    """Running inside a Jupyter kernel (IPython already loaded there; never imported here otherwise)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def make_observers(config: TrainConfig, run_dir: Path, *, live: bool | None, is_main: bool) -> list[Observer]:
    """TensorBoard when the config asks for it; live curves when ``live`` (None: inside a notebook). Rank 0 only."""
    if not is_main:
        return []
    observers: list[Observer] = []
    if config.tensorboard:
        observers.append(TensorBoardObserver(run_dir, config))
    if live if live is not None else in_notebook():
        observers.append(LiveCurves(f"{config.model}, {config.image_size}px", config.epochs))
    return observers


def require_tensorboard() -> None:
    """Fail before any work when ``--tensorboard`` cannot write events, with the install command."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'inceptionlab[tensorboard]'"
                          ) from None


class TensorBoardObserver(Observer):
    """Event files in the run directory (``tensorboard --logdir runs/``): train loss and lr at every host read,
    per-epoch losses, accuracies (validation too, with ``--val-split``) and images/s, the hyperparameters with the
    final metrics (HParams tab) and the confusion matrix as an image."""

    def __init__(self, run_dir: Path, config: TrainConfig):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.config = config

    def progress(self, epoch: float, loss: float, acc: float, lr: float) -> None:
        step = round(epoch * 1000)  # x axis in thousandths of an epoch: the same for every batch size
        self.writer.add_scalar("train/loss_running", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, row: dict) -> None:
        step = row["epoch"] * 1000
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "images_per_sec"):
            if key in row:  # val_*: only the rows of a run with a validation split have them
                self.writer.add_scalar(f"epoch/{key}", row[key], step)
        self.writer.flush()

    def finish(self, summary: dict, confusion: torch.Tensor | None) -> None:
        if confusion is not None:
            from inceptionlab.inputs import class_names
            from inceptionlab.plots import confusion_figure

            fig = confusion_figure(confusion, class_names(self.config), f"{self.config.model}: test set")
            self.writer.add_figure("test/confusion", fig, summary.get("epochs_completed", 0) * 1000)
        hparams = {k: v for k, v in self.config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        final = ("test_acc", "best_test_acc", "val_acc", "best_val_acc", "train_loss")
        metrics = {f"hparam/{k}": summary[k] for k in final if k in summary}
        if metrics:
            self.writer.add_hparams(hparams, metrics, run_name=".")
        self.writer.close()


class LiveCurves(Observer):
    """d2l's ``Animator`` in the notebook cell: train loss, train acc (several points per epoch), test acc and,
    with ``--val-split``, val loss and acc against epoch, redrawn in place at most every :data:`LIVE_DRAW_SECONDS`
    and once at the end."""

    def __init__(self, title: str, epochs: int):
        from IPython.display import display

        self.title, self.epochs = title, epochs
        self.train: list[tuple[float, float, float]] = []
        self.test: list[tuple[float, float]] = []
        self.val: list[tuple[float, float, float]] = []  # (epoch, loss, acc); stays empty without a validation split
        self.last_draw = -float("inf")
        self.handle = display(display_id=True)

    def progress(self, epoch: float, loss: float, acc: float, lr: float) -> None:
        self.train.append((epoch, loss, acc))
        self._draw()

    def epoch(self, row: dict) -> None:
        self.test.append((row["epoch"], row["test_acc"]))
        if "val_acc" in row:
            self.val.append((row["epoch"], row["val_loss"], row["val_acc"]))
        self._draw()

    def finish(self, summary: dict, confusion: torch.Tensor | None) -> None:
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not force and time.perf_counter() - self.last_draw < LIVE_DRAW_SECONDS:
            return
        from IPython.display import Image

        from inceptionlab.plots import curves_figure, png_bytes

        fig = curves_figure(self.train, self.test, self.epochs, self.title, self.val)
        self.handle.update(Image(data=png_bytes(fig)))
        self.last_draw = time.perf_counter()
