"""The run directory: what a training run leaves behind, and how other commands load it.

Layout of ``runs/<YYYYmmdd-HHMMSS>-<model>/`` (the contract every command relies on):

    config.json         the complete TrainConfig (enough to rerun)
    metrics.jsonl       one JSON object per epoch;  metrics.csv: the same as CSV
    curves.png          loss, train acc, test acc against epoch
    model.safetensors   final weights (state dict of the bare model; metadata: model name, image size)
    checkpoint.pt       model, optimizer, schedule, RNG states, epoch (tensors only; weights_only load)
    summary.json        final numbers;  confusion.png, per_class.json: evaluation of the final model

Loading never unpickles code: weights come from safetensors, checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from inceptionlab.errors import RunDirError
from inceptionlab.fileio import atomic_write_with
from inceptionlab.models import create_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


def save_weights(path: str | os.PathLike, model: torch.nn.Module, metadata: dict[str, str]) -> None:
    """Write the model's state dict as safetensors, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    payload = save(state, metadata={k: str(v) for k, v in metadata.items()})
    atomic_write_with(path, lambda f: f.write(payload))


def read_config(run_dir: str | os.PathLike) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; pass the run directory that `inceptionlab train` made")
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir} has no {CONFIG}: it is not a training run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}); the run directory is damaged") from None


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """The trained model of a run directory, in eval mode, and its config dict."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RunDirError(
            f"{run_dir} has no {WEIGHTS}: the run has not finished. Finish it with "
            f"`inceptionlab train --resume {run_dir}`"
        )
    model = create_model(
        config["model"],
        num_classes=config.get("num_classes", 10),
        in_channels=config.get("in_channels", 1),
        **config.get("model_options", {}),
    )
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunDirError(f"{weights} could not be read ({exc}); the file is damaged") from None
    model.load_state_dict(state)
    return model.to(device).eval(), config
