"""Inside a trained run's multi-branch (Inception) blocks: how each block splits its channels among its branches,
how much of the block's output activation energy each branch carries, and what the test accuracy and loss become
when one branch (or the whole block) is replaced by its mean over the test set or by zero.

Ablation is applied from outside, as :mod:`inceptionlab.engine.cuda` applies its switches: a block's ``forward`` is
replaced by an instance attribute for one evaluation and deleted afterwards; no model class changes. The baseline
and the branch statistics come from one :func:`inceptionlab.engine.evaluate.evaluate` with the run's preprocessing,
memory layout and precision, so the unablated model gives ``inceptionlab evaluate``'s test accuracy and loss
exactly. The ablations run through :class:`inceptionlab.prefix.PrefixCache` in evaluate's batches: each batch goes
through the network once, and each ablation re-runs only the steps from its block onward (the same numbers as a
whole evaluation with the block's forward replaced, in a fraction of the time: BENCHMARKS.md, "Explorer").
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inceptionlab import runs
from inceptionlab.argcheck import FLAG, FUNCTION, PATH, TEXT, WHOLE, Rule, check, optional, sequence, whole
from inceptionlab.config import TrainConfig
from inceptionlab.data import ImageDataset
from inceptionlab.data.dataset import DATASET
from inceptionlab.data.resize import resize_batch
from inceptionlab.deploy.predict import INVERT, load_run_image
from inceptionlab.devices import DEVICE, resolve_device, resolve_precision
from inceptionlab.engine.evaluate import Tally, evaluate
from inceptionlab.engine.observers import in_notebook
from inceptionlab.errors import ConfigError, InceptionLabError
from inceptionlab.fileio import atomic_write_json
from inceptionlab.inputs import (
    autocast_context,
    class_names,
    forward_loss,
    load_run_dataset,
    prepare_input,
    prepare_model,
)
from inceptionlab.models._blocks import MultiBranch, flatten_outputs
from inceptionlab.plots import new_axes_grid, save_figure
from inceptionlab.prefix import (
    MODES,
    PrefixCache,
    ablated_forward,
    block_steps,
    forward_steps,
    recording_forward,
    replacement,
)

BRANCHES_PNG, ERRORS_PNG, FEATURES_PNG, INSPECT_JSON = "branches.png", "errors.png", "features.png", "inspect.json"
OUT_SUBDIR = "inspect"  # default output: <run_dir>/inspect/
IMAGE = Rule("a test-set index or an image file's path", lambda v: WHOLE.is_type(v) or PATH.is_type(v))
BLOCKS = sequence(TEXT, "a non-empty list of block names (module paths such as 'b3.0')")


# ------------------------------------------------------------------------------------------ the run, evaluated


@dataclass
class LoadedRun:
    """A run's model prepared as ``evaluate_run`` prepares it, and the test images it is inspected on."""

    run_dir: Path
    model: nn.Module
    config: TrainConfig
    data: ImageDataset  # the whole dataset, on the CPU (``--image INDEX`` reads the full test split)
    images: torch.Tensor  # the (first ``limit_test``) test images on the device, uint8
    labels: torch.Tensor
    batch_size: int | None

    def evaluate(self, forwards: dict[nn.Module, Callable] | None = None) -> dict:
        """``engine.evaluate.evaluate`` of the model, with ``forwards`` in place of those blocks' forward."""
        with replaced_forwards(forwards or {}):
            return evaluate(self.model, self.images, self.labels, self.config, batch_size=self.batch_size)


def load_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, device: str = "auto",
             batch_size: int | None = None, data: ImageDataset | None = None,
             limit_test: int | None = None) -> LoadedRun:
    """Model, config and test split exactly as :func:`inceptionlab.engine.evaluate.evaluate_run` loads them."""
    dev = resolve_device(device)
    model, config = runs.load_run_model(run_dir, device=dev)
    config, _ = resolve_precision(config, dev)
    prepare_model(model, config)
    if data is None:
        data = load_run_dataset(config, run_dir, data_dir=data_dir, progress=False, log=None)
    if limit_test is not None and limit_test < 1:
        raise ConfigError(f"limit_test must be a positive number of images, got {limit_test}")
    images, labels = data.test_images[:limit_test].to(dev), data.test_labels[:limit_test].to(dev)
    return LoadedRun(Path(run_dir), model, config, data, images, labels, batch_size)


@contextlib.contextmanager
def replaced_forwards(forwards: dict[nn.Module, Callable]):
    """Each block in ``forwards`` runs ``forwards[block]`` (an instance attribute, deleted on the way out)."""
    for block, forward in forwards.items():
        block.forward = forward
    try:
        yield
    finally:
        for block in forwards:
            del block.forward


def multi_branch_blocks(model: nn.Module) -> list[tuple[str, MultiBranch]]:
    """Every block whose branches read the same input, with its module path (``b3.0``), in forward order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, MultiBranch)]


def select_blocks(model: nn.Module, model_name: str, names: Sequence[str] | None) -> list[tuple[str, MultiBranch]]:
    """All multi-branch blocks, or those named; a model without any, or an unknown name, is an error."""
    blocks = multi_branch_blocks(model)
    if not blocks:
        raise InceptionLabError(f"{model_name} has no multi-branch (Inception) blocks; inspect a run of an "
                                "Inception-family model (`inceptionlab models`)")
    if names is None:
        return blocks
    known = dict(blocks)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"unknown block {', '.join(unknown) or '(none given)'}; the blocks of {model_name} "
                          f"are: {', '.join(known)}")
    return [(n, known[n]) for n in names]


# --------------------------------------------------------------------------- branch outputs: record, replace


class BranchStats:
    """Per-channel sums and sums of squares of each branch's output, in float64 on the CPU (portable to MPS)."""

    def __init__(self):
        self.sums: list[list[torch.Tensor]] = []  # [branch][tensor of the branch] -> (channels,)
        self.squares: list[list[torch.Tensor]] = []
        self.positions = 0  # images x height x width seen (the same for every branch: the merge concatenates)

    def add(self, outputs: list) -> None:
        per_branch = [flatten_outputs([out]) for out in outputs]
        if not self.sums:
            self.sums = [[torch.zeros(t.shape[1], dtype=torch.float64) for t in ts] for ts in per_branch]
            self.squares = [[torch.zeros(t.shape[1], dtype=torch.float64) for t in ts] for ts in per_branch]
        for sums, squares, tensors in zip(self.sums, self.squares, per_branch, strict=True):
            for j, t in enumerate(tensors):
                t = t.float()  # batch sums in float32 (bf16 would round them), the running totals in float64
                sums[j] += t.sum(dim=(0, 2, 3)).cpu().double()
                squares[j] += t.square().sum(dim=(0, 2, 3)).cpu().double()
        n, _, h, w = per_branch[0][0].shape
        self.positions += n * h * w

    def channels(self) -> list[int]:
        return [sum(len(s) for s in sums) for sums in self.sums]

    def energy_shares(self) -> list[float]:
        energy = [float(sum(s.sum() for s in squares)) for squares in self.squares]
        total = sum(energy)
        return [e / total if total > 0 else 0.0 for e in energy]

    def means(self, branch: int) -> list[torch.Tensor]:
        return [s / max(1, self.positions) for s in self.sums[branch]]


def branch_statistics(run: LoadedRun, blocks: list[tuple[str, MultiBranch]]) -> dict[str, BranchStats]:
    """One evaluation pass recording every chosen block's branch outputs over the test images."""
    stats = {name: BranchStats() for name, _ in blocks}
    run.evaluate({block: functools.partial(recording_forward, block, stats[name].add) for name, block in blocks})
    return stats


def ablation_forward(block: MultiBranch, stats: BranchStats, branches: Sequence[int], mode: str) -> Callable:
    """The forward of ``block`` with ``branches`` (0-based) ablated by ``mode``, for :meth:`LoadedRun.evaluate`."""
    replace = {i: replacement(mode, stats.means(i) if mode == "mean" else None) for i in branches}
    return functools.partial(ablated_forward, block, replace)


# ---------------------------------------------------------------------------------------------- the report


def ablation_targets(channels: list[int]) -> list[tuple[int | str, list[int]]]:
    """Each branch alone (1-based), then the whole block ("all"): the branches each target ablates (0-based)."""
    return [(i + 1, [i]) for i in range(len(channels))] + [("all", list(range(len(channels))))]


def ablation_results(run: LoadedRun, blocks: list[tuple[str, MultiBranch]], stats: dict[str, BranchStats],
                     progress: bool | None = None, on_batch: Callable[[int, int], None] | None = None) -> dict:
    """``{(block, target, mode): evaluate's dict}`` for every target of :func:`ablation_targets` both ways, over
    the test images in evaluate's batches: one pass per batch up to the last block (a :class:`PrefixCache`),
    then per ablation only the steps from its block onward; the numbers equal :meth:`LoadedRun.evaluate`'s."""
    steps = forward_steps(run.model)
    index = block_steps(steps)
    plans = {(name, target, mode): (index[name], {i: replacement(mode, stats[name].means(i) if mode == "mean"
                                                                else None) for i in branches})
             for name, _ in blocks for target, branches in ablation_targets(stats[name].channels()) for mode in MODES}
    tallies = {key: Tally(run.config.num_classes, run.images.device) for key in plans}
    size = run.batch_size or run.config.eval_batch_size
    starts = range(0, len(run.labels), size)
    run.model.eval()
    with torch.inference_mode():
        for n, start in enumerate(progress_bar(starts, progress, "ablations"), 1):
            y = run.labels[start : start + size]
            x = prepare_input(resize_batch(run.images[start : start + size], run.config.image_size), run.config)
            with autocast_context(run.config, x.device):  # as forward_loss runs the model
                cache = PrefixCache(steps, x, sorted({i for i, _ in plans.values()}))
                logits = {key: cache.logits({i: replace}) for key, (i, replace) in plans.items()}
            for key, out in logits.items():
                tallies[key].add(out, y)
            if on_batch is not None:
                on_batch(n, len(starts))
    return {key: tally.result(len(run.labels)) for key, tally in tallies.items()}


def progress_bar(items, show: bool | None, desc: str):
    """``items`` behind a tqdm bar when ``show`` (None: when stderr is a terminal or inside a notebook)."""
    if not (show if show is not None else sys.stderr.isatty() or in_notebook()):
        return items
    from tqdm.auto import tqdm  # a notebook widget inside Jupyter, text in a terminal

    return tqdm(items, desc=desc, unit="batch", leave=False)


def block_report(name: str, block: MultiBranch, stats: BranchStats, baseline: dict, results: dict) -> dict:
    """Channels, energy share and the accuracy / loss with each branch (and all of them) ablated both ways."""
    channels, shares = stats.channels(), stats.energy_shares()
    rows = [{"branch": i + 1, "channels": channels[i], "energy_share": shares[i]} for i in range(len(channels))]
    whole = {"branch": "all", "channels": sum(channels), "energy_share": float(sum(shares))}
    for row in [*rows, whole]:
        for mode in MODES:
            result = results[(name, row["branch"], mode)]
            row.update({f"{mode}_acc": result["acc"], f"{mode}_loss": result["loss"],
                        f"{mode}_drop": baseline["acc"] - result["acc"]})
    return {"block": name, "kind": type(block).__name__, "channels": channels, "branches": rows, "all": whole}


def first_pass(run: LoadedRun, blocks: list[tuple[str, MultiBranch]]) -> tuple[dict, torch.Tensor, dict]:
    """One evaluation: the plain model's result, its float logits in test-set order (a hook on the model) and
    every chosen block's :class:`BranchStats` (the block's forward records its branch outputs)."""
    stats = {name: BranchStats() for name, _ in blocks}
    logits: list[torch.Tensor] = []
    hook = run.model.register_forward_hook(
        lambda _module, _args, out: logits.append((out[0] if isinstance(out, tuple) else out).float()))
    try:
        result = run.evaluate({block: functools.partial(recording_forward, block, stats[name].add)
                               for name, block in blocks})
    finally:
        hook.remove()
    return result, torch.cat(logits), stats


def confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, k: int, config: TrainConfig) -> list[dict]:
    """The ``k`` misclassified test images with the highest predicted probability, most confident first."""
    probs = torch.softmax(logits.float(), dim=1)
    confidence, predicted = probs.max(dim=1)
    labels = labels.to(predicted.device)
    wrong = (predicted != labels).nonzero().flatten()
    order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:k]  # ties: lower index first
    names = class_names(config)
    return [{"index": int(i), "true": int(labels[i]), "true_name": names[int(labels[i])],
             "predicted": int(predicted[i]), "predicted_name": names[int(predicted[i])],
             "confidence": float(confidence[i])} for i in wrong[order].tolist()]


def inspect_run(run_dir: str | os.PathLike, *, data_dir: str | os.PathLike | None = None, device: str = "auto",
                batch_size: int | None = None, data: ImageDataset | None = None, limit_test: int | None = None,
                blocks: Sequence[str] | None = None, image: int | str | os.PathLike | None = None,
                out_dir: str | os.PathLike | None = None, top_errors: int = 16, invert: bool | str = "auto",
                progress: bool | None = None, on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Inspect every multi-branch block of a run (or ``blocks``, by module path) on its test set; writes
    ``branches.png``, ``errors.png``, ``inspect.json`` and, for ``image`` (a test-set index or an image file),
    ``features.png`` into ``out_dir`` (default ``<run_dir>/inspect``). Returns the report (``inspect.json``).
    ``progress``: a bar over the ablation batches (None: on a terminal or in a notebook); ``on_batch(done, total)``
    is called after each."""
    check(run_dir=(run_dir, PATH), data_dir=(data_dir, optional(PATH)), device=(device, DEVICE),
          batch_size=(batch_size, optional(whole(1))), data=(data, optional(DATASET)),
          limit_test=(limit_test, optional(whole(1))), blocks=(blocks, optional(BLOCKS)),
          image=(image, optional(IMAGE)), out_dir=(out_dir, optional(PATH)), top_errors=(top_errors, whole(0)),
          invert=(invert, INVERT), progress=(progress, optional(FLAG)), on_batch=(on_batch, optional(FUNCTION)))
    run = load_run(run_dir, data_dir=data_dir, device=device, batch_size=batch_size, data=data,
                   limit_test=limit_test)
    chosen = select_blocks(run.model, run.config.model, blocks)
    features = None if image is None else image_input(run, image, invert)  # bad input fails before any pass
    baseline, logits, stats = first_pass(run, chosen)
    results = ablation_results(run, chosen, stats, progress, on_batch)
    report = {"run_dir": str(run_dir), "model": run.config.model, "image_size": run.config.image_size,
              "precision": run.config.precision, "count": baseline["count"], "test_acc": baseline["acc"],
              "test_loss": baseline["loss"],
              "blocks": [block_report(name, block, stats[name], baseline, results) for name, block in chosen],
              "errors": confident_mistakes(logits, run.labels, top_errors, run.config)}
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / OUT_SUBDIR
    report["files"] = write_figures(out, run, chosen, report, features)
    atomic_write_json(out / INSPECT_JSON, report)
    report["files"]["report"] = str(out / INSPECT_JSON)
    return report


# ------------------------------------------------------------------------------------------------- figures


def image_input(run: LoadedRun, image: int | str | os.PathLike, invert: bool | str = "auto") -> dict:
    """The model's input for ``image``: a test-set index (the full split) or an image file (deploy's loader)."""
    size, dev = run.config.image_size, run.images.device
    if isinstance(image, int):
        count = len(run.data.test_labels)
        if not 0 <= image < count:
            raise ConfigError(f"test-set index {image} is out of range; pass 0..{count - 1} or an image file")
        x = resize_batch(run.data.test_images[image : image + 1].to(dev), size)
        return {"x": x, "label": int(run.data.test_labels[image]), "source": f"test image {image}",
                "config": run.config}
    x = load_run_image(image, run.config, invert)[0].unsqueeze(0).to(dev)
    return {"x": x, "label": None, "source": Path(image).name, "config": run.config}


def capture_branches(run: LoadedRun, blocks: list[tuple[str, MultiBranch]], x: torch.Tensor):
    """Each block's branch outputs (float, CPU, one C x H x W tensor per branch) and the logits for one image."""
    captured: dict[str, list[torch.Tensor]] = {}

    def record(name, outputs):
        captured[name] = [torch.cat(flatten_outputs([o]), dim=1)[0].float().cpu() for o in outputs]

    forwards = {block: functools.partial(recording_forward, block, functools.partial(record, name))
                for name, block in blocks}
    run.model.eval()
    with torch.inference_mode(), replaced_forwards(forwards):
        _, logits = forward_loss(run.model, x, torch.zeros(1, dtype=torch.long, device=x.device), None, run.config)
    return captured, logits.float()[0].cpu()


def write_figures(out: Path, run: LoadedRun, blocks, report: dict, features: dict | None) -> dict[str, str]:
    files = {"branches": out / BRANCHES_PNG, "errors": out / ERRORS_PNG}
    plot_branches(files["branches"], report)
    plot_errors(files["errors"], run.data.test_images, report["errors"])
    if features is not None:
        files["features"] = out / FEATURES_PNG
        captured, logits = capture_branches(run, blocks, features["x"])
        plot_features(files["features"], features, captured, logits)
    return {k: str(v) for k, v in files.items()}


def plot_branches(path: str | os.PathLike, report: dict) -> None:
    """Blocks x branches heat maps of the test-accuracy drop, mean- and zero-ablation side by side."""
    blocks = report["blocks"]
    width = max(len(b["branches"]) for b in blocks)
    drops = torch.full((len(MODES), len(blocks), width), float("nan"))
    for i, b in enumerate(blocks):
        for j, row in enumerate(b["branches"]):
            drops[:, i, j] = torch.tensor([row[f"{mode}_drop"] for mode in MODES])
    limit = max(0.01, float(drops.nan_to_num(0).abs().max()))  # one colour scale for both panels
    fig, axes = new_axes_grid(1, len(MODES), figsize=(3.2 + 1.4 * width * len(MODES), 1.2 + 0.4 * len(blocks)))
    for ax, mode, grid in zip(axes[0], MODES, drops, strict=True):
        ax.imshow(grid.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        for i, b in enumerate(blocks):
            for j in range(len(b["branches"])):
                ax.text(j, i, f"{float(grid[i, j]):+.3f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(width), [str(j + 1) for j in range(width)])
        ax.set_yticks(range(len(blocks)), [f"{b['block']} (all {b['all'][f'{mode}_drop']:+.2f})" for b in blocks],
                      fontsize=8)
        ax.set_xlabel("branch")
        ax.set_title(f"{mode}-ablated branch: test acc drop", fontsize=9)
    fig.suptitle(f"{report['model']}: test acc {report['test_acc']:.4f} on {report['count']:,} images", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_errors(path: str | os.PathLike, test_images: torch.Tensor, errors: list[dict], columns: int = 4) -> None:
    """The most confident mistakes: each test image with its true and predicted class and the probability."""
    rows = max(1, -(-len(errors) // columns))
    fig, axes = new_axes_grid(rows, columns, figsize=(2.0 * columns, 2.3 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, e in zip(axes.flat, errors, strict=False):
        show_image(ax, test_images[e["index"]].float() / 255)
        ax.set_title(f"#{e['index']} true: {e['true_name']}\npred: {e['predicted_name']} ({e['confidence']:.2f})",
                     fontsize=7)
    if not errors:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, path)


def show_image(ax, x: torch.Tensor) -> None:
    """A ``C x H x W`` image in [0, 1], grey or RGB, on ``ax``."""
    x = x.detach().float().cpu()
    if x.shape[0] == 3:
        ax.imshow(x.permute(1, 2, 0).clamp(0, 1).numpy())
    else:
        ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)


def mosaic(maps: torch.Tensor, tiles: int = 4) -> torch.Tensor:
    """The ``tiles x tiles`` channels of a C x H x W output with the most energy, as one image scaled to [0, 1]
    (NaN, drawn blank, between the tiles)."""
    _, h, w = maps.shape
    top = torch.sort(maps.square().sum(dim=(1, 2)), descending=True, stable=True).indices[: tiles * tiles]
    low, high = float(maps[top].min()), float(maps[top].max())
    scaled = (maps[top] - low) / (high - low) if high > low else torch.zeros_like(maps[top])
    grid = torch.full((tiles * tiles, h + 1, w + 1), float("nan"))
    grid[: len(top), :h, :w] = scaled
    return grid.view(tiles, tiles, h + 1, w + 1).permute(0, 2, 1, 3).reshape(tiles * (h + 1), tiles * (w + 1))


def plot_features(path: str | os.PathLike, features: dict, captured: dict[str, list[torch.Tensor]],
                  logits: torch.Tensor) -> None:
    """One picture: the input, then per block (a row) each branch's 16 strongest feature maps for that image."""
    width = max(len(outputs) for outputs in captured.values())
    fig, axes = new_axes_grid(len(captured) + 1, width, figsize=(2.2 * width, 2.3 * (len(captured) + 1)), dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    names = class_names(features["config"])
    probs = torch.softmax(logits, dim=0)
    label = "" if features["label"] is None else f", true: {names[features['label']]}"
    show_image(axes[0, 0], features["x"][0])
    axes[0, 0].set_title(f"{features['source']}\npred: {names[int(probs.argmax())]} ({float(probs.max()):.2f})"
                         f"{label}", fontsize=7, loc="left")
    for row, (name, outputs) in zip(axes[1:], captured.items(), strict=True):
        for j, maps in enumerate(outputs):
            row[j].imshow(mosaic(maps).numpy(), cmap="viridis", vmin=0, vmax=1)
            row[j].set_title(f"{name} branch {j + 1}: {maps.shape[0]} ch, {maps.shape[1]}x{maps.shape[2]}",
                             fontsize=7)
    fig.suptitle("each branch's 16 strongest channels for this image", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
