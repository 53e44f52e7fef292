"""`inceptionlab export` and inceptionlab.export: ONNX checked in ONNX Runtime on real Fashion-MNIST test images."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys

import pytest
import torch
from PIL import Image

from inceptionlab import data, export, runs
from inceptionlab.cli import main
from inceptionlab.deploy import onnx as deploy_onnx
from inceptionlab.errors import ConfigError, InceptionLabError, RunDirError
from inceptionlab.fileio import leftover_temp_files
from inceptionlab.models import create_model, init_xavier_

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

SIZE = 28  # small so the export and the check take seconds on a CPU


def make_run(run_dir, fmnist, *, model_name="googlenet", image_size=SIZE, normalize=True, train_images=500, seed=0):
    """A run directory whose model has Xavier-initialised features and a linear head fitted on them (seconds of
    CPU, ~70 % test accuracy): the check compares meaningful predictions, not the noise of an untrained net."""
    torch.manual_seed(seed)
    model = init_xavier_(create_model(model_name)).eval()
    if train_images:
        with torch.no_grad():
            x = data.resize_batch(fmnist.train_images[:train_images], image_size)
            x = (x - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD if normalize else x
            features = model.forward_features(x)
        mu, sd = features.mean(0), features.std()  # one scale: dead features have std 0
        head = torch.nn.Linear(features.shape[1], 10)
        opt = torch.optim.Adam(head.parameters(), 1e-2)
        for _ in range(200):
            loss = torch.nn.functional.cross_entropy(head((features - mu) / sd), fmnist.train_labels[:train_images])
            opt.zero_grad()
            loss.backward()
            opt.step()
        # Fold the feature standardisation into the model's own head. The random features share a large
        # offset that the folded bias cancels; fp32 rounding of that cancellation grows with the head's scale,
        # so the head is also scaled down (same classes, softer probabilities) to keep logits near 1 and the
        # check's absolute 1e-4 meaningful.
        temperature = 0.25
        with torch.no_grad():
            model.head.weight.copy_(temperature * head.weight / sd)
            model.head.bias.copy_(temperature * (head.bias - (head.weight / sd) @ mu))
    run_dir.mkdir(parents=True)
    runs.save_weights(run_dir / runs.WEIGHTS, model, {"model": model_name, "image_size": str(image_size)})
    config = {"model": model_name, "model_options": {}, "num_classes": 10, "in_channels": 1,
              "image_size": image_size, "normalize": normalize}
    (run_dir / runs.CONFIG).write_text(json.dumps(config))
    return run_dir


@pytest.fixture(scope="module")
def fmnist():
    return data.load_fashion_mnist()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fmnist):
    """A normalized googlenet run and its ONNX file, exported with the default check (256 test images)."""
    base = tmp_path_factory.mktemp("export")
    run_dir = make_run(base / "run", fmnist)
    path = base / "out" / "model.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # through the CLI, as a user would
        assert main(["export", str(run_dir), "--onnx", str(path), "--json"]) == 0
    return run_dir, path, json.loads(stdout.getvalue())


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_export_checks_ort_against_pytorch_on_real_images(exported):
    run_dir, path, report = exported
    check = report["check"]
    assert check["images"] == 256 and check["same_top1"] == 256
    assert check["max_abs_logit_diff"] <= 1e-4 and check["near_ties"] == 0
    assert report["opset"] == export.DEFAULT_OPSET and report["normalization_in_graph"]
    assert report["input"] == {"name": "images", "shape": ["N", 1, SIZE, SIZE], "dtype": "float32", "range": [0, 1]}
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [export.DEFAULT_OPSET]
    assert path.stat().st_size == report["bytes"] and leftovers(path.parent) == []


def test_dynamic_batch_with_pixels_in(exported, fmnist):
    """The graph takes [0, 1] pixels (normalization inside) at batch 1 and 7, like the PyTorch model."""
    run_dir, path, _ = exported
    model, _ = runs.load_run_model(run_dir)
    x = data.resize_batch(fmnist.test_images[:64], SIZE)
    with torch.no_grad():
        expected = model((x - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD)
    accuracy = (expected.argmax(1) == fmnist.test_labels[:64]).float().mean()
    assert accuracy >= 0.5  # the briefly trained model means something
    x, expected = x[:7], expected[:7]
    for batch in (x[:1], x):
        got = torch.from_numpy(export.onnx_logits(path, batch.numpy()))
        assert got.shape == (len(batch), 10)
        assert (got - expected[: len(batch)]).abs().max() <= 1e-4
        assert torch.equal(got.argmax(1), expected[: len(batch)].argmax(1))


def test_metadata_ties_the_file_to_the_run(exported):
    run_dir, path, _ = exported
    meta = export.read_metadata(path)
    assert meta["model"] == "googlenet" and meta["image_size"] == str(SIZE) and meta["num_classes"] == "10"
    assert json.loads(meta["class_names"]) == list(data.CLASS_NAMES)
    norm = json.loads(meta["normalization"])
    assert norm == {"in_graph": True, "mean": [data.FASHION_MNIST_MEAN], "std": [data.FASHION_MNIST_STD]}
    record = json.loads(meta["data"])  # what a deployment needs to prepare an image as training did
    assert record["classes"] == list(data.CLASS_NAMES) and record["channels"] == 1 and record["stored_size"] == 28
    import hashlib

    assert meta["weights_sha256"] == hashlib.sha256((run_dir / runs.WEIGHTS).read_bytes()).hexdigest()
    session = export.open_session(path, run_dir=run_dir)
    assert session.get_inputs()[0].name == "images" and session.get_outputs()[0].name == "logits"
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch axis


def test_predict_through_onnx_matches_pytorch(exported, fmnist, tmp_path, capsys):
    run_dir, path, _ = exported
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(fmnist.test_images[i, 0].numpy()).save(files[-1])
    outputs = {}
    for backend, extra in (("onnxruntime", ["--onnx", str(path)]), ("pytorch", [])):
        assert main(["predict", str(run_dir), *files, "--json", *extra]) == 0
        outputs[backend] = json.loads(capsys.readouterr().out)
        assert outputs[backend]["backend"] == backend
    for a, b in zip(outputs["onnxruntime"]["predictions"], outputs["pytorch"]["predictions"], strict=True):
        assert [t["class"] for t in a["top_k"]] == [t["class"] for t in b["top_k"]]
        assert a["top_k"][0]["probability"] == pytest.approx(b["top_k"][0]["probability"], abs=1e-4)


def test_onnx_of_another_run_or_model_is_refused(exported, fmnist, tmp_path, capsys):
    run_dir, path, _ = exported
    image = tmp_path / "a.png"
    Image.fromarray(fmnist.test_images[0, 0].numpy()).save(image)

    other_weights = make_run(tmp_path / "other", fmnist, train_images=0, seed=1)
    other_size = tmp_path / "other-size"
    shutil.copytree(run_dir, other_size)
    config = json.loads((other_size / runs.CONFIG).read_text())
    (other_size / runs.CONFIG).write_text(json.dumps({**config, "image_size": 32}))
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_text("not a model")
    bare = onnx.load(str(path))
    del bare.metadata_props[:]
    no_meta = tmp_path / "bare.onnx"
    onnx.save(bare, str(no_meta))

    cases = [
        (other_weights, path, "other weights"),
        (other_size, path, "image_size is '28', the run's is '32'"),
        (run_dir, not_onnx, "not a readable ONNX file"),
        (run_dir, no_meta, "no inceptionlab metadata"),
        (run_dir, tmp_path / "missing.onnx", "no such ONNX file"),
    ]
    for run, onnx_file, message in cases:
        assert main(["predict", str(run), str(image), "--onnx", str(onnx_file)]) == 1
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_check_catches_a_wrong_graph(exported, fmnist):
    """The graph has the normalization inside; compared with the bare network the check must fail."""
    run_dir, path, _ = exported
    model, _ = runs.load_run_model(run_dir)
    session = export.open_session(path, run_dir=run_dir)
    with pytest.raises(InceptionLabError, match="disagrees"):
        export.check_onnx(session, model, data.resize_batch(fmnist.test_images[:16], SIZE))


def test_existing_file_is_kept_without_force(exported, capsys):
    run_dir, path, _ = exported
    before = path.read_bytes()
    assert main(["export", str(run_dir), "--onnx", str(path)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_failed_check_overwrites_nothing(exported, monkeypatch, capsys):
    """--force replaces a file only with a checked one: a failing check leaves the old file as it was."""
    run_dir, path, _ = exported
    before = path.read_bytes()

    def disagree(*args, **kwargs):
        raise InceptionLabError("ONNX Runtime disagrees with PyTorch (simulated). The file was not written")

    monkeypatch.setattr(deploy_onnx, "check_onnx", disagree)
    assert main(["export", str(run_dir), "--onnx", str(path), "--force"]) == 1
    assert "disagrees" in capsys.readouterr().err
    assert path.read_bytes() == before and leftovers(path.parent) == []


def test_an_export_removes_what_killed_exports_to_its_path_left_and_nothing_else(exported, tmp_path,
                                                                                write_in_a_process):
    """A kill before the rename leaves `.model.onnx.<random>.tmp` (24 MB for googlenet at 96 px); the next export to
    that path removes it, as resuming removes a run directory's. A write of that path still in progress elsewhere and
    other files' temporaries are kept."""
    run_dir, exported_path, _ = exported
    path = tmp_path / "model.onnx"
    shutil.copy(exported_path, path)  # so that only --force replaces it, as in the report
    write_in_a_process(path, live=False)
    [killed] = leftover_temp_files(tmp_path, [path.name])
    others = [".other.onnx.0f3a9bc1.tmp", ".model.onnx.tmp", "model.onnx.0f3a9bc1.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"not ours")
    write_in_a_process(path, live=True)
    [live] = set(leftover_temp_files(tmp_path, [path.name])) - {killed}
    assert main(["export", str(run_dir), "--onnx", str(path), "--force", "--no-check"]) == 0
    assert sorted(leftovers(tmp_path)) == sorted([*others, live.name])
    assert export.read_metadata(path)["weights_sha256"] == runs.weights_sha256(run_dir)


@pytest.mark.parametrize("model_name,size", [("googlenet-bn", 32), ("googlenet-paper", 32)])
def test_other_models_export_in_eval_mode(model_name, size, fmnist, tmp_path):
    """BatchNorm folds into eval-mode convs; googlenet-paper's auxiliary heads are training-only."""
    run_dir = make_run(tmp_path / model_name, fmnist, model_name=model_name, image_size=size, train_images=0)
    report = export.export_onnx(run_dir, tmp_path / "m.onnx", num_check_images=32)
    assert report["check"]["same_top1"] == 32 and report["check"]["max_abs_logit_diff"] <= 1e-4
    assert export.read_metadata(tmp_path / "m.onnx")["model"] == model_name


def test_run_without_weights_and_missing_onnx_packages(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / runs.CONFIG).write_text(json.dumps({"model": "googlenet", "image_size": SIZE}))
    with pytest.raises(RunDirError, match="model.safetensors"):
        export.export_onnx(tmp_path / "run", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ConfigError, match="is a directory"):
        export.export_onnx(tmp_path / "run", tmp_path, force=True)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(InceptionLabError, match=r"pip install 'inceptionlab\[onnx\]'"):
        deploy_onnx.require_onnx()


@pytest.mark.parametrize("opset", [1, 5, 6, 99])
def test_opsets_onnx_runtime_cannot_run_are_refused_up_front(exported, opset, capsys, tmp_path):
    """--opset 5 ended in an ONNX Runtime traceback, and with --no-check wrote a file predict could not load."""
    run_dir, _, _ = exported
    path = tmp_path / "m.onnx"
    for extra in ([], ["--no-check"]):
        assert main(["export", str(run_dir), "--onnx", str(path), "--opset", str(opset), *extra]) == 1
        err = capsys.readouterr().err
        assert f"--opset {opset} is not supported: choose 7-" in err and len(err.strip().splitlines()) == 1
        assert not path.exists() and leftovers(tmp_path) == []


def test_lowest_supported_opset_exports_and_passes_the_check(exported, fmnist, tmp_path, capsys):
    """Opset 7 (the TorchScript exporter) is where the accepted range starts: it must really work."""
    run_dir, _, _ = exported
    path = tmp_path / "m7.onnx"
    report = export.export_onnx(run_dir, path, opset=7, num_check_images=32)
    assert report["check"]["same_top1"] == 32 and export.read_metadata(path)["opset"] == "7"
    image = tmp_path / "a.png"
    Image.fromarray(fmnist.test_images[0, 0].numpy()).save(image)
    assert main(["predict", str(run_dir), str(image), "--onnx", str(path)]) == 0
    assert "%" in capsys.readouterr().out


def tiny_graph(node, *initializers, opset=17):
    """A hand-made graph taking ``images`` [N, 1, 28, 28] and giving ``logits`` through one ``node``."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [node], "forged", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)]
    # the lowest IR version for the opset: a newer onnx writes one an older ONNX Runtime refuses (seen on the GPU)
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def forged_graph(kind, fmnist, tmp_path):
    """Another run's real graph (same model, same shapes, other weights), or a hand-made one whose output has
    the wrong shape, or one that ONNX Runtime cannot run on our images."""
    from onnx import helper, numpy_helper

    if kind == "other-weights":
        model, config = runs.load_run_model(make_run(tmp_path / "other", fmnist, train_images=0, seed=1))
        return deploy_onnx.to_onnx_proto(deploy_onnx.pixel_model(model, config), deploy_onnx.probe_images(config), 17)
    if kind == "wrong-output":
        return tiny_graph(helper.make_node("Flatten", ["images"], ["logits"]))
    shape = numpy_helper.from_array(torch.tensor([3, -1]).numpy(), name="shape")  # 784 N values: not 3 rows
    return tiny_graph(helper.make_node("Reshape", ["images", "shape"], ["logits"]), shape)


@pytest.mark.parametrize("kind", ["other-weights", "wrong-output", "fails-to-run"])
def test_forged_metadata_on_another_graph_is_refused(kind, exported, fmnist, tmp_path, capsys):
    """Metadata is text anyone can copy: a real export's props pasted onto another graph pass every metadata
    check; only running the graph beside the run's PyTorch model tells them apart."""
    run_dir, path, _ = exported
    forged = forged_graph(kind, fmnist, tmp_path)
    forged.metadata_props.extend(onnx.load(str(path)).metadata_props)
    forged_path = tmp_path / "forged.onnx"
    onnx.save(forged, str(forged_path))
    assert export.read_metadata(forged_path) == export.read_metadata(path)
    image = tmp_path / "a.png"
    Image.fromarray(fmnist.test_images[0, 0].numpy()).save(image)
    assert main(["predict", str(run_dir), str(image), "--onnx", str(forged_path)]) == 1
    captured = capsys.readouterr()
    assert "computes other logits than" in captured.err or "could not run the graph" in captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_a_graph_onnx_runtime_cannot_load_is_never_written(exported, monkeypatch, tmp_path, capsys):
    """Behind the opset range: whatever the exporter writes is loaded in ONNX Runtime before the file is, even
    with --no-check (opset 5 once wrote a file that predict could not open)."""
    run_dir, _, _ = exported
    monkeypatch.setattr(deploy_onnx, "check_opset", lambda opset: None)
    path = tmp_path / "m5.onnx"
    assert main(["export", str(run_dir), "--onnx", str(path), "--opset", "5", "--no-check"]) == 1
    err = capsys.readouterr().err
    assert "ONNX Runtime cannot load the graph exported at opset 5; the file was not written" in err
    assert not path.exists() and leftovers(tmp_path) == []


def exported_tta_run(tmp_path, fmnist, **tta):
    """A googlenet-lite run whose config.json asks for the test-time augmentation ``tta``, exported (its ONNX
    Runtime check passed): the ONNX file, and the saved network as a function of plain [0, 1] pixels."""
    run_dir = make_run(tmp_path / "run", fmnist, model_name="googlenet-lite", normalize=True)
    config = json.loads((run_dir / runs.CONFIG).read_text())
    (run_dir / runs.CONFIG).write_text(json.dumps({**config, **tta}))
    report = export.export_onnx(run_dir, tmp_path / "tta.onnx")
    assert report["check"]["max_abs_logit_diff"] <= report["check"]["tolerance"]
    model, _ = runs.load_run_model(run_dir)
    model.eval()
    return tmp_path / "tta.onnx", lambda x: model((x - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD)


def test_a_shift_tta_run_exports_the_average_over_the_one_pixel_shifts(tmp_path, fmnist):
    """A run whose final evaluation used shift_tta ships it: the ONNX graph's logits are the saved network's averaged
    over each image and its four one-pixel shifts (written with slices here), for any batch size."""
    path, net = exported_tta_run(tmp_path, fmnist, shift_tta=True)
    for count in (3, 7):
        x = data.resize_batch(fmnist.test_images[:count], SIZE)
        views = [x, torch.cat([x[..., :1], x[..., :-1]], -1), torch.cat([x[..., 1:], x[..., -1:]], -1),
                 torch.cat([x[..., :1, :], x[..., :-1, :]], -2), torch.cat([x[..., 1:, :], x[..., -1:, :]], -2)]
        with torch.no_grad():
            logits = [net(v) for v in views]
        onnx_out = torch.from_numpy(deploy_onnx.onnx_logits(path, x.numpy()))
        assert (logits[0] - logits[1]).abs().max() > 1e-3  # a shift changes this network's answer
        torch.testing.assert_close(onnx_out, sum(logits) / 5, rtol=1e-4, atol=1e-4)


def test_a_flip_tta_run_exports_the_average_with_the_mirror_image(tmp_path, fmnist):
    """A run evaluated with flip_tta ships it: the ONNX graph's logits are the saved network's on each image and on
    its mirror image, averaged (plain forward passes here), for any batch size."""
    path, net = exported_tta_run(tmp_path, fmnist, flip_tta=True)
    for count in (3, 7):
        x = data.resize_batch(fmnist.test_images[:count], SIZE)
        with torch.no_grad():
            plain, mirrored = net(x), net(x.flip(-1))
        onnx_out = torch.from_numpy(deploy_onnx.onnx_logits(path, x.numpy()))
        assert (plain - mirrored).abs().max() > 1e-3  # the mirror changes this network's answer
        torch.testing.assert_close(onnx_out, (plain + mirrored) / 2, rtol=1e-4, atol=1e-4)
