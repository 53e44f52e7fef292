"""The trainer on real Fashion-MNIST subsets: it learns, resumes exactly, survives SIGKILL/SIGINT/SIGTERM,
stops on a diverging loss, writes the run directory, and takes one step with every registry model.

Trainings here use one thread: the suite shares a 2-core box, where two OpenMP threads per process stall
each other badly once the cores are oversubscribed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inceptionlab import data, runs
from inceptionlab.analysis import input_size_report
from inceptionlab.cli import main
from inceptionlab.config import CUDA_SWITCHES, TrainConfig
from inceptionlab.data import load_fashion_mnist
from inceptionlab.engine.evaluate import evaluate_run
from inceptionlab.errors import ConfigError
from inceptionlab.models import create_model, list_models
from inceptionlab.train import TrainingDiverged, build_optimizer, evaluate, make_train_step, train

RUN_FILES = {"config.json", "metrics.jsonl", "metrics.csv", "curves.png", "model.safetensors", "checkpoint.pt",
             "summary.json", "confusion.png", "per_class.json"}


@pytest.fixture(scope="module")
def fmnist():
    return load_fashion_mnist()


def lenet_config(tmp_path, **changes) -> TrainConfig:
    """LeNet at 28 px: a real model that costs almost nothing, for the fault-handling tests."""
    values = dict(model="lenet", image_size=28, epochs=3, batch_size=64, limit_train=640, limit_test=256,
                  lr=0.3, optimizer="momentum", schedule="cosine", num_threads=1, out=str(tmp_path / "runs"))
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def lenet_run(fmnist, tmp_path_factory):
    """One finished LeNet run (2 epochs), shared by the tests that only read it or copy it."""
    tmp = tmp_path_factory.mktemp("lenet")
    return train(lenet_config(tmp, epochs=2), data=fmnist, log=None)


def test_smoke_run_learns_and_writes_the_run_directory(fmnist, tmp_path):
    config = TrainConfig(
        model="googlenet-bn", image_size=28, epochs=3, batch_size=64, limit_train=1920, limit_test=1000,
        lr=0.05, optimizer="nesterov", schedule="onecycle", warmup_epochs=0.5, precision="bf16",
        channels_last=True, num_threads=1, out=str(tmp_path), device="cpu",  # the "on cpu" line below
    )
    lines = []
    result = train(config, data=fmnist, log=lines.append)
    assert result.status == "completed" and result.exit_code == 0
    # held-out: the first 1,000 images of the test split, never trained on; chance is 0.1 (measured: 0.714)
    assert result.summary["test_acc"] >= 0.6, result.metrics
    run_dir = result.run_dir
    assert run_dir.parent == tmp_path and run_dir.name.endswith("-googlenet-bn")
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    # d2l-style summary lines
    assert lines[-2].startswith("loss ") and ", train acc " in lines[-2] and ", test acc " in lines[-2]
    assert lines[-1].endswith("examples/sec on cpu")
    # where the time went: the setup's parts add up to (no more than) the setup, switches resolved (all off on a CPU)
    timings = result.summary["timings"]
    assert set(timings["setup"]) == {"model_seconds", "data_seconds", "step_seconds", "run_dir_seconds"}
    assert 0 < sum(timings["setup"].values()) <= timings["setup_seconds"]
    assert timings["train_seconds"] > 0 and timings["eval_seconds"] > 0 and timings["write_wait_seconds"] >= 0
    assert {k: result.summary[k] for k in CUDA_SWITCHES} == dict.fromkeys(CUDA_SWITCHES, False)
    rows = runs.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows == result.metrics
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_acc")
    saved = TrainConfig.from_dict(runs.read_config(run_dir))
    assert saved == config.replace(data_info=data.fashion_mnist_info().to_dict())  # the run records its data
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and len(ckpt["metrics"]) == 3
    per_class = json.loads((run_dir / "per_class.json").read_text())
    assert len(per_class["per_class_acc"]) == 10 and sum(map(sum, per_class["confusion"])) == 1000
    # the saved model, reloaded from safetensors, reproduces the final test accuracy
    small = type(fmnist)(fmnist.train_images, fmnist.train_labels, fmnist.test_images[:1000],
                         fmnist.test_labels[:1000], fmnist.info)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)  # as the trainer ran: the arithmetic is then the same on any machine
    try:
        report = evaluate_run(run_dir, data=small, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert report["test_acc"] == pytest.approx(result.summary["test_acc"], abs=1e-9)
    # to the last bit: the same layout (channels_last) and precision as the trainer's evaluation
    assert report["test_loss"] == rows[-1]["test_loss"]


def test_resumed_run_ends_where_an_uninterrupted_run_ends(fmnist, tmp_path):
    config = lenet_config(tmp_path)
    straight = train(config, data=fmnist, log=None)

    def interrupt_after_first_epoch(line):
        if line.startswith("epoch   1/"):
            os.kill(os.getpid(), signal.SIGINT)  # caught by the trainer: it stops at the next step

    stopped = train(config, data=fmnist, log=interrupt_after_first_epoch)
    assert stopped.status == "interrupted" and stopped.exit_code == 130
    summary = runs.read_summary(stopped.run_dir)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT" and summary["epochs_completed"] == 1
    assert not (stopped.run_dir / "model.safetensors").exists()

    resumed = train(resume=stopped.run_dir, data=fmnist, log=None)
    assert resumed.status == "completed" and resumed.run_dir == stopped.run_dir
    for a, b in zip(straight.metrics, resumed.metrics, strict=True):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert runs.read_summary(stopped.run_dir)["status"] == "completed"


def _spawn_training(tmp_path, epochs=200):
    """A real `inceptionlab train` process; returns it and its run directory once epoch 1 is checkpointed."""
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "inceptionlab", "train", "--model", "lenet", "--image-size", "28",
           "--epochs", str(epochs), "--batch-size", "32", "--limit-train", "256", "--limit-test", "64",
           "--lr", "0.1", "--optimizer", "momentum", "--num-threads", "1", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(out.glob("*/checkpoint.pt"))
        if found:
            return proc, found[0].parent
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint within 120 s")


def test_sigkill_never_leaves_a_corrupt_checkpoint_and_resume_finishes(tmp_path):
    proc, run_dir = _spawn_training(tmp_path)
    time.sleep(0.7)  # somewhere inside a later epoch, possibly inside a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    done = ckpt["epoch"]
    assert done >= 1 and len(ckpt["metrics"]) == done
    # finish quickly: extend to one more epoch than the checkpoint holds
    res = subprocess.run([sys.executable, "-m", "inceptionlab", "train", "--resume", str(run_dir), "--epochs",
                          str(done + 1), "--num-threads", "1"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "completed" and summary["epochs_completed"] == done + 1
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == list(range(1, done + 2))
    model, _ = runs.load_run_model(run_dir)
    assert model.head[-1].out_features == 10


def test_sigterm_saves_and_exits_143(tmp_path):
    proc, run_dir = _spawn_training(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    summary = runs.read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == summary["epochs_completed"]


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    runs.save_checkpoint(tmp_path, {"epoch": 1, "w": torch.ones(3)})

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        runs.save_checkpoint(tmp_path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    state = torch.load(tmp_path / runs.CHECKPOINT, weights_only=True)  # a toy checkpoint: read it raw
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_diverging_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(fmnist, lenet_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_run.run_dir, run_dir)
    config = TrainConfig.from_dict(runs.read_config(run_dir)).replace(epochs=3, lr=1e38, schedule="constant")
    with pytest.raises(TrainingDiverged, match=r"learning rate .* too high.*--lr 1e\+37") as info:
        train(config, resume=run_dir, data=fmnist, log=None)
    assert "epoch 3" in str(info.value)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert runs.read_summary(run_dir)["status"] == "diverged"


def test_diverged_run_exits_1_from_the_cli(tmp_path, capsys):
    code = main(["train", "--model", "lenet", "--image-size", "28", "--epochs", "1", "--limit-train", "128",
                 "--limit-test", "32", "--batch-size", "32", "--lr", "1e38", "--num-threads", "1",
                 "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "too high" in err and "Traceback" not in err


def test_evaluate_command_on_a_finished_run(lenet_run, capsys):
    assert main(["evaluate", str(lenet_run.run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 10_000 and report["model"] == "lenet"
    assert set(report["per_class_acc"]) == {"t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                            "sneaker", "bag", "ankle boot"}
    confusion = torch.tensor(report["confusion"])
    assert confusion.sum() == 10_000 and confusion.sum(dim=1).tolist() == [1000] * 10
    assert report["test_acc"] == pytest.approx(confusion.diag().sum().item() / 10_000)
    assert main(["evaluate", str(lenet_run.run_dir)]) == 0
    assert "test acc" in capsys.readouterr().out
    assert main(["evaluate", str(lenet_run.run_dir), "--json", "--flip-tta"]) == 0
    mirrored = json.loads(capsys.readouterr().out)
    assert mirrored["flip_tta"] and not report["flip_tta"] and mirrored["count"] == 10_000
    assert main(["evaluate", str(lenet_run.run_dir), "--flip-tta"]) == 0
    assert "each with its mirror image (--flip-tta)" in capsys.readouterr().out


def test_two_runs_in_the_same_second_get_different_directories(tmp_path):
    a, b = runs.create_run_dir(tmp_path, "googlenet"), runs.create_run_dir(tmp_path, "googlenet")
    assert a != b and a.is_dir() and b.is_dir()


@pytest.mark.parametrize("name", list_models())
def test_one_training_step_for_every_model(name, fmnist):
    size = max(input_size_report(name, verify=False).min_size, 28)
    config = TrainConfig(model=name, image_size=size, lr=0.01, optimizer="momentum", precision="fp32")
    torch.manual_seed(0)
    model = create_model(name)
    step = make_train_step(model, build_optimizer(model, config, torch.device("cpu")), config)
    before = [p.detach().clone() for p in model.parameters()]
    from inceptionlab.data import resize_batch

    x, y = resize_batch(fmnist.train_images[:2], size), fmnist.train_labels[:2]
    with torch.no_grad():
        if getattr(model, "aux_loss_weight", None):  # aux heads are trained, so they must get gradients
            assert isinstance(model.train()(x), tuple)
    loss_sum, correct = step(x, y)
    assert torch.isfinite(loss_sum) and 0 <= int(correct) <= 2
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    result = evaluate(model, fmnist.test_images[:4], fmnist.test_labels[:4], config)
    assert result["count"] == 4 and model.training  # evaluation restores the training mode


def test_evaluate_counts_match_a_direct_computation(fmnist):
    """Accuracy, loss and the confusion matrix (built without a host sync) against a plain forward pass."""
    from inceptionlab.data import resize_batch

    config = TrainConfig(model="lenet", image_size=28, eval_batch_size=37, precision="fp32")  # ragged last batch
    torch.manual_seed(0)
    model = create_model("lenet").eval()
    images, labels = fmnist.test_images[:300], fmnist.test_labels[:300]
    result = evaluate(model, images, labels, config)
    with torch.no_grad():
        logits = model(resize_batch(images, 28))
    pred = logits.argmax(dim=1)
    assert result["correct"] == int((pred == labels).sum()) and result["count"] == 300
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert torch.equal(result["confusion"], torch.bincount(labels * 10 + pred, minlength=100).view(10, 10))


def test_flip_tta_averages_each_images_logits_with_its_mirror_images(fmnist):
    from inceptionlab.data import resize_batch

    config = TrainConfig(model="lenet", image_size=28, eval_batch_size=37, precision="fp32")  # ragged last batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))  # any classifier; this one is not mirror-symmetric
    images, labels = fmnist.test_images[:300], fmnist.test_labels[:300]
    result = evaluate(model, images, labels, config, flip=True)
    with torch.no_grad():
        x = resize_batch(images, 28)
        plain, mirrored = model(x), model(x.flip(-1))
    assert (plain - mirrored).abs().max() > 0.1
    logits = (plain + mirrored) / 2
    pred = logits.argmax(dim=1)
    assert (pred != plain.argmax(dim=1)).any()  # the average decides some images differently
    assert result["correct"] == int((pred == labels).sum()) and result["count"] == 300
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert torch.equal(result["confusion"], torch.bincount(labels * 10 + pred, minlength=100).view(10, 10))


def test_a_failed_checkpoint_write_stops_the_run_and_nothing_later_is_written(fmnist, tmp_path, monkeypatch):
    """The per-epoch files are written on a worker thread; its failure still reaches the caller, and the metrics
    files (rebuilt from the checkpoint on resume) never get ahead of the checkpoint."""
    real = runs.save_checkpoint
    calls = []

    def save_checkpoint(run_dir, state):
        calls.append(state["epoch"])
        if state["epoch"] == 2:
            raise OSError(28, "No space left on device")
        real(run_dir, state)

    monkeypatch.setattr(runs, "save_checkpoint", save_checkpoint)
    with pytest.raises(OSError, match="No space left"):
        train(lenet_config(tmp_path, epochs=4), data=fmnist, log=None)
    run_dir = next((tmp_path / "runs").iterdir())
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the last complete one
    assert [r["epoch"] for r in runs.read_metrics(run_dir)] == [1]
    # the snapshot was taken on the host: a checkpoint holds CPU tensors whatever the device
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(t.device.type == "cpu" for t in saved.values())


def test_drop_last_skips_the_short_batch_and_refuses_an_empty_epoch(fmnist, tmp_path):
    """300 images in batches of 64: five steps (the last of 44 images) as d2l trains, four with --drop-last."""
    steps = {}
    for drop in (False, True):
        result = train(lenet_config(tmp_path, epochs=1, limit_train=300, limit_test=64, drop_last=drop),
                       data=fmnist, log=None)
        assert result.status == "completed"
        state = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
        steps[drop] = state["schedule"]["steps_per_epoch"]
    assert steps == {False: 5, True: 4}
    with pytest.raises(ConfigError, match="--no-drop-last"):
        train(lenet_config(tmp_path, epochs=1, limit_train=50, drop_last=True), data=fmnist, log=None)


# ---------------------------------------------------------------------------------------------------------
# The loss the trainer minimises: a manual SGD step on PyTorch's functional cross-entropy is the reference.


def _manual_sgd_step(model: nn.Module, x, y, lr: float, smoothing: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        return [p - lr * g for p, g in zip(model.parameters(), grads, strict=True)], loss.detach()


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_eager_step_is_sgd_on_the_configs_smoothed_cross_entropy(fmnist, smoothing):
    import copy

    from inceptionlab.models import init_xavier_

    config = TrainConfig(model="lenet", image_size=28, lr=0.5, optimizer="sgd", label_smoothing=smoothing,
                         precision="fp32")
    torch.manual_seed(0)
    model = init_xavier_(create_model("lenet")).double()
    reference = copy.deepcopy(model)
    x, y = fmnist.train_images[:32].double() / 255, fmnist.train_labels[:32]
    expected, expected_loss = _manual_sgd_step(reference, x, y, 0.5, smoothing)
    other, _ = _manual_sgd_step(reference, x, y, 0.5, 0.3 - smoothing)
    assert max(float((a - b).abs().max()) for a, b in zip(expected, other, strict=True)) > 1e-3  # can tell them apart
    loss_sum, correct = make_train_step(model, build_optimizer(model, config, torch.device("cpu")), config)(x, y)
    for (name, p), e in zip(model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-12, msg=name)
    assert float(loss_sum) == pytest.approx(32 * float(expected_loss), rel=1e-6)
    assert int(correct) == int((reference(x).argmax(dim=1) == y).sum())


def test_eager_step_with_a_grad_scaler_is_the_same_sgd_step(fmnist):
    """The fp16 path's GradScaler (here on the CPU, in float64): scaling by a power of two and unscaling is exact."""
    import copy

    from inceptionlab.models import init_xavier_

    config = TrainConfig(model="lenet", image_size=28, lr=0.5, optimizer="sgd", precision="fp32")
    torch.manual_seed(0)
    model = init_xavier_(create_model("lenet")).double()
    reference = copy.deepcopy(model)
    x, y = fmnist.train_images[:16].double() / 255, fmnist.train_labels[:16]
    expected, _ = _manual_sgd_step(reference, x, y, 0.5, 0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    make_train_step(model, build_optimizer(model, config, torch.device("cpu")), config, scaler)(x, y)
    for (name, p), e in zip(model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-12, msg=name)


def test_eager_step_weights_the_aux_losses_by_the_models_aux_loss_weight(fmnist):
    import copy

    config = TrainConfig(model="googlenet-paper", image_size=32, lr=0.01, precision="fp32")
    torch.manual_seed(0)
    model = create_model("googlenet-paper").double().train()
    model.aux_loss_weight = 1.0  # not the default 0.3: the step must read the model's own weight
    reference = copy.deepcopy(model)
    x = F.interpolate(fmnist.train_images[:4].double() / 255, size=32)
    y = fmnist.train_labels[:4]
    torch.manual_seed(1)
    loss_sum, _ = make_train_step(model, build_optimizer(model, config, torch.device("cpu")), config)(x, y)
    torch.manual_seed(1)  # the same dropout masks
    with torch.no_grad():
        main, (aux1, aux2) = reference(x)
    expected = F.cross_entropy(main, y) + 1.0 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))
    assert float(loss_sum) == pytest.approx(4 * float(expected), rel=1e-6)


def test_trainers_step_minimises_the_smoothed_loss_of_its_config(fmnist, tmp_path):
    """One epoch of one batch through `train`: the weights are one SGD step on F.cross_entropy with the config's
    label smoothing, and the epoch's train_loss is that loss at the initial weights."""
    from inceptionlab.models import init_xavier_

    config = lenet_config(tmp_path, epochs=1, limit_train=64, limit_test=64, lr=0.5, optimizer="sgd", precision="fp32",
                          schedule="constant", label_smoothing=0.3, device="cpu")  # the reference is CPU float32
    result = train(config, data=fmnist, log=None)
    torch.manual_seed(config.seed)  # the trainer's initial model: seeded, then the chapter's Xavier init
    initial = init_xavier_(create_model("lenet"))
    x, y = fmnist.train_images[:64].float() / 255, fmnist.train_labels[:64]
    expected, loss = _manual_sgd_step(initial, x, y, 0.5, 0.3)
    unsmoothed, _ = _manual_sgd_step(initial, x, y, 0.5, 0.0)
    for (name, p), e in zip(result.model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-6, msg=name)
    # the unsmoothed step lands far outside that tolerance: the comparison can tell the two losses apart
    assert max(float((e - u).abs().max()) for e, u in zip(expected, unsmoothed, strict=True)) > 1e-3
    assert result.metrics[0]["train_loss"] == pytest.approx(float(loss), abs=1e-6)


def _file_hashes(run_dir) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())}


def test_resuming_a_finished_run_trains_no_more_and_keeps_its_numbers_and_files(fmnist, lenet_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(lenet_run.run_dir, run_dir)
    before, summary_before = _file_hashes(run_dir), runs.read_summary(run_dir)
    lines = []
    resumed = train(resume=run_dir, data=fmnist, log=lines.append)
    assert resumed.status == "completed" and resumed.run_dir == run_dir
    assert any("all 2 epochs were already done" in line for line in lines)
    assert not any(line.startswith("epoch ") for line in lines)  # no epoch ran
    assert resumed.metrics == lenet_run.metrics
    summary = runs.read_summary(run_dir)
    numbers = ("status", "epochs", "epochs_completed", "train_loss", "train_acc", "test_acc", "best_test_acc",
               "images_per_sec", "per_class_acc", "num_parameters")
    assert {k: summary[k] for k in numbers} == {k: summary_before[k] for k in numbers}
    # every file but the summary (whose timings are this process's) is byte for byte what the run left; the
    # weights too: safetensors writes its metadata map in no fixed order, so a rewrite could change their bytes (and
    # runs.weights_sha256, which ties an ONNX export to them)
    after = _file_hashes(run_dir)
    assert set(after) == set(before) == RUN_FILES | {".lock"}  # the (empty) lock file of the run directory
    rewritten = ("summary.json",)
    assert {k: v for k, v in after.items() if k not in rewritten} == {
        k: v for k, v in before.items() if k not in rewritten}
    from safetensors import safe_open

    with safe_open(lenet_run.run_dir / "model.safetensors", "pt") as a, safe_open(run_dir / "model.safetensors",
                                                                               "pt") as b:
        assert a.metadata() == b.metadata() == {"model": "lenet", "image_size": "28"}
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    for (name, a), b in zip(lenet_run.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_flip_tta_run_evaluates_and_predicts_the_average_with_the_mirror_image(fmnist, tmp_path, capsys):
    """``flip_tta``: the trainer's test (and validation) numbers, evaluate's default and the predictor are each image's
    logits averaged with its mirror image's, recomputed here with plain forward passes of the saved network."""
    from inceptionlab.data import resize_batch
    from inceptionlab.engine.rundata import validation_split
    from inceptionlab.inputs import normalization, normalize, pixel_model

    config = lenet_config(tmp_path, model="googlenet-lite", model_options={"width": 0.125, "blocks": [1, 1, 0]},
                          epochs=1, limit_train=1280, lr=0.05, flip=True, flip_tta=True, normalize=True,
                          precision="fp32", channels_last=False, val_split=200)  # a small net that learns in 1 epoch
    result = train(config, data=fmnist, log=None)
    model, saved = runs.load_run_model(result.run_dir)
    mean, std = normalization(saved)
    images, labels = fmnist.test_images[:256], fmnist.test_labels[:256]
    with torch.no_grad():
        x = resize_batch(images, 28)
        plain, mirrored = model.eval()(normalize(x, mean, std)), model(normalize(x.flip(-1), mean, std))
    tta = (plain + mirrored) / 2
    row = result.metrics[-1]
    assert row["test_loss"] == pytest.approx(float(F.cross_entropy(tta, labels)), rel=1e-5)
    assert row["test_acc"] == int((tta.argmax(1) == labels).sum()) / 256
    assert abs(float(F.cross_entropy(plain, labels)) - row["test_loss"]) > 1e-3  # the check tells the two apart
    _, val_index = validation_split(len(fmnist.train_labels), 200)
    with torch.no_grad():
        v = resize_batch(fmnist.train_images[val_index], 28)
        val = (model(normalize(v, mean, std)) + model(normalize(v.flip(-1), mean, std))) / 2
    assert row["val_loss"] == pytest.approx(float(F.cross_entropy(val, fmnist.train_labels[val_index])), rel=1e-5)
    default, without = evaluate_run(result.run_dir, data=fmnist), evaluate_run(result.run_dir, data=fmnist,
                                                                               flip_tta=False)
    assert default["flip_tta"] and not without["flip_tta"] and default["count"] == 10_000
    with torch.no_grad():
        full = resize_batch(fmnist.test_images, 28)
        both = (model(normalize(full, mean, std)) + model(normalize(full.flip(-1), mean, std))) / 2
        assert default["test_acc"] == int((both.argmax(1) == fmnist.test_labels).sum()) / 10_000
        torch.testing.assert_close(pixel_model(model, saved)(x), tta, rtol=1e-5, atol=1e-5)
    assert main(["evaluate", str(result.run_dir), "--json", "--no-flip-tta"]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == without["test_acc"]
