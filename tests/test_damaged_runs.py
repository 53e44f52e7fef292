"""A damaged or mismatched run directory: `evaluate`, `export` and `predict` each refuse it with one line that names
the file and the fix, before any large allocation, and leave the directory as it was."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from inceptionlab import runs
from inceptionlab.cli import main
from inceptionlab.config import TrainConfig
from inceptionlab.errors import ConfigError, RunDirError
from inceptionlab.models import create_model

CONFIG = {"model": "lenet", "model_options": {}, "num_classes": 10, "in_channels": 1, "image_size": 28,
          "normalize": False}


def make_run(run_dir, *, metadata=True):
    """An untrained lenet run (28 px, 60k parameters): the checks are about files, not accuracy."""
    torch.manual_seed(0)
    run_dir.mkdir(parents=True)
    meta = {"model": "lenet", "image_size": "28"} if metadata else {}
    state = {k: v.contiguous() for k, v in create_model("lenet").state_dict().items()}
    save_file(state, run_dir / runs.WEIGHTS, metadata=meta)
    (run_dir / runs.CONFIG).write_text(json.dumps(CONFIG))
    return run_dir


@pytest.fixture(scope="module")
def base(tmp_path_factory, fmnist):
    base = tmp_path_factory.mktemp("damaged")
    Image.fromarray(fmnist.test_images[0, 0].numpy()).save(base / "item.png")
    make_run(base / "healthy")
    make_run(base / "no-metadata", metadata=False)
    return base


def edit_config(**changes):
    def damage(run_dir):
        values = {**CONFIG, **changes}
        values = {k: v for k, v in values.items() if v is not DROP}
        (run_dir / runs.CONFIG).write_text(json.dumps(values))
    return damage


def write_config(text):
    def damage(run_dir):
        (run_dir / runs.CONFIG).write_text(text)
    return damage


def edit_weights(change, metadata=None):
    def damage(run_dir):
        state = load_file(run_dir / runs.WEIGHTS)
        change(state)
        save_file(state, run_dir / runs.WEIGHTS, metadata=metadata or {"model": "lenet", "image_size": "28"})
    return damage


def write_weights(cut=None, data=None):
    def damage(run_dir):
        path = run_dir / runs.WEIGHTS
        path.write_bytes(data if data is not None else path.read_bytes()[:cut])
    return damage


DROP = object()
NAN_WEIGHT = edit_weights(lambda s: s["conv1.0.weight"].view(-1)[7].fill_(float("nan")))

# (case id, base run, damage, file named in the message, what the message says)
CASES = [
    ("other-model", "healthy", edit_config(model="googlenet"), runs.WEIGHTS, "was saved for model lenet"),
    ("other-model-no-metadata", "no-metadata", edit_config(model="googlenet"), runs.WEIGHTS, "does not fit"),
    ("other-image-size", "healthy", edit_config(image_size=30), runs.WEIGHTS, "was saved for image_size 28"),
    ("missing-model", "healthy", edit_config(model=DROP), runs.CONFIG, "lacks model"),
    ("missing-image-size", "healthy", edit_config(image_size=DROP), runs.CONFIG, "lacks image_size"),
    ("missing-both", "healthy", edit_config(model=DROP, image_size=DROP), runs.CONFIG, "lacks model and image_size;"),
    ("image-size-string", "healthy", edit_config(image_size="28"), runs.CONFIG, "image_size must be"),
    ("image-size-huge", "healthy", edit_config(image_size=100000), runs.CONFIG, "image_size 100000 is above"),
    ("image-size-unfit", "no-metadata", edit_config(image_size=40), runs.CONFIG, "lenet cannot take 40x40"),
    ("num-classes-null", "healthy", edit_config(num_classes=None), runs.CONFIG, "num_classes must be"),
    ("normalize-string", "healthy", edit_config(normalize="yes"), runs.CONFIG, "normalize must be true or false"),
    ("model-null", "healthy", edit_config(model=None), runs.CONFIG, "model must be a model name, got null"),
    ("unknown-key", "healthy", edit_config(colour="red"), runs.CONFIG, "unknown config keys: colour"),
    ("options-unknown", "healthy", edit_config(model_options={"widht": 2}), runs.CONFIG,
     "cannot be built with model_options {'widht': 2}"),
    ("options-null", "healthy", edit_config(model_options=None), runs.CONFIG,
     "model_options must be an object of options, got null"),
    ("options-list", "healthy", edit_config(model_options=[1, 2]), runs.CONFIG,
     "model_options must be an object of options, got [1, 2]"),
    ("config-null", "healthy", write_config("null"), runs.CONFIG, "holds null, not a config"),
    ("config-list", "healthy", write_config("[1, 2]"), runs.CONFIG, "holds an array, not a config"),
    ("config-number", "healthy", write_config("12"), runs.CONFIG, "holds a number, not a config"),
    ("config-string", "healthy", write_config('"lenet"'), runs.CONFIG, "holds a string, not a config"),
    ("config-not-json", "healthy", write_config('{"model": "lenet",'), runs.CONFIG, "not valid JSON"),
    ("tensor-missing", "healthy", edit_weights(lambda s: s.pop("head.4.bias")), runs.WEIGHTS,
     "tensors 1 missing (e.g. head.4.bias); restore"),
    ("tensor-extra", "healthy", edit_weights(lambda s: s.update(extra=torch.zeros(3))), runs.WEIGHTS,
     "tensors 1 unexpected (e.g. extra); restore"),
    ("tensor-shape", "healthy", edit_weights(lambda s: s.update({"head.4.bias": torch.zeros(11)})), runs.WEIGHTS,
     "tensors 1 of the wrong shape (e.g. head.4.bias: [11] in the file, [10] in the model); restore"),
    ("weights-not-safetensors", "healthy", write_weights(data=b"\x00" * 64), runs.WEIGHTS, "could not be read"),
    ("weights-truncated", "healthy", write_weights(cut=5000), runs.WEIGHTS, "could not be read"),
    ("weights-nan", "healthy", NAN_WEIGHT, runs.WEIGHTS, "NaN or infinite values (e.g. conv1.0.weight)"),
    ("tensor-renamed", "healthy", edit_weights(lambda s: s.update(extra=s.pop("head.4.bias"))), runs.WEIGHTS,
     "tensors 1 missing (e.g. head.4.bias), 1 unexpected (e.g. extra); restore"),
]


def command(name, run_dir, base):
    return {
        "evaluate": ["evaluate", str(run_dir), "--device", "cpu"],
        "export": ["export", str(run_dir), "--no-check", "--opset", "17"],
        "predict": ["predict", str(run_dir), str(base / "item.png")],
    }[name]


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


@pytest.mark.parametrize("name", ["evaluate", "export", "predict"])
def test_healthy_runs_work(name, base, capsys):
    """The control: the unmodified runs pass every check (export into a copy, not to leave a file behind)."""
    for kind in ("healthy", "no-metadata"):
        run_dir = base / f"{kind}-{name}"
        shutil.copytree(base / kind, run_dir)
        assert main(command(name, run_dir, base)) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", ["evaluate", "export", "predict"])
@pytest.mark.parametrize("case,kind,damage,filename,message", CASES, ids=[c[0] for c in CASES])
def test_damaged_run_is_one_line_naming_the_file(case, kind, damage, filename, message, name, base, tmp_path,
                                                  capsys):
    if name == "export":
        pytest.importorskip("onnxscript")
    run_dir = tmp_path / case
    shutil.copytree(base / kind, run_dir)
    damage(run_dir)
    before = snapshot(run_dir)
    assert main(command(name, run_dir, base)) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(run_dir / filename) in err and message in err, err
    assert "restore the run directory's original files or retrain the run" in err, err
    assert captured.out == "" and snapshot(run_dir) == before


def test_image_size_is_bounded_before_any_work(tmp_path, capsys):
    """--image-size 100000 used to pass validation and die after 28 s and 6 GB in the allocator."""
    with pytest.raises(ConfigError, match="image_size 100000 is above the largest supported, 512"):
        TrainConfig(image_size=100000).validate()
    TrainConfig(image_size=512).validate()
    assert main(["train", "--image-size", "100000", "--out", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert "--image-size 512 or less" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / runs.CONFIG).write_text(json.dumps({**TrainConfig().to_dict(), "image_size": 100000}))
    assert main(["train", "--resume", str(resumed)]) == 1
    assert "image_size 100000 is above" in capsys.readouterr().err


def test_skeleton_check_allocates_nothing_for_a_huge_head(tmp_path, base):
    """num_classes 10**9 in config.json: the model is built on the meta device and compared with the file's
    shapes first, so the 4 GB head is never allocated."""
    run_dir = tmp_path / "huge-head"
    shutil.copytree(base / "healthy", run_dir)
    edit_config(num_classes=10**9)(run_dir)
    with pytest.raises(RunDirError, match=r"head.4.bias: \[10\] in the file, \[1000000000\] in the model"):
        runs.load_run_model(run_dir)


def test_weights_sha256_is_hashlibs_digest_of_the_file_and_a_missing_file_is_named(tmp_path):
    payload = bytes(range(256)) * 10_000 + b"tail"  # 2.4 MiB: more than one of the reader's 1 MiB chunks
    (tmp_path / "model.safetensors").write_bytes(payload)
    assert runs.weights_sha256(tmp_path) == hashlib.sha256(payload).hexdigest()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(RunDirError) as info:
        runs.weights_sha256(tmp_path)
    assert str(info.value) == (f"{tmp_path} has no model.safetensors: the run has not finished (or this is not a "
                               f"run directory). Finish it with `inceptionlab train --resume {tmp_path}`")


def test_a_run_without_a_summary_is_named(tmp_path):
    with pytest.raises(RunDirError) as info:
        runs.read_summary(tmp_path)
    assert str(info.value) == f"{tmp_path} has no summary.json"


def write_run(run_dir, name, image_size, **config_values):
    """A run directory holding a freshly initialised ``name`` built with config.json's values; returns the model."""
    torch.manual_seed(0)
    options = config_values.get("model_options", {})
    model = create_model(name, num_classes=config_values.get("num_classes", 10),
                         in_channels=config_values.get("in_channels", 1), **options).eval()
    run_dir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run_dir / runs.WEIGHTS,
              metadata={"model": name, "image_size": str(image_size)})
    (run_dir / runs.CONFIG).write_text(json.dumps({**CONFIG, "model": name, "image_size": image_size, **config_values}))
    return model


def test_a_run_of_three_channel_images_and_five_classes_loads_with_its_weights(tmp_path):
    """config.json's in_channels and num_classes reach the shape check and the model: not refused, same outputs."""
    model = write_run(tmp_path / "rgb", "lenet", 28, in_channels=3, num_classes=5)
    loaded, config = runs.load_run_model(tmp_path / "rgb")
    assert (config.in_channels, config.num_classes) == (3, 5)
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    assert expected.shape == (2, 5)


def test_the_loaded_model_has_the_runs_model_options_and_the_device_asked_for(tmp_path):
    write_run(tmp_path / "nin", "nin", 67, model_options={"dropout": 0.2})  # NiN's own default is 0.5
    loaded, _ = runs.load_run_model(tmp_path / "nin")
    assert [m.p for m in loaded.modules() if isinstance(m, torch.nn.Dropout)] == [0.2]
    assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
    # the device goes to Module.to: "meta" stands in for a GPU on this CPU-only test machine
    on_meta, _ = runs.load_run_model(tmp_path / "nin", device="meta")
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


def test_weights_that_fail_to_load_after_the_header_check_are_named(tmp_path, base, monkeypatch):
    """A read error in the tensor data (the header was fine): one message naming the file, not a traceback."""
    run_dir = tmp_path / "eio"
    shutil.copytree(base / "healthy", run_dir)

    def read_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(runs, "load_file", read_error)
    with pytest.raises(RunDirError) as info:
        runs.load_run_model(run_dir)
    assert str(info.value) == (f"{run_dir / 'model.safetensors'} could not be read ([Errno 5] Input/output error); "
                               "the file is damaged: restore the run directory's original files or retrain the run")


def test_save_weights_writes_the_state_dict_and_the_metadata_as_text(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet")
    runs.save_weights(tmp_path / "model.safetensors", model, {"model": "lenet", "image_size": 28})
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:  # safetensors' own reader
        assert f.metadata() == {"model": "lenet", "image_size": "28"}
        saved = {key: f.get_tensor(key) for key in f.keys()}
    expected = model.state_dict()
    assert saved.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(saved[key], tensor, rtol=0, atol=0)


def test_a_directory_without_config_json_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError) as info:
        runs.read_config(tmp_path)
    assert str(info.value) == f"{tmp_path} has no config.json: it is not a training run directory"
