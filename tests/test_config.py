"""TrainConfig: round trip, presets, validation, the learning-rate schedule, and the CLI's error exits."""

import json
import math

import pytest

from inceptionlab.cli import main
from inceptionlab.config import PRESETS, TrainConfig, preset_config
from inceptionlab.errors import ConfigError
from inceptionlab.models import list_models
from inceptionlab.train import lr_at

READ_BY_OTHER_COMMANDS = ("model", "model_options", "num_classes", "in_channels", "image_size", "normalize")


def test_defaults_are_the_chapter_recipe():
    c = TrainConfig()
    assert (c.model, c.lr, c.batch_size, c.epochs, c.image_size) == ("googlenet", 0.1, 128, 10, 96)
    assert (c.optimizer, c.schedule, c.init, c.normalize) == ("sgd", "constant", "xavier", False)
    assert (c.precision, c.channels_last) == ("auto", None)  # the device decides: bf16 where it is fast
    assert c.label_smoothing == 0 and c.weight_decay == 0 and not c.flip and c.crop_padding == 0
    assert preset_config("d2l") == c


def test_round_trip_through_json_is_exact():
    c = TrainConfig(model="googlenet-paper", model_options={"dropout": 0.4}, lr=0.0123456789, limit_test=7,
                    warmup_epochs=0.5, data_dir="/x", num_threads=None, normalize=True)
    d = json.loads(json.dumps(c.to_dict()))
    assert all(k in d for k in READ_BY_OTHER_COMMANDS)
    back = TrainConfig.from_dict(d)
    assert back == c
    assert back.to_dict() == c.to_dict()
    assert back.model_options is not c.model_options  # a copy, not shared state


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="lrr"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "lrr": 1})


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name):
    c = preset_config(name).validate()
    assert c.preset == name
    assert c.model in list_models()


def test_options_override_the_preset_and_none_means_not_given():
    c = preset_config("quick", lr=0.5, epochs=None)
    assert c.lr == 0.5 and c.time_budget == PRESETS["quick"]["time_budget"]
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("fastest")


QUICK_OPTIONS = {"blocks": [2, 1, 1]}


def test_another_model_drops_the_presets_model_options_and_no_config_shares_the_presets_dict():
    quick = PRESETS["quick"]
    assert preset_config("quick").model_options == quick["model_options"] == QUICK_OPTIONS
    assert preset_config("quick", model="googlenet-bn").model_options == {}  # quick's blocks are quick's model's
    assert preset_config("quick", model=quick["model"]).model_options == QUICK_OPTIONS
    assert preset_config("quick", model="googlenet-bn", model_options={"width": 0.5}).model_options == {"width": 0.5}
    preset_config("quick").model_options["blocks"].append(2)  # a caller's change stays in its own config
    assert PRESETS["quick"]["model_options"] == QUICK_OPTIONS
    # compare's rows: each model gets the config, the options only the config's own model
    quick = preset_config("quick")
    assert quick.with_model("googlenet").model_options == {} and quick.with_model("googlenet").model == "googlenet"
    assert quick.with_model(quick.model).model_options == QUICK_OPTIONS
    assert quick.with_model(quick.model).model_options is not quick.model_options


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"precision": "fp8"}, "precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"warmup_epochs": 10}, "warmup_epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"erasing": 1.5}, "erasing"),
        ({"crop_padding": 96}, "crop_padding"),
        ({"limit_train": 0}, "limit_train"),
        ({"sync_every": 0}, "sync_every"),
        ({"sync_every": 2.5}, "sync_every"),
        ({"model": "googlenett"}, "googlenet"),
    ],
)
def test_invalid_values_are_config_errors(changes, match):
    with pytest.raises(Exception, match=match) as info:
        TrainConfig(**changes).validate()
    from inceptionlab.errors import InceptionLabError

    assert isinstance(info.value, InceptionLabError)


def test_schedules():
    spe = 10
    c = TrainConfig(epochs=4, lr=1.0, schedule="cosine", warmup_epochs=1)
    lrs = [lr_at(c, s, spe) for s in range(40)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over one epoch
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # then never increases
    assert lrs[-1] < 0.01
    c = TrainConfig(epochs=2, lr=0.5, schedule="onecycle")
    assert lr_at(c, 0, spe) == 0.5 and lr_at(c, 10, spe) == pytest.approx(0.25)
    assert lr_at(TrainConfig(), 123, spe) == 0.1


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--lr", "0"],
        ["train", "--batch-size", "x"],
        ["train", "--model", "nosuchnet"],
        ["train", "--preset", "fastest"],
        ["train", "--optimizer", "lion"],
        ["train", "--label-smoothing", "1.5"],
        ["evaluate"],
    ],
)
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--precision", "fp16", "--device", "cpu"], "fp16"),
        (["train", "--epochs", "2", "--warmup-epochs", "3"], "warmup"),
        (["train", "--model", "lenet", "--image-size", "96"], "lenet"),
        (["train", "--model", "googlenet-paper", "--image-size", "16"], "16"),
    ],
)
def test_cli_config_errors_exit_1_before_any_work(argv, match, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path), "--data-dir", str(tmp_path / "no-data")]) == 1
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # failed before creating a run directory (or touching the data)


def test_cli_resume_refuses_changes_that_would_alter_the_run(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.5"]) == 1
    assert "--lr cannot change when resuming" in capsys.readouterr().err


def test_evaluate_on_a_missing_run_is_an_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_cli_impossible_step_mode_fails_before_any_work(tmp_path, capsys):
    assert main(["train", "--step-mode", "cudagraph", "--device", "cpu", "--out", str(tmp_path)]) == 1
    assert "cudagraph" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_speed_switches_reach_the_config_and_may_change_on_resume(tmp_path):
    from inceptionlab.cli import build_parser
    from inceptionlab.cli.train import build_config

    parser = build_parser()
    config = build_config(parser.parse_args(["train", "--fuse-1x1", "--no-batched-casts", "--branch-streams"]))
    assert (config.fuse_1x1, config.batched_casts, config.branch_streams, config.cudnn_benchmark) == (
        True, False, True, None)
    (tmp_path / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    resumed = build_config(parser.parse_args(["train", "--resume", str(tmp_path), "--batched-casts"]))
    assert resumed.batched_casts is True and resumed.fuse_1x1 is None


def test_precision_auto_is_bf16_and_channels_last_where_the_cpu_has_bf16_units(monkeypatch):
    """The reference is the kernel's own report of the CPU (/proc/cpuinfo flags), not our capability check."""
    import torch

    from inceptionlab import devices

    cpu = torch.device("cpu")
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = {w for line in f if line.startswith("flags") for w in line.split()}
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags) and torch.backends.mkldnn.is_available()
    onednn = torch.backends.mkldnn.is_available()  # channels_last on every oneDNN CPU, whatever the precision
    config, reason = devices.resolve_precision(TrainConfig(), cpu)
    assert (config.precision, config.channels_last) == ("bf16" if has_bf16 else "fp32", has_bf16 or onednn)
    assert reason.startswith("auto: ")
    # a CPU without bf16 units gets d2l's arithmetic; explicit values always win
    monkeypatch.setattr(devices, "fast_bf16", lambda device: None)
    config, reason = devices.resolve_precision(TrainConfig(), cpu)
    assert (config.precision, config.channels_last) == ("fp32", onednn) and "fp32" in reason
    config, reason = devices.resolve_precision(TrainConfig(precision="bf16", channels_last=False), cpu)
    assert (config.precision, config.channels_last, reason) == ("bf16", False, None)
    monkeypatch.setattr(devices, "fast_bf16", lambda device: "test")
    config, _ = devices.resolve_precision(TrainConfig(precision="fp32", channels_last=False), cpu)
    assert (config.precision, config.channels_last) == ("fp32", False)
    # elsewhere (a GPU, MPS) fp32 keeps NCHW: the layout was measured faster only with bf16 there
    config, _ = devices.resolve_precision(TrainConfig(precision="fp32"), torch.device("meta"))
    assert config.channels_last is False


def test_unresolved_precision_is_refused_by_the_forward():
    import torch

    from inceptionlab.inputs import autocast_context

    with pytest.raises(ConfigError, match="resolve_precision"):
        autocast_context(TrainConfig(), torch.device("cpu"))


def test_default_run_says_what_precision_auto_chose_and_saves_the_resolved_config(fmnist, tmp_path):
    import torch

    from inceptionlab import devices, runs
    from inceptionlab.train import train

    lines = []
    config = TrainConfig(model="lenet", image_size=28, epochs=1, batch_size=64, limit_train=128, limit_test=64,
                         num_threads=1, device="cpu", out=str(tmp_path))
    result = train(config, data=fmnist, log=lines.append)
    expected, reason = devices.resolve_precision(config, torch.device("cpu"))
    assert f"{expected.precision} ({reason})" in lines[0]
    saved = runs.read_run_config(result.run_dir)
    assert (saved.precision, saved.channels_last) == (expected.precision, expected.channels_last)
