"""The run directory's figures: d2l-style training curves and the confusion matrix (PNG, written atomically)."""

from __future__ import annotations

import io
import os

import torch

from inceptionlab.fileio import atomic_write_with


def new_figure(figsize: tuple[float, float], dpi: int = 120):
    """``(figure, axes)`` on matplotlib's Agg canvas, without pyplot: no global figure registry and no change to
    the backend of the user's session (a notebook keeps its inline plots). Imported on first use."""
    fig, axes = new_axes_grid(1, 1, figsize=figsize, dpi=dpi)
    return fig, axes[0, 0]


def new_axes_grid(rows: int, cols: int, *, figsize: tuple[float, float], dpi: int = 120):
    """``(figure, rows x cols array of axes)``, like :func:`new_figure`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG atomically (never a half-written image)."""
    atomic_write_with(path, lambda f: fig.savefig(f, format="png"))


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def finish_axes(fig, ax, *, title: str = "", legend: str = "best", fontsize: int = 8) -> None:
    """The common dress of every line plot: epoch axis, light grid, legend, optional title, tight layout."""
    ax.set_xlabel("epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(loc=legend, fontsize=fontsize)
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    fig.tight_layout()


def plot_curves(path: str | os.PathLike, rows: list[dict], title: str = "") -> None:
    """curves.png: train loss, train acc and test acc per epoch on one axis, like d2l's ``Animator`` plot, plus
    validation loss and accuracy for the rows that have them (``--val-split``)."""
    train = [(_x(r), r["train_loss"], r["train_acc"]) for r in rows]
    test = [(_x(r), r["test_acc"]) for r in rows]
    save_figure(curves_figure(train, test, max([r["epoch"] for r in rows] + [1]), title, val_points(rows)), path)


def _x(row: dict) -> float:
    """The row's place on the epoch axis: a step count's last epoch may be partial (``epoch_fraction``)."""
    return row["epoch"] - 1 + row.get("epoch_fraction", 1.0)


def val_points(rows: list[dict]) -> list[tuple[float, float, float]]:
    """(epoch, val loss, val acc) of the metrics rows that carry them; empty for a run without a validation split."""
    return [(_x(r), r["val_loss"], r["val_acc"]) for r in rows if "val_acc" in r]


def curves_figure(train: list[tuple[float, float, float]], test: list[tuple[float, float]], epochs: int,
                  title: str = "", val: list[tuple[float, float, float]] | None = None):
    """``train`` = (epoch, loss, acc) points (fractional epochs for the live curves), ``test`` = (epoch, acc),
    ``val`` = (epoch, loss, acc) per epoch (none: the figure is the one without a validation split)."""
    fig, ax = new_figure((4.5, 3.2), dpi=120)
    if train:
        x = [p[0] for p in train]
        ax.plot(x, [p[1] for p in train], "-", label="train loss")
        ax.plot(x, [p[2] for p in train], "m--", label="train acc")
    if test:
        ax.plot([p[0] for p in test], [p[1] for p in test], "g-.", marker=".", label="test acc")
    if val:  # dotted with open markers: told apart from the test curve at a glance, also in grey print
        x = [p[0] for p in val]
        ax.plot(x, [p[1] for p in val], ":", color="tab:orange", marker="x", markersize=4, label="val loss")
        ax.plot(x, [p[2] for p in val], ":", color="tab:red", marker="o", markersize=4, fillstyle="none",
                label="val acc")
    ax.set_xlim(0, max(epochs, 1) + 0.5)
    finish_axes(fig, ax, title=title)
    return fig


def confusion_figure(confusion: torch.Tensor, class_names, title: str = ""):
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts printed in each cell."""
    counts = confusion.cpu().double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(class_names)
    fig, ax = new_figure((6.4, 5.6))
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
    return fig


def plot_confusion(path: str | os.PathLike, confusion: torch.Tensor, class_names, title: str = "") -> None:
    save_figure(confusion_figure(confusion, class_names, title), path)


def save_image_grid(images: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike, class_names, *,
                    num_cols: int = 9, scale: float = 1.5) -> None:
    """A PNG grid of uint8 ``N x C x H x W`` images (grey or RGB) titled with their class names, like d2l's
    ``show_images``."""
    images = images.detach().cpu()
    images = images.permute(0, 2, 3, 1) if images.shape[1] == 3 else images[:, 0]
    num_rows = max(1, -(-len(images) // num_cols))
    fig, axes = new_axes_grid(num_rows, num_cols, figsize=(num_cols * scale, num_rows * scale * 1.15), dpi=80)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_title(class_names[int(labels[i])], fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
