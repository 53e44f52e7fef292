"""The public library API refuses wrong types and out-of-range values at the door: every function of
``inceptionlab.__all__`` and each command's library function raises one of our errors (a TypeError for a wrong type,
a ValueError for a wrong value), one sentence naming the argument, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import inceptionlab
from inceptionlab import analysis, experiments
from inceptionlab.cli import build_parser
from inceptionlab.config import TrainConfig, as_config
from inceptionlab.data import load_fashion_mnist
from inceptionlab.deploy.onnx import export_onnx
from inceptionlab.deploy.predict import load_image_with_info, load_predictor, predict
from inceptionlab.engine.evaluate import evaluate_run
from inceptionlab.engine.trainer import train
from inceptionlab.errors import ArgumentTypeError, ConfigError, InceptionLabError
from inceptionlab.explore.model import Explorer
from inceptionlab.inspect import inspect_run
from inceptionlab.models import create_model, get_model_spec, list_models

RUN = "no-such-run"  # never reached: the arguments are checked before the run directory is read
WRONG_TYPE, WRONG_VALUE = TypeError, ValueError

# what each command calls in the library; a new command must be added here (test_every_command_is_walked)
COMMAND_FUNCTIONS = {
    "models": [list_models, get_model_spec], "shapes": [analysis.stage_shapes], "params": [analysis.cost_table],
    "min-size": [analysis.input_size_report], "data": [load_fashion_mnist], "train": [train],
    "evaluate": [evaluate_run], "export": [export_onnx], "predict": [load_predictor, load_image_with_info, predict],
    "inspect": [inspect_run], "compare": [experiments.compare], "sweep": [experiments.sweep],
    "serve": [Explorer],
}


def lenet():
    return create_model("lenet").eval()


# (function, positional arguments, keyword arguments, the argument that is wrong, the error expected)
CASES = [
    (create_model, (None,), {}, "name", WRONG_TYPE),
    (create_model, ("lenet",), {"num_classes": "10"}, "num_classes", WRONG_TYPE),
    (create_model, ("lenet",), {"in_channels": 0}, "in_channels", WRONG_VALUE),
    (create_model, ("lenet",), {"num_classes": True}, "num_classes", WRONG_TYPE),
    (get_model_spec, (["lenet"],), {}, "name", WRONG_TYPE),
    (analysis.stage_shapes, ("googlenet", "96"), {}, "size", WRONG_TYPE),
    (analysis.stage_shapes, (None, 96), {}, "model_name", WRONG_TYPE),
    (analysis.stage_shapes, ("googlenet", 96), {"num_classes": 0}, "num_classes", WRONG_VALUE),
    (analysis.cost_table, ("28",), {}, "size", WRONG_TYPE),
    (analysis.cost_table, (), {"models": "lenet"}, "models", WRONG_TYPE),
    (analysis.cost_table, (), {"models": []}, "models", WRONG_VALUE),
    (analysis.input_size_report, ("lenet",), {"verify": "no"}, "verify", WRONG_TYPE),
    (analysis.input_size_report, ("lenet",), {"in_channels": 0}, "in_channels", WRONG_VALUE),
    (analysis.check_input_size, ("lenet", 28.0), {}, "size", WRONG_TYPE),
    (load_fashion_mnist, (5,), {}, "data_dir", WRONG_TYPE),
    (load_fashion_mnist, (), {"download": 1}, "download", WRONG_TYPE),
    (load_fashion_mnist, (), {"timeout": -1}, "timeout", WRONG_VALUE),
    (load_fashion_mnist, (), {"progress": None}, "progress", WRONG_TYPE),
    (train, ([],), {}, "config", WRONG_TYPE),
    (train, ("",), {}, "config", WRONG_TYPE),
    (train, (0,), {}, "config", WRONG_TYPE),
    (train, ({"epochs": 0},), {}, "epochs", WRONG_VALUE),
    (train, ({"model": None},), {}, "model", WRONG_TYPE),
    (train, ({"image_size": "96"},), {}, "image_size", WRONG_VALUE),
    (train, ({"seed": "0"},), {}, "seed", WRONG_TYPE),
    (train, ({"preset": ["quick"]},), {}, "preset", WRONG_TYPE),
    (train, (), {"resume": 5}, "resume", WRONG_TYPE),
    (train, (), {"run_dir": 5}, "run_dir", WRONG_TYPE),
    (train, (), {"progress": "yes"}, "progress", WRONG_TYPE),
    (train, (), {"log": "print"}, "log", WRONG_TYPE),
    (train, (), {"data": "fashion-mnist"}, "data", WRONG_TYPE),
    (evaluate_run, (RUN,), {"batch_size": 0}, "batch_size", WRONG_VALUE),
    (evaluate_run, (RUN,), {"batch_size": "1000"}, "batch_size", WRONG_TYPE),
    (evaluate_run, (None,), {}, "run_dir", WRONG_TYPE),
    (evaluate_run, (RUN,), {"device": 0}, "device", WRONG_TYPE),
    (evaluate_run, (RUN,), {"device": "gpu"}, "device", WRONG_VALUE),
    (evaluate_run, (RUN,), {"flip_tta": "yes"}, "flip_tta", WRONG_TYPE),
    (export_onnx, (RUN, None), {}, "path", WRONG_TYPE),
    (export_onnx, (RUN, "m.onnx"), {"opset": "18"}, "opset", WRONG_TYPE),
    (export_onnx, (RUN, "m.onnx"), {"atol": 0}, "atol", WRONG_VALUE),
    (export_onnx, (RUN, "m.onnx"), {"num_check_images": 0}, "num_check_images", WRONG_VALUE),
    (export_onnx, (RUN, "m.onnx"), {"force": 1}, "force", WRONG_TYPE),
    (load_predictor, (None,), {}, "run_dir", WRONG_TYPE),
    (load_predictor, (RUN,), {"onnx_path": 5}, "onnx_path", WRONG_TYPE),
    (load_predictor, (RUN,), {"device": 0}, "device", WRONG_TYPE),  # torch.device(0) would be cuda:0
    (load_image_with_info, ("item.png", "28"), {}, "size", WRONG_TYPE),
    (load_image_with_info, ("item.png", 28), {"invert": "yes"}, "invert", WRONG_VALUE),
    (load_image_with_info, ("item.png", 28), {"invert": 1}, "invert", WRONG_TYPE),
    (predict, ("model", torch.zeros(1, 1, 28, 28)), {}, "model_or_session", WRONG_TYPE),
    (predict, (lenet, np.zeros((1, 1, 28, 28))), {}, "images", WRONG_TYPE),
    (predict, (lenet, torch.zeros(1, 1, 28, 28)), {"top_k": 0}, "top_k", WRONG_VALUE),
    (inspect_run, (RUN,), {"batch_size": 0}, "batch_size", WRONG_VALUE),
    (Explorer, (RUN,), {"subset": 0}, "subset", WRONG_VALUE),
    (Explorer, (RUN,), {"subset": "500"}, "subset", WRONG_TYPE),
    (Explorer, (7,), {}, "run_dir", WRONG_TYPE),
    (Explorer, (RUN,), {"device": "tpu"}, "device", WRONG_VALUE),
    (inspect_run, (RUN,), {"limit_test": "5"}, "limit_test", WRONG_TYPE),
    (inspect_run, (RUN,), {"blocks": "b3.0"}, "blocks", WRONG_TYPE),
    (inspect_run, (RUN,), {"image": 2.5}, "image", WRONG_TYPE),
    (inspect_run, (RUN,), {"top_errors": -1}, "top_errors", WRONG_VALUE),
    (inspect_run, (RUN,), {"invert": "maybe"}, "invert", WRONG_VALUE),
    (experiments.compare, ("lenet", TrainConfig()), {}, "models", WRONG_TYPE),
    (experiments.compare, (["lenet"], []), {}, "config", WRONG_TYPE),
    (experiments.compare, (["lenet"], TrainConfig()), {"seeds": 0}, "seeds", WRONG_VALUE),
    (experiments.compare, (["lenet"], TrainConfig()), {"out_dir": 5}, "out_dir", WRONG_TYPE),
    (experiments.compare, (["lenet"], TrainConfig()), {"replace": "yes"}, "replace", WRONG_TYPE),
    (experiments.sweep, (None, [28], TrainConfig()), {}, "model", WRONG_TYPE),
    (experiments.sweep, ("lenet", [28, "32"], TrainConfig()), {}, "sizes", WRONG_TYPE),
    (experiments.sweep, ("lenet", [], TrainConfig()), {}, "sizes", WRONG_VALUE),
    (experiments.sweep, ("lenet", [28], 0), {}, "config", WRONG_TYPE),
]


def case_id(case) -> str:
    function, _, _, name, error = case
    return f"{function.__name__}-{name}-{error.__name__}"


@pytest.mark.parametrize("function, args, kwargs, name, error", CASES, ids=[case_id(c) for c in CASES])
def test_a_wrong_argument_is_one_sentence_naming_it(function, args, kwargs, name, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written anyway; if it were, it would land here
    args = tuple(a() if a is lenet else a for a in args)
    with pytest.raises(error) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, InceptionLabError), repr(info.value)  # the CLI prints it as one line
    assert message.startswith(f"{name} must be "), message
    assert "\n" not in message and message.count(". ") == 0, message
    assert list(tmp_path.iterdir()) == []


def test_every_command_and_every_public_function_is_walked():
    walked = {case[0] for case in CASES}
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == set(COMMAND_FUNCTIONS)
    takes_arguments = [f for functions in COMMAND_FUNCTIONS.values() for f in functions if f is not list_models]
    assert [f.__name__ for f in takes_arguments if f not in walked] == []
    public = [getattr(inceptionlab, name) for name in inceptionlab.__all__ if name not in ("__version__",)]
    assert [f for f in public if callable(f) and f not in walked and f is not list_models
            and not isinstance(f, type)] == []


def test_a_mapping_is_a_config_and_other_types_are_not():
    assert as_config({}) == TrainConfig()  # an empty mapping is every default, like config=None
    assert as_config({"epochs": 1, "model": "lenet"}) == TrainConfig(epochs=1, model="lenet")
    with pytest.raises(ConfigError, match="unknown config keys: colour"):
        as_config({"colour": "red"})
    for value in ([], "", 0, None, ("epochs", 1)):
        with pytest.raises(ArgumentTypeError, match="^config must be a TrainConfig or a mapping of its fields"):
            as_config(value)


def test_train_takes_a_mapping_of_the_configs_fields(fmnist, tmp_path):
    """train(config={'epochs': 1}) used to be an AttributeError; a mapping now trains exactly as its TrainConfig."""
    values = {"model": "lenet", "image_size": 28, "epochs": 1, "batch_size": 64, "limit_train": 128, "limit_test": 100,
              "device": "cpu", "num_threads": 1, "out": str(tmp_path / "runs")}
    result = train(values, data=fmnist, log=None)
    assert result.status == "completed"
    saved = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert {k: saved[k] for k in values} == values
