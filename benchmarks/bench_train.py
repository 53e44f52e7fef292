"""Training speed: d2l's loop (benchmarks/d2l_reference.py) and our trainer, back to back on one device.

    # CPU: a fixed number of steps on both sides (a full epoch at 96 px takes ~20 min here)
    python benchmarks/bench_train.py --device cpu --image-size 96 --json bench-out/train_cpu96.json
    # GPU: the chapter's full recipe, 10 epochs, then the `fast` preset
    python benchmarks/bench_train.py --device cuda --epochs 10 --also-preset fast --json bench-out/train_cuda.json
    # GPU: step time of one configuration after another (random inputs), like shared/ANCHORS.md's table
    python benchmarks/bench_train.py --probe --device cuda --json bench-out/probe.json

Each side runs in its own subprocess, one after the other, never at the same time:
- ``reference``: d2l's ``train_ch6`` on d2l's DataLoader (4 workers, per-image PIL resize), fp32, NCHW;
- ``ours``: ``inceptionlab.train.train`` with the ``d2l`` preset plus ``--ours`` overrides (default: bf16
  autocast + channels_last; on CUDA ``step_mode=auto`` = one CUDA graph per step), same images, same steps,
  same test images: the same work on both sides;
- ``ours-steps``: our step function and loader alone, ``--warmup-steps`` untimed then ``--steps`` timed.
Reported per side: end-to-end wall (parent's clock, from process start to exit: imports, loading, warm-up,
graph capture, training, every evaluation, run-directory writes), training images/s counted the way d2l
counts it (time inside the steps) and in steady state (after the warm-up steps), test accuracy, peak host
RSS (``getrusage`` of the process; of the d2l DataLoader's largest worker separately) and peak GPU memory
(``torch.cuda.max_memory_allocated``). Not a test: the numbers depend on the machine and its load, which is
recorded (``os.getloadavg``) before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

STARTED = time.time()  # a child's first moment in Python (wall clock, comparable with the parent's spawn time)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# --------------------------------------------------------------------------------------------- children


def _shim_optional_modules() -> list[str]:
    """A GPU box without network may lack matplotlib or safetensors: stand in for them so a run still times.

    Plots are skipped (they cost our side time, the reference draws none). safetensors is replaced by a writer
    of the same file format (8-byte header length, JSON header, raw little-endian tensor bytes).
    """
    shimmed = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plots = types.ModuleType("inceptionlab.plots")
        plots.plot_curves = plots.plot_confusion = lambda *args, **kwargs: None
        sys.modules["inceptionlab.plots"] = plots
        shimmed.append("matplotlib (plots skipped)")
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        import torch

        dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
                  torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL", torch.float64: "F64"}

        def save(tensors, metadata=None):
            header, blobs, offset = {}, [], 0
            if metadata:
                header["__metadata__"] = metadata
            for name, t in tensors.items():
                raw = t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes() if t.numel() else b""
                header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                                "data_offsets": [offset, offset + len(raw)]}
                blobs.append(raw)
                offset += len(raw)
            head = json.dumps(header).encode()
            head += b" " * (-len(head) % 8)
            return len(head).to_bytes(8, "little") + head + b"".join(blobs)

        def load_file(*args, **kwargs):
            raise RuntimeError("safetensors is not installed")

        package, module = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
        module.save, module.load_file = save, load_file
        package.torch = module
        sys.modules.update({"safetensors": package, "safetensors.torch": module})
        shimmed.append("safetensors (built-in writer)")
    return shimmed


def _memory(device) -> dict:
    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


def child_ours(config_dict: dict, unverified_streams: bool = False) -> dict:
    """Our trainer, end to end, exactly as `inceptionlab train` runs it (minus argument parsing)."""
    marks = {"python_started": STARTED}  # where the wall time outside the trainer goes (see _phases)
    shimmed = _shim_optional_modules()
    import torch

    from inceptionlab import fast
    from inceptionlab.config import CUDA_SWITCHES
    from inceptionlab.train import resolve_device, train

    marks["imported"] = time.time()

    if unverified_streams:  # a candidate timed on purpose (--unverified-streams): say so in the result
        fast.REFUSE_STREAMS_WITH_BATCHNORM = False

    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        config = _config({**config_dict, "out": out})
        result = train(config, progress=False, log=lambda line: print(line, file=sys.stderr, flush=True))
        marks["trained"] = time.time()
    marks["run_dir_removed"] = time.time()
    device = resolve_device(config.device)
    summary = result.summary
    return {
        "side": f"ours ({config.preset})",
        "config": config.to_dict(),
        "step_mode": fast.resolve_step_mode(config, device),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "test_acc": summary.get("test_acc"),
        "train_acc": summary.get("train_acc"),
        "train_loss": summary.get("train_loss"),
        "trainer_elapsed_seconds": summary.get("elapsed_seconds"),
        **{name: summary.get(name) for name in CUDA_SWITCHES},  # what the run resolved them to
        "unverified_streams": unverified_streams,
        "timings": summary.get("timings"),  # setup / train / eval / write / graph capture, inside the trainer
        # the trainer's per-epoch figure: images / time of the epoch's training loop (loader included)
        "d2l_examples_per_sec": summary.get("images_per_sec"),
        "epochs": [{k: row[k] for k in ("epoch", "train_loss", "train_acc", "test_acc", "images_per_sec",
                                        "epoch_seconds")} for row in result.metrics],
        "shimmed": shimmed,
        "marks": marks,
        **_memory(device),
    }


def _phases(marks: dict, spawned: float, exited: float) -> dict:
    """Seconds from spawn to exit of a child that recorded ``marks`` (wall clock): interpreter start, imports,
    the trainer's call (its ``timings`` say what is inside), removing the run directory, then the report and the
    interpreter's exit (CUDA teardown included)."""
    phases = (("python_start", "python_started"), ("imports", "imported"), ("train_call", "trained"),
              ("run_dir_cleanup", "run_dir_removed"))
    out, last = {}, spawned
    for phase, key in phases:
        if key not in marks:
            return out
        out[phase], last = marks[key] - last, marks[key]
    out["report_and_exit"] = exited - last
    return out


def child_steps(config_dict: dict, warmup_steps: int, steps: int) -> dict:
    """Our step function fed by our loader, as the trainer builds them; the timed block ends in a sync."""
    _shim_optional_modules()
    import torch

    from inceptionlab import data as data_module
    from inceptionlab import fast
    from inceptionlab.models import create_model, init_xavier_
    from inceptionlab.train import _build_transform, build_optimizer, resolve_device

    config = _config(config_dict)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=config.num_classes, in_channels=config.in_channels,
                         **config.model_options)
    init_xavier_(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    data = data_module.load_fashion_mnist(config.data_dir, download=False, progress=False).to(device)
    n = (warmup_steps + steps) * config.batch_size
    images, labels = data.train_images[:n], data.train_labels[:n]
    if fast.want_pre_resize(config, device, len(images)):
        images = fast.pre_resize(images, config.image_size)
    loader = data_module.DeviceLoader(images, labels, config.batch_size, image_size=config.image_size,
                                      shuffle=True, seed=config.seed, transform=_build_transform(config))
    optimizer = build_optimizer(model, config, device)
    options = fast.resolve_cuda_options(config, device, fast.resolve_step_mode(config, device))
    step = fast.build_train_step(model, optimizer, config, device, batch_size=config.batch_size,
                                 batched_casts=options["batched_casts"])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loss_sum = torch.zeros((), device=device)
    batches = iter(loader)
    with fast.cuda_options(model, options):  # the switches stay on for the capture and the timed steps
        for _ in range(warmup_steps):
            x, y = next(batches)
            loss_sum += step(x, y)[0]
        float(loss_sum)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(batches)
            loss_sum += step(x, y)[0]
        float(loss_sum)  # the one host sync: every queued step has finished
        seconds = time.perf_counter() - start
    return {
        "side": f"ours steps ({config.preset})",
        "step_mode": fast.resolve_step_mode(config, device),
        **options,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "ms_per_step": 1000 * seconds / steps,
        "steady_images_per_sec": steps * config.batch_size / seconds,
        **_memory(device),
    }


def _row(label, mode="cudagraph", precision="bf16", channels_last=True, batch=128, benchmark=False, streams=False,
         casts=False, fuse=False, model="googlenet", size=None):
    return {"setup": label, "mode": mode, "precision": precision, "channels_last": channels_last, "batch": batch,
            "cudnn_benchmark": benchmark, "branch_streams": streams, "batched_casts": casts, "fuse_1x1": fuse,
            "model": model, "size": size}


def _fast_rows(batch: int) -> tuple:
    """The fast preset's model and size at ``batch``: the plain graph and each CUDA switch."""
    from inceptionlab.config import PRESETS

    fast = PRESETS["fast"]
    spec = {"model": fast["model"], "size": fast["image_size"], "batch": batch}
    name = f"{fast['model']} {fast['image_size']} px b{batch}, graph, bf16, CL"
    plain = f"{name} (preset fast)" if batch == fast["batch_size"] else name
    return (_row(plain, **spec), _row(f"{name}, batched casts, fused 1x1", casts=True, fuse=True, **spec),
            _row(f"{name}, branch streams", streams=True, **spec),
            _row(f"{name}, streams, casts, fused 1x1", streams=True, casts=True, fuse=True, **spec))


def probe_rows() -> tuple:
    """The probe's step setups (size None = --image-size, 96); kept short: each row is a model build, a capture and
    the steps. A function, not a constant: the fast rows read the package's presets, and importing the package
    (torch) waits until a process needs it, as everywhere in this script."""
    return (
        _row("eager fp32, NCHW (what d2l does)", mode="eager", precision="fp32", channels_last=False),
        _row("eager bf16 autocast, channels_last", mode="eager"),
        _row("CUDA graph, bf16, channels_last"),
        _row("CUDA graph, bf16, CL, batched casts", casts=True),
        _row("CUDA graph, bf16, CL, fused 1x1", fuse=True),
        _row("CUDA graph, bf16, CL, batched casts, fused 1x1", casts=True, fuse=True),
        _row("CUDA graph, bf16, CL, branch streams", streams=True),
        _row("CUDA graph, bf16, CL, branch streams, batched casts, fused 1x1", streams=True, casts=True, fuse=True),
        # the fast preset's model and size at batch 256 (the preset's) and 512 (its candidates: BENCHMARKS.md)
        *_fast_rows(256), *_fast_rows(512),
    )


def _kernel_profile(device, image_size: int, fuse_1x1: bool = False, batched_casts: bool = False) -> dict:
    """GPU kernel time of one eager bf16 channels_last googlenet step (torch.profiler), and its top kernels:
    the floor a graph replay can approach when its kernels run one after another. With a switch on, the step is
    the static step's body run without a graph (the body the graph would capture)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from inceptionlab import fast
    from inceptionlab.config import TrainConfig
    from inceptionlab.models import create_model, init_xavier_
    from inceptionlab.train import build_optimizer, make_train_step

    config = TrainConfig(image_size=image_size, precision="bf16", channels_last=True, step_mode="eager")
    torch.manual_seed(0)
    model = init_xavier_(create_model("googlenet")).to(device).to(memory_format=torch.channels_last)
    fast.set_fuse_1x1(model, fuse_1x1)
    optimizer = build_optimizer(model, config, device)
    if fuse_1x1 or batched_casts:
        step = fast.StaticTrainStep(model, optimizer, config, batch_size=128, capture=False,
                                    batched_casts=batched_casts)
    else:
        step = make_train_step(model, optimizer, config)
    x = torch.rand(128, 1, image_size, image_size, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    for _ in range(3):
        step(x, y)
    torch.cuda.synchronize()
    steps = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(x, y)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    attr = "device_time_total" if hasattr(kernels[0], "device_time_total") else "cuda_time_total"
    total_us = sum(getattr(e, attr) for e in kernels)
    count = sum(e.count for e in kernels)
    top = sorted(kernels, key=lambda e: -getattr(e, attr))[:20]
    return {"gpu_kernel_ms_per_step": total_us / 1000 / steps, "kernels_per_step": count / steps,
            "top": [{"name": e.key[:120], "ms_per_step": getattr(e, attr) / 1000 / steps,
                     "calls_per_step": e.count / steps} for e in top]}


def _pool_layouts(device, image_size: int, batch: int = 128, replays: int = 20) -> dict:
    """Max-pool forward + backward, the largest kernels of the profile, alone: googlenet's 13 pools at their real
    shapes (found by hooks on one forward pass), bf16, each layout captured in one CUDA graph and replayed.
    ``channels_last`` is what the model runs now; ``nchw`` the same pools on NCHW tensors; ``nchw_via_copies`` the
    channels_last tensors copied to NCHW for the pool and back, i.e. what a layout switch for the pools would do."""
    import torch
    import torch.nn.functional as F

    from inceptionlab.models import create_model

    model = create_model("googlenet").to(device)
    pools = []
    hooks = [m.register_forward_pre_hook(lambda m, a: pools.append((tuple(a[0].shape), m.kernel_size, m.stride,
                                                                    m.padding)))
             for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    with torch.no_grad():
        model(torch.zeros(1, 1, image_size, image_size, device=device))
    for h in hooks:
        h.remove()

    def one_pass(layout: str, inputs, grads) -> None:
        for x, g, (_, k, s, p) in zip(inputs, grads, pools, strict=True):
            x.grad = None
            if layout == "nchw_via_copies":
                y = F.max_pool2d(x.contiguous(), k, s, p).contiguous(memory_format=torch.channels_last)
            else:
                y = F.max_pool2d(x, k, s, p)
            y.backward(g)

    out = {"pools": len(pools)}
    for layout in ("channels_last", "nchw", "nchw_via_copies"):
        fmt = torch.contiguous_format if layout == "nchw" else torch.channels_last
        inputs = [torch.rand((batch, *shape[1:]), device=device, dtype=torch.bfloat16)
                  .to(memory_format=fmt).requires_grad_() for shape, *_ in pools]
        with torch.no_grad():
            grads = [torch.rand_like(F.max_pool2d(x, k, s, p)).to(memory_format=fmt)
                     for x, (_, k, s, p) in zip(inputs, pools, strict=True)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                one_pass(layout, inputs, grads)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            one_pass(layout, inputs, grads)
        graph.replay()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        out[f"{layout}_ms"] = 1000 * (time.perf_counter() - start) / replays
        del graph
    return out


def _probe_checks(device, checks: dict, cases) -> None:
    """Graph-vs-eager training drift (fast.graph_vs_eager_max_diff: float64, or float32 weights under bf16 autocast
    for batched casts) per case, and the check's own scale (fast.lr_sensitivity) for the ``sensitivity`` cases."""
    import torch

    from inceptionlab import fast
    from inceptionlab.config import CUDA_SWITCHES

    for case in cases:
        model_name, kind, options = case["model"], case.get("kind", "check"), case.get("options", {})
        if kind == "sensitivity":
            key = f"{model_name}, lr x (1 + 1e-7), eager vs eager, {case['dtype']}"
        else:
            key = ", ".join([model_name, *(k.replace("_", " ") for k in CUDA_SWITCHES if options.get(k))]
                            + (["bf16"] if options.get("precision") == "bf16" else [])
                            + ([case["dtype"]] if "dtype" in case else []))
        try:
            dtype = getattr(torch, case["dtype"]) if "dtype" in case else None
            if kind == "sensitivity":
                value = fast.lr_sensitivity(device, model=model_name, dtype=dtype)
            else:
                value = fast.graph_vs_eager_max_diff(device, model=model_name, dtype=dtype, **options)
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure and goes on
            value = f"{type(exc).__name__}: {exc}"
        checks[key] = value
        print(f"graph vs eager step ({key}), relative drift of the parameter change: {value}", file=sys.stderr,
              flush=True)


def _probe_rows(device, image_size: int, warmup_steps: int, steps: int, probe_rows, rows: list) -> None:
    import torch

    from inceptionlab import fast
    from inceptionlab.config import TrainConfig
    from inceptionlab.models import create_model, init_xavier_
    from inceptionlab.train import build_optimizer, make_train_step

    for row in probe_rows:
        if row["mode"] == "cudagraph" and device.type != "cuda":
            continue
        size, batch = row["size"] or image_size, row["batch"]
        config = TrainConfig(model=row["model"], image_size=size, batch_size=batch, precision=row["precision"],
                             channels_last=row["channels_last"], step_mode=row["mode"], device=device.type)
        torch.backends.cudnn.benchmark = row["cudnn_benchmark"]
        try:
            torch.manual_seed(0)
            model = init_xavier_(create_model(row["model"])).to(device)
            if row["channels_last"]:
                model.to(memory_format=torch.channels_last)
            fast.set_branch_streams(model, row["branch_streams"])
            fast.set_fuse_1x1(model, row["fuse_1x1"])
            optimizer = build_optimizer(model, config, device)
            if row["mode"] == "cudagraph":
                step = fast.StaticTrainStep(model, optimizer, config, batch_size=batch, capture=True,
                                            batched_casts=row["batched_casts"])
            else:
                step = make_train_step(model, optimizer, config)
            x = torch.rand(batch, 1, size, size, device=device)
            y = torch.randint(0, 10, (batch,), device=device)
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            for _ in range(warmup_steps):
                step(x, y)
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                step(x, y)
            sync()
            ms = 1000 * (time.perf_counter() - start) / steps
            result = {"ms_per_step": ms, "images_per_sec": batch * 1000 / ms,
                      "prepare_seconds": getattr(step, "prepare_seconds", None)}  # warm-up + capture
            print(f"{row['setup']:<72} {ms:8.2f} ms/step {batch * 1000 / ms:>10,.0f} img/s", file=sys.stderr,
                  flush=True)
            del step, model, optimizer
        except Exception as exc:  # noqa: BLE001
            result = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{row['setup']:<72} FAILED {result['error'][:200]}", file=sys.stderr, flush=True)
        rows.append({**row, **result})
    torch.backends.cudnn.benchmark = False


def _case(model, kind="check", dtype=None, **options):
    return {"model": model, "kind": kind, "options": options, **({"dtype": dtype} if dtype else {})}


CHECK_CASES = (  # plain graph first; the stream cases last (a failed capture can spoil the process's CUDA state)
    _case("googlenet"), _case("googlenet-bn"),
    # the check's own scale, and why it runs in float64: the same rounding-only change in float32 and float64
    *(_case(m, "sensitivity", dtype=d) for m in ("googlenet", "googlenet-bn") for d in ("float32", "float64")),
    _case("googlenet", fuse_1x1=True, dtype="float32"), _case("googlenet-bn", fuse_1x1=True, dtype="float32"),
    _case("googlenet", fuse_1x1=True), _case("googlenet-bn", fuse_1x1=True),
    _case("googlenet", batched_casts=True, precision="bf16"),
    _case("googlenet-bn", batched_casts=True, precision="bf16"),
    _case("googlenet", branch_streams=True), _case("googlenet-bn", branch_streams=True),
    _case("inception-v3", branch_streams=True), _case("inception-resnet", branch_streams=True),
    _case("googlenet", branch_streams=True, fuse_1x1=True), _case("googlenet-bn", branch_streams=True, fuse_1x1=True),
)


def child_probe(device_name: str, image_size: int, warmup_steps: int, steps: int,
                json_path: Path | None = None, checks_only: bool = False) -> dict:
    """ms per training step on random inputs already on the device (no loader), one configuration at a time.
    What is done so far is written to ``json_path`` after each part, so a probe cut short still reports."""
    import torch

    device = torch.device(device_name)
    out = {"image_size": image_size, "steps": steps, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
           "torch_version": torch.__version__}
    # Plain graph first, branch streams last: a capture that fails can leave the process's CUDA state unusable,
    # and then only the rows after it are lost.
    checks, rows = {}, []
    out["graph_vs_eager_max_rel_diff"] = checks

    def save() -> None:
        if json_path is not None:
            json_path.write_text(json.dumps({**out, "probe": rows, **_memory(device)}, indent=1))

    if checks_only:
        _probe_checks(device, checks, CHECK_CASES)
        return {**out, "probe": rows, **_memory(device)}
    _probe_checks(device, checks, [c for c in CHECK_CASES if not c.get("options", {}).get("branch_streams")])
    if device.type == "cuda":
        try:
            out["kernel_profile"] = _kernel_profile(device, image_size)
            kp = out["kernel_profile"]
            print(f"eager bf16 CL step: {kp['gpu_kernel_ms_per_step']:.2f} ms of GPU kernels, "
                  f"{kp['kernels_per_step']:.0f} kernels", file=sys.stderr, flush=True)
            for k in kp["top"][:12]:
                print(f"  {k['ms_per_step']:7.3f} ms  x{k['calls_per_step']:<5.0f} {k['name'][:90]}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001
            out["kernel_profile"] = f"{type(exc).__name__}: {exc}"
        try:  # the same step's body with the two kernel-cutting switches on
            kp = _kernel_profile(device, image_size, fuse_1x1=True, batched_casts=True)
            out["kernel_profile_fused_casts"] = kp
            print(f"... with fused 1x1 + batched casts: {kp['gpu_kernel_ms_per_step']:.2f} ms of GPU kernels, "
                  f"{kp['kernels_per_step']:.0f} kernels", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001
            out["kernel_profile_fused_casts"] = f"{type(exc).__name__}: {exc}"
        try:
            out["pool_layouts"] = _pool_layouts(device, image_size)
            print(f"max-pool fwd+bwd of googlenet's pools (bf16, graph): {out['pool_layouts']}", file=sys.stderr,
                  flush=True)
        except Exception as exc:  # noqa: BLE001
            out["pool_layouts"] = f"{type(exc).__name__}: {exc}"
    save()
    setups = probe_rows()
    _probe_rows(device, image_size, warmup_steps, steps, [r for r in setups if not r["branch_streams"]], rows)
    save()
    _probe_checks(device, checks, [c for c in CHECK_CASES if c.get("options", {}).get("branch_streams")])
    save()
    _probe_rows(device, image_size, warmup_steps, steps, [r for r in setups if r["branch_streams"]], rows)
    rows.sort(key=lambda r: [p["setup"] for p in setups].index(r["setup"]))
    torch.backends.cudnn.benchmark = False
    return {**out, "probe": rows, **_memory(device)}


# --------------------------------------------------------------------------------------------- the parent


def _run(cmd: list[str], json_path: Path, env: dict) -> dict:
    """Run one side in a fresh process; wall clock from spawn to exit; the child's own rusage via wait4."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    start, spawned = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall, exited = time.perf_counter() - start, time.time()
    result = json.loads(json_path.read_text()) if json_path.exists() else {}
    result.update(wall_seconds=wall, returncode=proc.returncode,
                  wait4_peak_rss_mib=usage.ru_maxrss / 1024)  # the process and its waited-for children
    if "marks" in result:
        result["phases"] = _phases(result["marks"], spawned, exited)
    if proc.returncode != 0:
        print(f"  exited with {proc.returncode}", file=sys.stderr)
    return result


def _ratio(a, b):
    return a / b if a and b else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _parse_overrides(text: str) -> dict:
    """``precision=bf16,channels_last=true,lr=0.05`` -> a dict (values read as JSON where they parse)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def _config(spec: dict):
    """``{"preset": name, **overrides}`` -> the TrainConfig `inceptionlab train --preset name ...` would build."""
    from inceptionlab.config import preset_config

    spec = dict(spec)
    return preset_config(spec.pop("preset", "d2l"), **spec).validate()


def _run_label(preset: str, overrides: dict) -> str:
    """``ours (preset fast; epochs=10; switches: fuse_1x1)``: what tells two runs of one preset apart (the data limits
    and the device are left out; the run's JSON has its whole config)."""
    from inceptionlab.config import CUDA_SWITCHES

    switches = [k for k in CUDA_SWITCHES if k in overrides]
    other = [f"{k}={v}" for k, v in overrides.items()
             if k not in switches and k not in ("limit_train", "limit_test", "device")]
    parts = [f"preset {preset}", *other]
    if switches:
        on = [k for k in switches if overrides[k] is True]
        parts.append(f"switches: {', '.join(on) if on else 'off'}")
    return f"ours ({'; '.join(parts)})"


def _fmt(value, spec) -> str:
    return "-" if value is None else format(value, spec)


def _table(rows: list[tuple[str, dict]]) -> str:
    head = (f"{'side':<44} {'wall s':>8} {'steady img/s':>13} {'d2l-count img/s':>16} {'test acc':>9} "
            f"{'peak RSS MiB':>13} {'worker RSS':>11} {'peak GPU MiB':>13}")
    lines = [head, "-" * len(head)]
    for name, r in rows:
        lines.append(
            f"{name:<44} {_fmt(r.get('wall_seconds'), '8.1f')} {_fmt(r.get('steady_images_per_sec'), '13,.1f')} "
            f"{_fmt(r.get('d2l_examples_per_sec'), '16,.1f')} {_fmt(r.get('test_acc'), '9.4f')} "
            f"{_fmt(r.get('peak_rss_mib'), '13,.0f')} {_fmt(r.get('peak_worker_rss_mib'), '11,.0f')} "
            f"{_fmt(r.get('peak_gpu_mib'), '13,.0f')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, help="default: 10 on cuda (the full recipe), 1 on cpu")
    p.add_argument("--steps", type=int, help="timed steps (default: 30 on cpu, 300 on cuda)")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--limit-train", type=int,
                   help="default on cpu: (warmup + steps) x batch, so both sides train exactly those steps")
    p.add_argument("--limit-test", type=int, help="default on cpu: 1024 (both sides evaluate the same images)")
    p.add_argument("--ours", default="precision=bf16,channels_last=true",
                   help="overrides of the d2l preset for our side, key=value[,key=value]")
    p.add_argument("--also-preset", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="also run our trainer with this preset (and these overrides, e.g. fast:cudnn_benchmark=true)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--workers", type=int, default=4, help="d2l's DataLoader worker processes")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every child (both sides alike); default: "
                   "PyTorch's own choice (one per core)")
    p.add_argument("--probe", action="store_true", help="the step-time probe table instead of the runs")
    p.add_argument("--checks-only", action="store_true", help="with --probe: only the graph-vs-eager checks")
    p.add_argument("--unverified-streams", action="store_true",
                   help="let our runs use --branch-streams with BatchNorm models, which the trainer refuses until "
                   "the float64 check passed on a GPU (fast.REFUSE_STREAMS_WITH_BATCHNORM); for timing a candidate")
    p.add_argument("--json", type=Path, help="write everything here")
    p.add_argument("--child", choices=("ours", "steps", "probe"), help=argparse.SUPPRESS)
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    on_cpu = args.device == "cpu"
    steps = args.steps or (30 if on_cpu else 300)
    if args.child:
        if args.child == "ours":
            out = child_ours(json.loads(args.child_config), args.unverified_streams)
        elif args.child == "steps":
            out = child_steps(json.loads(args.child_config), args.warmup_steps, steps)
        else:
            out = child_probe(args.device, args.image_size, args.warmup_steps or 5, steps, args.child_json,
                              args.checks_only)
        args.child_json.write_text(json.dumps(out, indent=1))
        from inceptionlab.cli import exit_now

        exit_now(0)  # as the `inceptionlab` command exits (without the interpreter's module teardown)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                       os.environ.get("PYTHONPATH")]))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
        "threads": args.threads or "default", "loadavg_before": os.getloadavg(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    me = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--steps", str(steps),
          "--warmup-steps", str(args.warmup_steps), "--image-size", str(args.image_size)]
    me += ["--checks-only"] if args.checks_only else []
    me += ["--unverified-streams"] if args.unverified_streams else []

    if args.probe:
        child_json = args.json or tmp / "probe.json"  # the child writes as it goes: a probe cut short still reports
        child_json.parent.mkdir(parents=True, exist_ok=True)
        probe = _run([*me, "--child", "probe", "--child-json", str(child_json)], child_json, env)
        meta["loadavg_after"] = os.getloadavg()
        report = {"meta": meta, **probe}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))
        return probe["returncode"]

    epochs = args.epochs or (1 if on_cpu else 10)
    limit_train = args.limit_train or ((args.warmup_steps + steps) * args.batch_size if on_cpu else None)
    limit_test = args.limit_test or (1024 if on_cpu else None)
    ours_config = {"preset": "d2l", "device": args.device, "image_size": args.image_size,
                   "batch_size": args.batch_size, "epochs": epochs, "limit_train": limit_train,
                   "limit_test": limit_test, **_parse_overrides(args.ours)}
    results: list[tuple[str, dict]] = []
    if not args.skip_reference:
        cmd = [sys.executable, str(HERE / "d2l_reference.py"), "--device", args.device, "--epochs", str(epochs),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               "--workers", str(args.workers), "--warmup-steps", str(args.warmup_steps),
               "--json", str(tmp / "reference.json")]
        cmd += ["--limit-train", str(limit_train)] if limit_train else []
        cmd += ["--limit-test", str(limit_test)] if limit_test else []
        results.append(("d2l reference", _run(cmd, tmp / "reference.json", env)))
    results.append(("ours (d2l recipe)", _run(
        [*me, "--child", "ours", "--child-config", json.dumps(ours_config), "--child-json", str(tmp / "ours.json")],
        tmp / "ours.json", env)))
    steps_config = {**ours_config, "limit_train": None, "limit_test": None}
    steps_result = _run([*me, "--child", "steps", "--child-config", json.dumps(steps_config),
                         "--child-json", str(tmp / "steps.json")], tmp / "steps.json", env)
    results[-1][1]["steady_images_per_sec"] = steps_result.get("steady_images_per_sec")
    results[-1][1]["steps_child"] = steps_result
    for k, spec in enumerate(args.also_preset):
        preset, _, overrides = spec.partition(":")
        config = {"preset": preset, "device": args.device, "limit_train": args.limit_train,
                  "limit_test": args.limit_test, **_parse_overrides(overrides)}
        name = _run_label(preset, _parse_overrides(overrides))
        while name in dict(results):  # the same label twice: keep both runs
            name += " (again)"
        results.append((name, _run(
            [*me, "--child", "ours", "--child-config", json.dumps(config),
             "--child-json", str(tmp / f"also-{k}.json")], tmp / f"also-{k}.json", env)))
    meta["loadavg_after"] = os.getloadavg()

    ref = dict(results)["d2l reference"] if not args.skip_reference else {}
    ours = dict(results)["ours (d2l recipe)"]
    ratios = {
        "steady_images_per_sec": _ratio(ours.get("steady_images_per_sec"), ref.get("steady_images_per_sec")),
        "d2l_count_images_per_sec": _ratio(ours.get("d2l_examples_per_sec"), ref.get("d2l_examples_per_sec")),
        "end_to_end_speedup": _ratio(ref.get("wall_seconds"), ours.get("wall_seconds")),
        # every run of ours (the recipe, and each --also-preset) against the same reference
        "end_to_end_speedup_by_run": {name: _ratio(ref.get("wall_seconds"), r.get("wall_seconds"))
                                      for name, r in results if name != "d2l reference"},
    }
    report = {"meta": meta, "settings": {"device": args.device, "image_size": args.image_size,
                                         "batch_size": args.batch_size, "epochs": epochs,
                                         "limit_train": limit_train, "limit_test": limit_test,
                                         "steps": steps, "warmup_steps": args.warmup_steps,
                                         "ours": ours_config},
              "results": dict(results), "ratios": ratios}
    print()
    print(_table(results))
    print()
    for key, value in ratios.items():
        if isinstance(value, dict):
            for name, ratio in value.items():
                print(f"reference wall / {name} wall: {_fmt(ratio, '.2f')}x")
        else:
            print(f"ours / reference, {key.replace('_', ' ')}: {_fmt(value, '.2f')}x")
    for name, r in results:  # where each run's wall time went (ours only: the reference records no marks)
        if r.get("phases"):
            t = r.get("timings") or {}
            inside = ", ".join(f"{k.removesuffix('_seconds')} {v:.2f}" for k, v in t.items()
                               if k.endswith("_seconds") and isinstance(v, (int, float)))
            print(f"{name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["phases"].items()) + f" (inside: {inside})")
    print(f"load average before {meta['loadavg_before']}, after {meta['loadavg_after']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0 if all(r.get("returncode") == 0 for _, r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
