"""The run directory's figures: d2l-style training curves and the confusion matrix (PNG, written atomically)."""

from __future__ import annotations

import os

import torch

from inceptionlab.fileio import atomic_write_with


def pyplot():
    """matplotlib's pyplot on the Agg backend (imported on first use: plotting is not on the training path)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG atomically (never a half-written image) and release it."""
    atomic_write_with(path, lambda f: fig.savefig(f, format="png"))
    pyplot().close(fig)


def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> None:
    """Train loss, train acc and test acc against epoch on one axis, like d2l's ``Animator`` plot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], "-", label="train loss")
    ax.plot(epochs, [r["train_acc"] for r in rows], "m--", label="train acc")
    ax.plot(epochs, [r["test_acc"] for r in rows], "g-.", label="test acc")
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(epochs + [1]) + 0.5)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(path: str | os.PathLike, confusion: torch.Tensor, class_names, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts printed in each cell."""
    plt = pyplot()
    counts = confusion.cpu().double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if rates[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
