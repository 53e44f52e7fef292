"""inceptionlab.engine.step, .cuda and .checks on the CPU:
the static-buffer step (everything the CUDA graph captures, minus the capture)
must train exactly like the trainer's eager step, and the pre-resized data must be the same pixels."""

from __future__ import annotations

import pytest
import torch

from inceptionlab.config import CUDA_SWITCHES, STEP_MODES, TrainConfig, preset_config
from inceptionlab.data import DeviceLoader, resize_batch
from inceptionlab.data.resize import pre_resize
from inceptionlab.engine import checks
from inceptionlab.engine import cuda as cuda_switches
from inceptionlab.engine import step as fast
from inceptionlab.engine.optim import build_optimizer, lr_at
from inceptionlab.engine.step import make_train_step
from inceptionlab.errors import ConfigError
from inceptionlab.models import create_model, init_xavier_
from inceptionlab.models._blocks import MultiBranch

BATCH = 8
NUM_IMAGES = 4 * BATCH + 5  # four full batches and a smaller last one (run eagerly by the static step)


def _model_and_optimizer(config: TrainConfig):
    torch.manual_seed(config.seed)
    model = create_model(config.model)
    init_xavier_(model)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model, config, torch.device("cpu"))


@pytest.mark.parametrize(
    ("options", "pre_steps"),
    [
        # the chapter's recipe: plain SGD, constant lr
        ({"model": "googlenet"}, 0),
        # BatchNorm buffers, nesterov momentum, weight decay groups, a schedule that changes lr every step, and an
        # optimizer that already has momentum (as after --resume) when the static step takes over
        ({"model": "googlenet-bn", "optimizer": "nesterov", "weight_decay": 5e-4, "schedule": "onecycle",
          "warmup_epochs": 1.0, "channels_last": True}, 1),
        # AdamW keeps a float lr on the CPU (foreach Adam refuses a tensor lr unless capturable)
        ({"model": "googlenet", "optimizer": "adamw", "lr": 1e-3, "precision": "bf16"}, 0),
    ],
    ids=["sgd", "bn-nesterov-onecycle-resumed", "adamw-bf16"],
)
def test_static_step_trains_like_the_eager_step(fmnist, options, pre_steps):
    config = TrainConfig(image_size=32, batch_size=BATCH, epochs=2, **{"precision": "fp32", **options}).validate()
    images, labels = fmnist.train_images[:NUM_IMAGES], fmnist.train_labels[:NUM_IMAGES]
    loader = DeviceLoader(images, labels, BATCH, image_size=32)
    steps_per_epoch = len(loader)

    eager_model, eager_opt = _model_and_optimizer(config)
    static_model, static_opt = _model_and_optimizer(config)
    eager_step = make_train_step(eager_model, eager_opt, config)
    warm_step = make_train_step(static_model, static_opt, config)
    static_step = fast.StaticTrainStep(static_model, static_opt, config, batch_size=BATCH, capture=False)

    step = 0
    for _ in range(2):  # two epochs: the static step sees a partial batch, then full batches again
        for x, y in loader:
            lr = lr_at(config, step, steps_per_epoch)
            for opt in (eager_opt, static_opt):
                for group in opt.param_groups:
                    group["lr"] = lr
            expected = eager_step(x, y)
            got = (warm_step if step < pre_steps else static_step)(x, y)
            assert float(got[0]) == pytest.approx(float(expected[0]), rel=1e-6, abs=1e-6)
            assert int(got[1]) == int(expected[1])
            step += 1
    assert static_step._ready  # the warm-up + roll-back really ran

    eager_state, static_state = eager_model.state_dict(), static_model.state_dict()
    for name, value in eager_state.items():
        torch.testing.assert_close(static_state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for p_eager, p_static in zip(eager_model.parameters(), static_model.parameters(), strict=True):
        for key, value in eager_opt.state[p_eager].items():
            torch.testing.assert_close(static_opt.state[p_static][key], value, rtol=1e-5, atol=1e-6)
    # the trainer keeps seeing float learning rates (checkpoints, logs)
    assert all(isinstance(g["lr"], float) for g in static_opt.param_groups)


def test_warm_up_changes_nothing(fmnist):
    """After the first call has warmed up and rolled back, the model equals one eager step from the start."""
    config = TrainConfig(model="googlenet-bn", image_size=32, batch_size=BATCH, optimizer="momentum",
                         precision="fp32").validate()
    x = resize_batch(fmnist.train_images[:BATCH], 32)
    y = fmnist.train_labels[:BATCH]
    eager_model, eager_opt = _model_and_optimizer(config)
    static_model, static_opt = _model_and_optimizer(config)
    make_train_step(eager_model, eager_opt, config)(x, y)
    fast.StaticTrainStep(static_model, static_opt, config, batch_size=BATCH, capture=False, warmup_steps=5)(x, y)
    for name, value in eager_model.state_dict().items():
        torch.testing.assert_close(static_model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resolve_step_mode():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fast.resolve_step_mode(TrainConfig(), cpu) == "eager"
    assert fast.resolve_step_mode(TrainConfig(), cuda) == "cudagraph"
    assert fast.resolve_step_mode(TrainConfig(precision="bf16"), cuda) == "cudagraph"
    # fp16's GradScaler and DDP are not captured: auto falls back, an explicit request is an error
    assert fast.resolve_step_mode(TrainConfig(precision="fp16"), cuda) == "eager"
    assert fast.resolve_step_mode(TrainConfig(), cuda, world_size=2) == "eager"
    assert fast.resolve_step_mode(TrainConfig(step_mode="compile"), cpu) == "compile"
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        fast.resolve_step_mode(TrainConfig(step_mode="cudagraph"), cpu)
    with pytest.raises(ConfigError, match=r"GradScaler.*; use --precision bf16$"):
        fast.resolve_step_mode(TrainConfig(step_mode="cudagraph", precision="fp16"), cuda)
    # DDP: an explicit cudagraph is refused under torchrun, and only there
    assert fast.resolve_step_mode(TrainConfig(step_mode="cudagraph"), cuda) == "cudagraph"
    with pytest.raises(ConfigError, match=r"not supported under torchrun \(DDP\); use eager \(or auto\)$"):
        fast.resolve_step_mode(TrainConfig(step_mode="cudagraph"), cuda, world_size=2)
    with pytest.raises(ConfigError, match="step_mode"):
        TrainConfig(step_mode="fastest").validate()
    # a config that skipped validation: the error lists every mode, readably
    with pytest.raises(ConfigError, match="unknown step_mode 'fastest'; choose from: ") as refused:
        fast.resolve_step_mode(TrainConfig(step_mode="fastest"), cpu)
    assert str(refused.value).split("choose from: ")[1].split(", ") == list(STEP_MODES)


def test_graph_capture_refused_on_cpu():
    config = TrainConfig(image_size=32, precision="fp32")
    model, optimizer = _model_and_optimizer(config)
    with pytest.raises(ConfigError, match="graph capture needs the model on a CUDA device$"):
        fast.StaticTrainStep(model, optimizer, config, batch_size=BATCH, capture=True)
    # capturing is the default: without capture=False a CPU model is refused too, never silently run uncaptured
    with pytest.raises(ConfigError, match="graph capture needs the model on a CUDA device$"):
        fast.StaticTrainStep(model, optimizer, config, batch_size=BATCH)


@pytest.mark.parametrize("size", [96, 64, 28])
def test_pre_resize_gives_the_same_batches(fmnist, size):
    images = fmnist.test_images[:300]
    resized = pre_resize(images, size, chunk=128)
    assert resized.dtype == torch.uint8 and resized.shape == (300, 1, size, size)
    # fed back through resize_batch (which then only divides by 255): bit-identical to resizing per batch
    assert torch.equal(resize_batch(resized, size), resize_batch(images, size))


def test_fast_preset_is_valid():
    config = preset_config("fast").validate()
    assert config.step_mode == "auto" and config.precision == "bf16" and config.channels_last


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)")


@CUDA
@pytest.mark.parametrize("name", ["googlenet", "googlenet-bn"])
def test_cuda_graph_step_trains_like_the_eager_step(name):
    """The captured graph itself (only where there is a GPU): five steps with a changing lr and a partial batch."""
    assert checks.graph_vs_eager_max_diff(torch.device("cuda"), model=name) < 1e-4


@CUDA
@pytest.mark.parametrize("name", ["googlenet", "googlenet-bn", "inception-v3", "inception-resnet"])
def test_cuda_graph_with_branch_streams_trains_like_the_eager_step(name):
    """float64, where rounding cannot pass for an error (see graph_vs_eager_max_diff). The trainer still refuses the
    switch for the models with BatchNorm until this has passed on a GPU."""
    assert checks.graph_vs_eager_max_diff(torch.device("cuda"), model=name, branch_streams=True) < 1e-4


@CUDA
@pytest.mark.parametrize("name", ["googlenet", "googlenet-bn"])
def test_cuda_graph_with_fused_1x1_and_batched_casts_trains_like_the_eager_step(name):
    cuda = torch.device("cuda")
    assert checks.graph_vs_eager_max_diff(cuda, model=name, fuse_1x1=True) < 1e-4
    # bf16: the same casts, the same kernels, so the same numbers as autocast's per-layer casts
    assert checks.graph_vs_eager_max_diff(cuda, model=name, batched_casts=True, precision="bf16") < 1e-4


def test_the_check_is_zero_for_the_same_arithmetic_and_catches_a_small_error(monkeypatch):
    """The drift measure itself, on the CPU (the static step without a graph). Batches of 8 (and a partial one of
    4): a third of the default's CPU time, and the margins hold (measured: 0, 2.8e-10, 0.031)."""
    cpu = torch.device("cpu")
    small = dict(steps=2, batch_size=8)
    assert checks.graph_vs_eager_max_diff(cpu, model="googlenet-bn", **small) == 0.0
    # stacking the 1x1 weights only changes the rounding: float64 keeps that invisible even with BatchNorm
    assert 0 < checks.graph_vs_eager_max_diff(cpu, model="googlenet-bn", fuse_1x1=True, **small) < 1e-6
    # ... whereas a 0.1 % error in one branch of the fused path is caught
    monkeypatch.setattr(cuda_switches, "_identity", lambda x: x * 1.001)
    assert checks.graph_vs_eager_max_diff(cpu, model="googlenet", fuse_1x1=True, **small) > 1e-4


def test_the_check_is_float64_because_batchnorm_training_is_chaotic_in_float32():
    """Why graph_vs_eager_max_diff runs in float64: a 1e-7 nudge of the lr moves googlenet-bn's short training by
    O(0.1) in float32, so in float32 any reordered sum would read as a large drift (it did on an H200)."""
    cpu = torch.device("cpu")
    assert checks.lr_sensitivity(cpu, model="googlenet-bn", steps=3, dtype=torch.float32) > 0.05
    assert checks.lr_sensitivity(cpu, model="googlenet", steps=3, dtype=torch.float64) < 1e-5


def test_branch_streams_switch_every_multi_branch_block_and_change_nothing_on_cpu():
    from inceptionlab.models import create_model

    counts = {}
    for name in ("googlenet", "googlenet-bn", "inception-v3", "inception-resnet"):
        torch.manual_seed(0)
        model = create_model(name).eval()
        x = torch.rand(2, 1, 32, 32)
        with torch.no_grad():
            before = model(x)
            patched = cuda_switches.apply_block_switches(model, streams=True, fuse_1x1=False)
            counts[name] = len(patched)
            after = model(x)  # on a CPU the switch has no effect: the same function, the same numbers
            cuda_switches.remove_block_switches(patched)
            assert torch.equal(model(x), before)
        assert torch.equal(before, after)
        assert set(patched) == {m for m in model.modules() if isinstance(m, MultiBranch)}
    assert counts == {"googlenet": 9, "googlenet-bn": 9, "inception-v3": 9, "inception-resnet": 10}


def test_cuda_options_are_off_on_cpu_and_explicit_values_win_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    on = TrainConfig(branch_streams=True, cudnn_benchmark=True, batched_casts=True, fuse_1x1=True, precision="bf16")
    all_on = dict.fromkeys(CUDA_SWITCHES, True)
    assert cuda_switches.resolve_cuda_options(on, cpu, "eager") == dict.fromkeys(CUDA_SWITCHES, False)
    assert cuda_switches.resolve_cuda_options(on, cuda, "cudagraph") == all_on
    # batched casts replace autocast's casts inside the captured bf16 step, and exist nowhere else
    assert cuda_switches.resolve_cuda_options(on, cuda, "eager") == {**all_on, "batched_casts": False}
    assert cuda_switches.resolve_cuda_options(on.replace(precision="fp32"), cuda, "cudagraph") == {**all_on,
                                                                                       "batched_casts": False}
    off = TrainConfig(**dict.fromkeys(CUDA_SWITCHES, False))
    assert cuda_switches.resolve_cuda_options(off, cuda, "cudagraph") == dict.fromkeys(CUDA_SWITCHES, False)
    auto = cuda_switches.resolve_cuda_options(TrainConfig(precision="bf16"), cuda, "cudagraph")
    assert auto == {name: cuda_switches.AUTO[name].get("cudagraph", False) for name in CUDA_SWITCHES}
    for name in CUDA_SWITCHES:
        with pytest.raises(ConfigError, match=f"{name} must be true or false"):
            TrainConfig(**{name: "yes"}).validate()


def test_cuda_options_switch_the_blocks_for_the_run_and_back():
    from inceptionlab.models import create_model

    model = create_model("googlenet")
    options = {"branch_streams": True, "cudnn_benchmark": False, "batched_casts": False, "fuse_1x1": True}
    blocks = [m for m in model.modules() if isinstance(m, MultiBranch)]
    with cuda_switches.cuda_switches(model, options):
        assert all("forward" in vars(m) for m in blocks)  # each block's forward replaced for the run
    assert not any("forward" in vars(m) for m in blocks)
    assert model.state_dict().keys() == create_model("googlenet").state_dict().keys()


@pytest.mark.parametrize("name", ["googlenet", "googlenet-bn"])
def test_fused_1x1_is_the_same_function_forward_and_backward(fmnist, name):
    """float64, real images, both memory formats: outputs, every gradient and BatchNorm's running statistics."""
    import copy

    from inceptionlab.models import create_model

    for channels_last in (False, True):
        torch.manual_seed(0)
        plain = create_model(name).double()
        fused = copy.deepcopy(plain)
        assert len(cuda_switches.apply_block_switches(fused, streams=False, fuse_1x1=True)) == 9
        x = resize_batch(fmnist.train_images[:6], 64).double()
        if channels_last:
            plain, fused = plain.to(memory_format=torch.channels_last), fused.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)
        y = fmnist.train_labels[:6]
        outputs = []
        for model in (plain, fused):
            out = model(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            outputs.append(out)
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
        for (key, a), b in zip(plain.named_parameters(), fused.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-12, msg=key)
        for (key, a), b in zip(plain.named_buffers(), fused.buffers(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=key)
    # no googlenet Inception block in inception-v3
    assert cuda_switches.apply_block_switches(create_model("inception-v3"), streams=False, fuse_1x1=True) == []


@pytest.mark.parametrize("name", ["googlenet", "googlenet-bn"])
def test_batched_casts_train_bit_for_bit_like_autocast(fmnist, name):
    """bf16 on the CPU: the static step with the weights cast up front (one multi-tensor copy) and without (autocast
    casts each layer's weight) end with identical parameters, partial batch included."""
    config = TrainConfig(model=name, image_size=32, batch_size=BATCH, precision="bf16", channels_last=True,
                         optimizer="nesterov", weight_decay=5e-4).validate()
    loader = DeviceLoader(fmnist.train_images[:NUM_IMAGES], fmnist.train_labels[:NUM_IMAGES], BATCH, image_size=32)
    params = []
    for batched in (False, True):
        model, optimizer = _model_and_optimizer(config)
        step = fast.StaticTrainStep(model, optimizer, config, batch_size=BATCH, capture=False, batched_casts=batched)
        if batched:  # every conv/linear weight and bias: googlenet has 57 convolutions with bias and one Linear
            assert len(step.forward.params) == {"googlenet": 116, "googlenet-bn": 59}[name]
        for x, y in loader:
            step(x, y)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])
    model, optimizer = _model_and_optimizer(config.replace(precision="fp32"))
    with pytest.raises(ConfigError, match="bf16"):
        fast.StaticTrainStep(model, optimizer, config.replace(precision="fp32"), batch_size=BATCH, capture=False,
                             batched_casts=True)


@pytest.mark.parametrize("name", ["googlenet-bn", "inception-v3", "inception-resnet"])
def test_branch_streams_are_refused_for_models_with_batchnorm(name):
    from inceptionlab.models import create_model

    cuda = torch.device("cuda")  # only the device type is read: this runs without a GPU
    config = TrainConfig(model=name, branch_streams=True)
    with pytest.raises(ConfigError, match=f"refused for {name}.*--no-branch-streams"):
        cuda_switches.resolve_cuda_options(config, cuda, "cudagraph", create_model(name))
    resolve = cuda_switches.resolve_cuda_options
    plain = resolve(config.replace(branch_streams=None), cuda, "cudagraph", create_model(name))
    assert plain["branch_streams"] is False
    ok = resolve(TrainConfig(branch_streams=True), cuda, "cudagraph", create_model("googlenet"))
    assert ok["branch_streams"] is True


def test_cross_stream_boundary_is_the_identity_forward_and_backward():
    """The autograd boundary of the branch streams changes no number (on a CPU it records nothing)."""
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = cuda_switches.CrossStream.apply(x, None)
    assert torch.equal(y, x)
    (y * torch.arange(96.0).view(2, 3, 4, 4)).sum().backward()
    assert torch.equal(x.grad, torch.arange(96.0).view(2, 3, 4, 4))


# ------------------------------------------------------------------ the rest of step.py (found by mutation testing)


def _lenet_float64(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return init_xavier_(create_model("lenet")).double()


def _fmnist_batch(fmnist, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (fmnist.train_images[start:start + n].double() / 255,
            fmnist.train_labels[start:start + n])


def test_static_step_is_momentum_sgd_on_each_batch_and_adds_into_the_trainers_tallies(fmnist):
    """LeNet in float64 against torch.optim.SGD on F.cross_entropy (written here): full batches through the static
    buffers, a smaller batch in between (eager), the lr changed between calls (values exact in float32, the dtype of
    the step's lr tensors). The warm-up runs once, before the first real step, and is timed; the outputs add into the
    trainer's float32 loss and int64 count tallies (engine.trainer.train_one_epoch)."""
    import copy
    import time

    import torch.nn.functional as F

    config = TrainConfig(model="lenet", image_size=28, batch_size=4, lr=0.25, optimizer="momentum", momentum=0.9,
                         precision="fp32").validate()
    model = _lenet_float64()
    reference = copy.deepcopy(model)
    reference_opt = torch.optim.SGD(reference.parameters(), lr=0.25, momentum=0.9)
    optimizer = build_optimizer(model, config, torch.device("cpu"))
    optimizer_steps = []
    optimizer.register_step_post_hook(lambda *_: optimizer_steps.append(1))
    step = fast.StaticTrainStep(model, optimizer, config, batch_size=4, capture=False, warmup_steps=2)
    assert step.prepare_seconds is None  # nothing prepared yet (the run summary's graph_capture_seconds)

    sizes, lrs = [4, 4, 2, 4, 4], [0.25, 0.125, 0.0625, 0.125, 0.25]
    loss_tally = torch.zeros((), dtype=torch.float32)
    correct_tally = torch.zeros((), dtype=torch.int64)
    expected_loss, expected_correct, start = 0.0, 0, 0
    for i, (n, lr) in enumerate(zip(sizes, lrs, strict=True)):
        x, y = _fmnist_batch(fmnist, start, n)
        start += n
        for group in (*optimizer.param_groups, *reference_opt.param_groups):
            group["lr"] = lr
        logits = reference(x)
        expected_correct += int((logits.argmax(dim=1) == y).sum())
        loss = F.cross_entropy(logits, y)
        expected_loss += float(loss.detach()) * n
        reference_opt.zero_grad()
        loss.backward()
        reference_opt.step()

        started = time.perf_counter()
        got_loss, got_correct = step(x, y)
        elapsed = time.perf_counter() - started
        loss_tally += got_loss
        correct_tally += got_correct
        if i == 0:  # the first call warmed up (two steps, rolled back), then took the real step
            assert len(optimizer_steps) == 2 + 1
            assert 0 < step.prepare_seconds <= elapsed
        for (name, p), r in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), r.detach(), rtol=0, atol=1e-12, msg=f"step {i}: {name}")
    assert len(optimizer_steps) == 2 + len(sizes)  # one optimizer step per call after the first
    assert float(loss_tally) == pytest.approx(expected_loss, rel=1e-6)
    assert int(correct_tally) == expected_correct
    assert all(isinstance(g["lr"], float) for g in optimizer.param_groups)


class _TinyAuxHeads(torch.nn.Module):
    """googlenet-paper's output convention, ``(logits, (aux1, aux2))`` in training, at almost no cost."""

    aux_loss_weight = 1.0  # not the default 0.3: the step must read the model's own weight

    def __init__(self):
        super().__init__()
        self.main, self.aux1, self.aux2 = (torch.nn.Linear(28 * 28, 10) for _ in range(3))

    def forward(self, x):
        f = x.flatten(1)
        return (self.main(f), (self.aux1(f), self.aux2(f))) if self.training else self.main(f)


def test_static_step_weights_the_aux_losses_by_the_models_aux_loss_weight(fmnist):
    import copy

    import torch.nn.functional as F

    config = TrainConfig(model="lenet", image_size=28, batch_size=4, lr=0.5, optimizer="sgd", precision="fp32")
    torch.manual_seed(0)
    model = _TinyAuxHeads().double()
    reference = copy.deepcopy(model)
    x, y = _fmnist_batch(fmnist, 0, 4)
    main, (aux1, aux2) = reference(x)
    loss = F.cross_entropy(main, y) + 1.0 * (F.cross_entropy(aux1, y) + F.cross_entropy(aux2, y))
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    step = fast.StaticTrainStep(model, torch.optim.SGD(model.parameters(), lr=0.5), config, batch_size=4,
                                capture=False)
    loss_sum, _ = step(x, y)
    assert float(loss_sum) == pytest.approx(4 * float(loss.detach()), rel=1e-6)
    for (name, p), r, g in zip(model.named_parameters(), reference.parameters(), grads, strict=True):
        torch.testing.assert_close(p.detach(), r.detach() - 0.5 * g, rtol=0, atol=1e-12, msg=name)


def test_graph_capture_readies_the_optimizer_groups_or_names_the_optimizer_it_cannot_capture():
    """What a capture needs from torch.optim, set at the first call (CPU: called directly; the capture itself
    needs a GPU). SGD must run its fused kernel, which reads the lr tensor on the device: torch's SGD dispatches to
    foreach before fused, so foreach must go off. Adam-style optimizers must be ``capturable`` (torch refuses to
    capture their step otherwise), whether or not they have a fused kernel."""
    config = TrainConfig(model="lenet", image_size=28, batch_size=4, precision="fp32")

    def ready(make_optimizer):
        model = _lenet_float64()
        optimizer = make_optimizer(model.parameters())
        fast.StaticTrainStep(model, optimizer, config, batch_size=4, capture=False)._graph_ready_optimizer()
        return optimizer.param_groups

    for group in ready(lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)):
        assert group["fused"] is True and group["foreach"] is False
    for group in ready(lambda params: torch.optim.AdamW(params, lr=1e-3, foreach=True)):
        assert group["capturable"] is True and group["foreach"] is False
    for group in ready(lambda params: torch.optim.RAdam(params, lr=1e-3)):  # capturable, no fused kernel
        assert group["capturable"] is True
    with pytest.raises(ConfigError, match="^LBFGS cannot be graph-captured; use --step-mode eager$"):
        ready(lambda params: torch.optim.LBFGS(params, lr=0.1))


def test_build_train_step_follows_the_resolved_step_mode(fmnist, monkeypatch):
    """The eager step (CPU, or CUDA under torchrun) is one SGD step and uses the GradScaler it is given; compile mode
    trains the torch.compile'd model (a recording stand-in here: a real compile takes minutes on the CPU); auto on
    CUDA builds the captured step (refused here, the model being on the CPU)."""
    import copy

    import torch.nn.functional as F

    config = TrainConfig(model="lenet", image_size=28, batch_size=4, lr=0.5, optimizer="sgd", precision="fp32")
    x, y = _fmnist_batch(fmnist, 0, 4)
    compiled = []

    def fake_compile(model):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)

    def check(device, world_size, *, step_mode="auto", expect_compiled):
        model = _lenet_float64()
        reference = copy.deepcopy(model)
        grads = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.parameters()))
        # growth_interval=1: a scaler that saw one finite step doubles its scale
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        compiled.clear()
        step = fast.build_train_step(model, torch.optim.SGD(model.parameters(), lr=0.5),
                                     config.replace(step_mode=step_mode), torch.device(device), batch_size=4,
                                     scaler=scaler, world_size=world_size)
        step(x, y)
        assert compiled == ([model] if expect_compiled else [])
        assert scaler.get_scale() == 2.0**11
        for (name, p), r, g in zip(model.named_parameters(), reference.parameters(), grads, strict=True):
            torch.testing.assert_close(p.detach(), r.detach() - 0.5 * g, rtol=0, atol=1e-12, msg=name)

    check("cpu", 1, expect_compiled=False)
    check("cuda", 2, expect_compiled=False)  # only the device type is read: the eager step runs on the CPU
    check("cpu", 1, step_mode="compile", expect_compiled=True)
    with pytest.raises(ConfigError, match="graph capture needs the model on a CUDA device$"):
        fast.build_train_step(_lenet_float64(), torch.optim.SGD(_lenet_float64().parameters(), lr=0.5), config,
                              torch.device("cuda"), batch_size=4)
