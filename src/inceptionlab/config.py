"""The training configuration: one flat, typed dataclass, written whole into every run's ``config.json``.

Defaults are the chapter's recipe (d2l's ``train_ch6`` on its Fashion-MNIST loader with ``resize=96``, batch 128):
Xavier-uniform init, plain SGD lr 0.1, batch 128, 10 epochs, cross-entropy, 96x96 inputs in [0, 1].
:data:`PRESETS` holds the other named recipes; command-line options override a preset's values.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from inceptionlab.argcheck import NAME, TEXT, check, instance, optional, whole
from inceptionlab.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adamw")
# CUDA speed switches: None = auto (inceptionlab.engine.cuda.resolve_cuda_options); none changes what is computed,
# only how (the order of some sums may differ, i.e. rounding)
CUDA_SWITCHES = ("branch_streams", "cudnn_benchmark", "batched_casts", "fuse_1x1")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 where the device runs it well (devices.py)
DEVICES = ("auto", "cpu", "cuda", "mps")
INITS = ("xavier", "default")
STEP_MODES = ("auto", "eager", "cudagraph", "compile")  # see inceptionlab.engine.step
# The models are built for 28-299 px; beyond 512 an upscale adds only memory and time
MAX_IMAGE_SIZE = 512
# How a folder's images are prepared (inceptionlab.data.images): repeated so that this module never imports torch
COLOR_MODES = ("auto", "grey", "rgb")
RESIZE_MODES = ("squash", "crop", "pad")
ON_BAD = ("error", "skip")
MIN_BUDGET_S = 10.0  # a time budget below this is mostly start-up and one evaluation

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")


def parse_duration(text: str) -> float:
    """Seconds of ``300``, ``90s``, ``5m``, ``1h``, ``1h30m``, ``1.5h``; ValueError (one line) otherwise."""
    text = str(text).strip().lower()
    match = _DURATION.fullmatch(text + "s" if re.fullmatch(_NUMBER, text) else text)  # a plain number: seconds
    if match is None or not any(match.groups()):
        raise ValueError(f"expected a duration such as 300, 90s, 5m, 1h or 1h30m, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# Options that may change when a run continues (they do not change what it computes beyond rounding, or extend it).
RESUMABLE = ("epochs", "steps", "device", "num_threads", "data_dir", "data", "eval_batch_size", "step_mode",
             "tensorboard", "checkpoint_every", *CUDA_SWITCHES)
# Set from the data by the trainer (engine.rundata.with_data), not chosen: a resume keeps the run's own.
DERIVED = ("num_classes", "in_channels", "data_info", "budget_plan")


@dataclass
class TrainConfig:
    # what is trained (these keys are read back by `evaluate`, `export`, `predict`: keep their names)
    model: str = "googlenet"
    model_options: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 10  # set from the data when training (DERIVED); here for building a model without data
    in_channels: int = 1
    image_size: int = 96
    normalize: bool = False  # d2l feeds ToTensor's [0, 1] pixels; True standardises with the training set's mean/std
    init: str = "xavier"  # d2l's init_cnn: Xavier-uniform on every Conv2d/Linear weight; "default" keeps PyTorch's
    # the schedule of the run
    epochs: int = 10  # with `steps` set, derived from it: ceil(steps / steps per epoch), the last one partial
    steps: int | None = None  # exactly this many optimisation steps; the schedule (warm-up, decay) ends there
    time_budget: float | None = None  # seconds: the run plans the steps that fill them (engine.budget)
    batch_size: int = 128  # the GLOBAL batch: under torchrun each rank takes batch_size / world_size
    eval_batch_size: int = 1000
    drop_last: bool = False  # d2l trains on each epoch's last, smaller batch; True skips it (other images each epoch)
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9  # used by "momentum" and "nesterov"
    weight_decay: float = 0.0  # applied to conv/linear weights only (not biases, not BatchNorm)
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    # augmentation, applied to whole batches on the device
    crop_padding: int = 0
    flip: bool = False
    erasing: float = 0.0
    flip_tta: bool = False  # every evaluation, predict and ONNX export average an image's logits with its mirror's
    # the final evaluation, predict and ONNX export average an image's logits over it and its 4 one-pixel shifts
    shift_tta: bool = False
    # speed
    precision: str = "auto"  # bf16 autocast where the device runs it well, else fp32 (inceptionlab.devices)
    channels_last: bool | None = None  # None: on with bf16 and on a CPU, off for fp32 on a GPU (devices.py)
    num_threads: int | None = None
    device: str = "auto"
    step_mode: str = "auto"  # "auto": the whole step as one CUDA graph on CUDA, eager elsewhere (engine.step)
    # CUDA only; None = auto (inceptionlab.engine.cuda.resolve_cuda_options)
    branch_streams: bool | None = None  # run an Inception block's branches on parallel CUDA streams
    cudnn_benchmark: bool | None = None  # let cuDNN time its convolution algorithms for each new shape
    batched_casts: bool | None = None  # bf16 copies of all conv/linear parameters in one multi-tensor kernel
    fuse_1x1: bool | None = None  # an Inception block's three 1x1 convs on its input as one convolution
    tensorboard: bool = False  # event files in the run directory (needs the tensorboard extra)
    checkpoint_every: float = 5.0  # minutes between mid-epoch recovery points (0: only at epoch ends)
    sync_every: int = 50  # steps between host reads of the running loss (progress, NaN check, DDP stop agreement)
    # reproducibility and data
    seed: int = 0
    val_split: int = 0  # training images held out for validation (the same ones for every seed and model); 0: none
    limit_train: int | None = None
    limit_test: int | None = None
    data_dir: str | None = None  # where Fashion-MNIST's IDX files are (when `data` is unset)
    # your own images (docs/data.md): a folder of class folders, a folder of split folders, or a CSV
    data: str | None = None
    color: str = "auto"  # "auto": grey when every image is grey, else RGB
    resize_mode: str = "squash"  # how a non-square image becomes square: "squash", "crop" or "pad"
    val_fraction: float = 0.1  # of each class, when the data has no validation split of its own
    test_fraction: float = 0.2  # of each class, when the data has no test split of its own
    classes_file: str | None = None  # one class name per line: pins the class order
    on_bad: str = "error"  # an undecodable file: "error" (stop before training, naming it) or "skip" (listed)
    data_info: dict[str, Any] | None = None  # set by the trainer: classes, channels, statistics of the run's data
    budget_plan: dict[str, Any] | None = None  # set by the trainer under a time budget: its plan (engine.budget.Plan)
    out: str = "runs"
    preset: str = "d2l"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_options"] = dict(self.model_options)
        d["data_info"] = None if self.data_info is None else dict(self.data_info)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error (a typo would otherwise be silently dropped)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        # a model_options (or data_info) that is no mapping stays as it is, for validate() to name
        dicts = ("model_options", "data_info", "budget_plan")
        return cls(**{k: (dict(v) if k in dicts and isinstance(v, Mapping) else v) for k, v in data.items()})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def with_model(self, name: str) -> TrainConfig:
        """This config for model ``name``: its ``model_options`` belong to its own model and go with another."""
        return self.replace(model=name, model_options=dict(self.model_options) if name == self.model else {})

    def validate(self) -> TrainConfig:
        """Check every value before any work starts; raise :class:`ConfigError` naming the fix."""
        from inceptionlab.models import get_model_spec

        check(model=(self.model, NAME), preset=(self.preset, TEXT), seed=(self.seed, whole(0)),
              data_dir=(self.data_dir, optional(TEXT)), out=(self.out, TEXT))
        get_model_spec(self.model)  # UnknownModelError (an InceptionLabError) with close matches
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        _choice("init", self.init, INITS)
        _choice("step_mode", self.step_mode, STEP_MODES)
        _choice("color", self.color, COLOR_MODES)
        _choice("resize_mode", self.resize_mode, RESIZE_MODES)
        _choice("on_bad", self.on_bad, ON_BAD)
        if self.preset not in PRESETS and self.preset != "custom":
            raise ConfigError(f"unknown preset {self.preset!r}; choose from: {', '.join(PRESETS)}")
        for name in ("num_classes", "in_channels", "image_size", "epochs", "batch_size", "eval_batch_size",
                     "sync_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
        if self.image_size > MAX_IMAGE_SIZE:
            problem = (f"image_size {self.image_size} is above the largest supported, {MAX_IMAGE_SIZE} (the models "
                       "are built for 28-299 px)")
            raise option_error(f"{problem}: pass --image-size {MAX_IMAGE_SIZE} or less, e.g. 96", problem)
        for name in (*CUDA_SWITCHES, "channels_last", "normalize", "flip", "flip_tta", "shift_tta", "drop_last",
                     "tensorboard"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name in (*CUDA_SWITCHES, "channels_last"))):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
        for name in ("limit_train", "limit_test", "num_threads", "steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive whole number or unset, got {value!r}")
        _check_val_split(self.val_split)
        self._check_data()
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ConfigError(f"crop_padding must be a whole number >= 0, got {self.crop_padding!r}")
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}")
        if not _finite(self.checkpoint_every) or self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every (minutes) must be >= 0, got {self.checkpoint_every!r}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not _finite(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not _finite(self.erasing) or not 0 <= self.erasing <= 1:
            raise ConfigError(f"erasing (a probability) must be in [0, 1], got {self.erasing!r}")
        if not _finite(self.warmup_epochs) or self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        self._check_length()
        # a step count is checked against the data (engine.optim.with_total_steps), a budget's plan runs past it
        if self.steps is None and self.time_budget is None and not self.warmup_epochs < self.epochs:
            raise ConfigError(
                f"warmup_epochs must be >= 0 and below epochs ({self.epochs}), got {self.warmup_epochs!r}"
            )
        if self.crop_padding >= self.image_size:
            raise ConfigError(f"crop_padding {self.crop_padding} must be below image_size {self.image_size}")
        if not isinstance(self.model_options, dict):
            raise ConfigError(f"model_options must be a dict, got {type(self.model_options).__name__}")
        if not self.out:
            raise ConfigError("out (the runs root) must not be empty")
        return self

    def _check_length(self) -> None:
        if self.time_budget is not None and (not _finite(self.time_budget) or self.time_budget < MIN_BUDGET_S):
            raise ConfigError(f"time_budget must be at least {MIN_BUDGET_S:g} seconds, got {self.time_budget!r}")
        if self.time_budget is not None and self.steps is not None:
            raise ConfigError("steps and time_budget each say how long to train; give only one")
        if self.budget_plan is not None and not isinstance(self.budget_plan, dict):
            raise ConfigError(f"budget_plan must be a dict or unset, got {type(self.budget_plan).__name__}")

    def _check_data(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not _finite(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(f"val_fraction + test_fraction ({self.val_fraction} + {self.test_fraction}) leave no "
                              "training images; make them smaller")
        for name in ("data", "classes_file"):
            if getattr(self, name) is not None and not (isinstance(getattr(self, name), str) and getattr(self, name)):
                raise ConfigError(f"{name} must be a path or unset, got {getattr(self, name)!r}")
        if self.data is not None and self.val_split:
            raise ConfigError("--val-split holds out Fashion-MNIST images; with --data use --val-fraction instead")
        if self.data_info is not None and not isinstance(self.data_info, dict):
            raise ConfigError(f"data_info must be a dict or unset, got {type(self.data_info).__name__}")


def as_config(config: TrainConfig | Mapping[str, Any]) -> TrainConfig:
    """``config`` itself, or the TrainConfig of a mapping of its fields (unknown keys refused); nothing else."""
    if isinstance(config, TrainConfig):
        return config
    check(config=(config, instance(Mapping, "a TrainConfig or a mapping of its fields")))
    return TrainConfig.from_dict(dict(config))


def _check_val_split(value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"val_split must be a whole number >= 0 (0: no validation set), got {value!r}")


def option_error(message: str, problem: str) -> ConfigError:
    """A ConfigError advising a command-line option; ``problem`` is the message without that advice, for a saved
    config.json, which the option cannot change (runs.read_run_config)."""
    error = ConfigError(message)
    error.problem = problem
    return error


def check_length_options(given: Mapping[str, Any]) -> None:
    """At most one of epochs, steps and time_budget may be given: each says how long the run is."""
    named = [k for k in ("epochs", "steps", "time_budget") if given.get(k) is not None]
    if len(named) > 1:
        flags = " and ".join("--" + k.replace("_", "-") for k in named)
        raise ConfigError(f"{flags} each say how long to train; give only one")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose from: {', '.join(choices)}")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Named recipes: only the values that differ from TrainConfig's defaults (= the chapter's recipe).
PRESETS: dict[str, dict[str, Any]] = {
    # The chapter, exactly.
    "d2l": {},
    # A CPU recipe for `make run` (>= 0.92 in about 5 minutes on 2 cores), chosen on validation accuracy among the
    # candidates of benchmarks/quick_preset.py: EXPERIMENTS.md (7) has the numbers, docs/training.md the reasons.
    "quick": {
        "model": "googlenet-lite",
        # width 0.5, one b4 and one b5 block: 2x the images/s of the whole table, EXPERIMENTS.md (9)
        "model_options": {"blocks": [2, 1, 1]},
        "image_size": 28,
        "time_budget": 300.0,  # 5 minutes, whatever the machine: the run plans its steps (engine.budget)
        "batch_size": 128,
        "lr": 0.1,
        "optimizer": "nesterov",
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "weight_decay": 5e-4,
        "eval_batch_size": 500,
    },
    # The highest accuracy we have measured, a GPU recipe (EXPERIMENTS.md, "best").
    "best": {
        "model": "googlenet-bn",
        "image_size": 96,
        "epochs": 30,
        "batch_size": 256,
        "lr": 0.2,
        "optimizer": "nesterov",
        "schedule": "cosine",
        "warmup_epochs": 2.0,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "crop_padding": 8,
        "flip": True,
        "erasing": 0.25,
        "normalize": True,
        "precision": "bf16",
        "channels_last": True,
        "eval_batch_size": 1000,
    },
    # Time to 0.93 on one H100/H200: 64 px costs 0.44 of 96 px, batch 256 halves the launches per image
    # (BENCHMARKS.md, "GPU", for its measured time and accuracy).
    "fast": {
        "model": "googlenet-bn",
        "image_size": 64,
        "epochs": 12,
        "batch_size": 256,
        "lr": 0.2,
        "optimizer": "nesterov",
        "schedule": "onecycle",
        "warmup_epochs": 1.0,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "crop_padding": 4,
        "flip": True,
        "normalize": True,
        "precision": "bf16",
        "channels_last": True,
        "step_mode": "auto",
        "eval_batch_size": 2000,
    },
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """The preset ``name`` with ``overrides`` applied (``None`` values are ignored: "not given")."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    check_length_options(given)
    values = {**copy.deepcopy(PRESETS[name]), "preset": name}
    if "epochs" in given or "steps" in given:  # the user said how long: the preset's budget goes
        values.pop("time_budget", None)
    if given.get("model", values.get("model")) != values.get("model"):  # its options belong to the preset's model
        values.pop("model_options", None)
    values.update(given)
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
