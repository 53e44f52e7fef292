"""Step-time probe: ms per training step for each setup row, every row built by the trainer's own setup.

    python benchmarks/probe_step.py --device cuda --json bench-out/probe.json
    python benchmarks/probe_step.py --device cuda --checks-only --json bench-out/checks.json
    python benchmarks/probe_step.py --device cpu --checks-only --json bench-out/checks-cpu.json

A row is a preset (``config.PRESETS``) with a model, size, batch, precision, step mode and CUDA switches
(``config.CUDA_SWITCHES``): googlenet on the chapter's recipe (eager fp32 as d2l, eager bf16, the CUDA graph alone
and with the switches), then the ``fast`` preset at its batch and at 512. Each row's run state comes from
``inceptionlab.engine.trainer.setup``; the probe draws one batch from the run's loader and times ``state.step_fn``
on it (``--warmup-steps`` untimed, graph capture included, then ``--steps``), the run's switches applied as the
trainer applies them. Branch streams are timed on BatchNorm models too (which the trainer refuses): whether a run
may use a switch is decided from the checks by ``choose_cuda_options.py``.

Also in the JSON: the graph-vs-eager checks of every switch (``inceptionlab.engine.checks``, float64) and their
scale (``lr_sensitivity``); on CUDA a kernel profile of the step and googlenet's max-pools alone in three layouts.
Graph rows need CUDA (skipped on a CPU). The JSON is rewritten after each part, so a probe cut short still reports.
Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import build_state, memory, run_meta, time_steps, write_json

SWITCH_LABELS = {"branch_streams": "branch streams", "cudnn_benchmark": "cudnn.benchmark",
                 "batched_casts": "batched casts", "fuse_1x1": "fused 1x1"}
KERNEL_CUTS = ("batched_casts", "fuse_1x1")


# --------------------------------------------------------------------------------------------- the rows


def _row(label: str, preset: str, **overrides) -> dict:
    """A row: its label, preset, and the overrides that make its config (every CUDA switch explicit)."""
    from inceptionlab.config import CUDA_SWITCHES

    on = overrides.pop("on", ())
    unknown = set(on) - set(CUDA_SWITCHES)
    if unknown:
        raise ValueError(f"not CUDA switches: {sorted(unknown)}")
    defaults = {"step_mode": "cudagraph", "precision": "bf16", "channels_last": True}
    return {"setup": label, "preset": preset,
            "overrides": {**defaults, **overrides, **{name: name in on for name in CUDA_SWITCHES}}}


def _graph_rows(base: str, preset: str, switch_sets, plain_label: str | None = None, **overrides) -> list[dict]:
    rows = []
    for on in switch_sets:
        label = ", ".join([base, *(SWITCH_LABELS[s] for s in SWITCH_LABELS if s in on)])
        rows.append(_row(plain_label if (plain_label and not on) else label, preset, on=on, **overrides))
    return rows


def setup_rows(image_size: int) -> list[dict]:
    """The rows, plain graph first and branch streams last within each group (a failed capture with streams can
    spoil the process's CUDA state; the probe runs every row without streams before any row with them)."""
    from inceptionlab.config import CUDA_SWITCHES, PRESETS

    streams = ("branch_streams",)
    recipe_sets = [(), *((s,) for s in CUDA_SWITCHES if s != "branch_streams"), KERNEL_CUTS, streams,
                   streams + KERNEL_CUTS]
    rows = [
        _row("eager fp32, NCHW (what d2l does)", "d2l", image_size=image_size, step_mode="eager", precision="fp32",
             channels_last=False),
        _row("eager bf16 autocast, channels_last", "d2l", image_size=image_size, step_mode="eager"),
        *_graph_rows("CUDA graph, bf16, CL", "d2l", recipe_sets, "CUDA graph, bf16, channels_last",
                     image_size=image_size),
    ]
    fast = PRESETS["fast"]
    for batch in (fast["batch_size"], 512):  # the preset's batch and its candidates' (BENCHMARKS.md)
        base = f"{fast['model']} {fast['image_size']} px b{batch}, graph, bf16, CL"
        plain = f"{base} (preset fast)" if batch == fast["batch_size"] else base
        rows += _graph_rows(base, "fast", [(), KERNEL_CUTS, streams, streams + KERNEL_CUTS], plain, batch_size=batch)
    return rows


def row_config(row: dict, device, out: str):
    """The row's TrainConfig: its preset with its overrides, one batch of training images (the probe reuses it)."""
    from inceptionlab.config import preset_config

    overrides = row["overrides"]
    batch = overrides.get("batch_size") or preset_config(row["preset"]).batch_size
    return preset_config(row["preset"], **overrides, device=device.type, limit_train=batch, limit_test=1, out=out)


def describe_row(row: dict, config) -> dict:
    """The row as choose_cuda_options.py reads it: label, mode, model, size, batch, precision, layout, switches."""
    from inceptionlab.config import CUDA_SWITCHES

    return {"setup": row["setup"], "preset": row["preset"], "mode": config.step_mode, "model": config.model,
            "size": config.image_size, "batch": config.batch_size, "precision": config.precision,
            "channels_last": config.channels_last, **{name: getattr(config, name) for name in CUDA_SWITCHES}}


def time_row(config, data, run_dir: Path, warmup_steps: int, steps: int) -> dict:
    """ms per step of the run ``setup`` builds for ``config``, on one batch of its loader."""
    state = build_state(config, run_dir, data=data, allow_unverified_streams=True)
    batch = next(iter(state.loader))
    seconds = time_steps(state, itertools.repeat(batch), warmup_steps, steps)
    ms = 1000 * seconds / steps
    return {"ms_per_step": ms, "images_per_sec": config.batch_size * 1000 / ms,
            "prepare_seconds": getattr(state.step_fn, "prepare_seconds", None),  # warm-up + capture
            "cuda_options": state.cuda_opts}


def probe_rows(rows: list[dict], report: Report, data, warmup_steps: int, steps: int) -> None:
    """Time each row (graph rows only on CUDA) and add it to the report; a failure is reported, not raised."""
    for row in rows:
        config = row_config(row, report.device, str(report.tmp))
        if config.step_mode == "cudagraph" and report.device.type != "cuda":
            continue
        try:
            result = time_row(config, data, report.tmp / f"row-{len(report.rows)}", warmup_steps, steps)
            print(f"{row['setup']:<72} {result['ms_per_step']:8.2f} ms/step {result['images_per_sec']:>10,.0f} img/s",
                  file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure and goes on
            result = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{row['setup']:<72} FAILED {result['error'][:200]}", file=sys.stderr, flush=True)
        report.rows.append({**describe_row(row, config), **result})
        gc.collect()  # the row's graph and its memory pool go before the next row is built
        report.save()


# --------------------------------------------------------------------------------------------- the checks


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


def check_key(case: dict) -> str:
    """``googlenet-bn, branch streams`` etc.: the key choose_cuda_options.py looks up for a switch and a model."""
    from inceptionlab.config import CUDA_SWITCHES

    options = case["options"]
    if case["kind"] == "sensitivity":
        return f"{case['model']}, lr x (1 + 1e-7), eager vs eager, {case['dtype']}"
    return ", ".join([case["model"], *(k.replace("_", " ") for k in CUDA_SWITCHES if options.get(k))]
                     + (["bf16"] if options.get("precision") == "bf16" else [])
                     + ([case["dtype"]] if "dtype" in case else []))


def run_checks(cases, report: Report) -> None:
    """Graph-vs-eager training drift per case (float64, or float32 weights under bf16 autocast for batched casts),
    and the check's own scale for the ``sensitivity`` cases."""
    import torch

    from inceptionlab.engine.checks import graph_vs_eager_max_diff, lr_sensitivity

    for case in cases:
        key = check_key(case)
        try:
            dtype = getattr(torch, case["dtype"]) if "dtype" in case else None
            if case["kind"] == "sensitivity":
                value = lr_sensitivity(report.device, model=case["model"], dtype=dtype)
            else:
                value = graph_vs_eager_max_diff(report.device, model=case["model"], dtype=dtype, **case["options"])
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure and goes on
            value = f"{type(exc).__name__}: {exc}"
        report.checks[key] = value
        print(f"graph vs eager step ({key}), relative drift of the parameter change: {value}", file=sys.stderr,
              flush=True)
        report.save()


# --------------------------------------------------------------------------------------------- CUDA extras


def kernel_profile(data, run_dir: Path, image_size: int, on: tuple = (), steps: int = 3) -> dict:
    """GPU kernel time per step of googlenet's bf16 channels_last step (torch.profiler) and its top kernels. Without
    switches the eager step (the floor a graph replay approaches: its kernels one after another); with switches
    the replays of the captured step (batched casts exist only there)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from inceptionlab.engine.cuda import cuda_switches

    row = _row("kernel profile", "d2l", image_size=image_size, step_mode="cudagraph" if on else "eager", on=on)
    state = build_state(row_config(row, torch.device("cuda"), str(run_dir)), run_dir, data=data)
    x, y = next(iter(state.loader))
    with cuda_switches(state.model, state.cuda_opts):
        for _ in range(3):  # warm-up (and capture)
            state.step_fn(x, y)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                state.step_fn(x, y)
            torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    if not kernels:
        raise RuntimeError("the profiler recorded no CUDA kernels")
    attr = "device_time_total" if hasattr(kernels[0], "device_time_total") else "cuda_time_total"
    top = sorted(kernels, key=lambda e: -getattr(e, attr))[:20]
    return {"gpu_kernel_ms_per_step": sum(getattr(e, attr) for e in kernels) / 1000 / steps,
            "kernels_per_step": sum(e.count for e in kernels) / steps, "cuda_options": state.cuda_opts,
            "top": [{"name": e.key[:120], "ms_per_step": getattr(e, attr) / 1000 / steps,
                     "calls_per_step": e.count / steps} for e in top]}


def _pool_shapes(device, image_size: int) -> list[tuple]:
    """(input shape, kernel, stride, padding) of googlenet's max-pools, found by hooks on one forward pass."""
    import torch

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
    return pools


def _pool_pass(layout: str, inputs, grads, pools) -> None:
    import torch
    import torch.nn.functional as F

    for x, g, (_, k, s, p) in zip(inputs, grads, pools, strict=True):
        x.grad = None
        if layout == "nchw_via_copies":
            y = F.max_pool2d(x.contiguous(), k, s, p).contiguous(memory_format=torch.channels_last)
        else:
            y = F.max_pool2d(x, k, s, p)
        y.backward(g)


def pool_layouts(device, image_size: int, batch: int = 128, replays: int = 20) -> dict:
    """Max-pool forward + backward alone, googlenet's pools at their real shapes, bf16, each layout captured in one
    CUDA graph and replayed: ``channels_last`` (what the model runs), ``nchw``, and ``nchw_via_copies`` (channels_last
    copied to NCHW for the pool and back: what a layout switch for the pools would do). Not a training setup."""
    import torch
    import torch.nn.functional as F

    pools = _pool_shapes(device, image_size)
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
                _pool_pass(layout, inputs, grads, pools)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _pool_pass(layout, inputs, grads, pools)
        graph.replay()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        out[f"{layout}_ms"] = 1000 * (time.perf_counter() - start) / replays
        del graph
    return out


def cuda_extras(report: Report, data, image_size: int) -> None:
    """The kernel profiles (plain eager step; captured step with both kernel-cutting switches) and the pools."""
    parts = {"kernel_profile": lambda: kernel_profile(data, report.tmp / "profile", image_size),
             "kernel_profile_fused_casts": lambda: kernel_profile(data, report.tmp / "profile-switches", image_size,
                                                                  on=KERNEL_CUTS),
             "pool_layouts": lambda: pool_layouts(report.device, image_size)}
    for key, part in parts.items():
        try:
            report.data[key] = value = part()
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure and goes on
            report.data[key] = value = f"{type(exc).__name__}: {exc}"
        if isinstance(value, dict) and "gpu_kernel_ms_per_step" in value:
            print(f"{key}: {value['gpu_kernel_ms_per_step']:.2f} ms of GPU kernels, "
                  f"{value['kernels_per_step']:.0f} kernels", file=sys.stderr, flush=True)
            for k in value["top"][:12]:
                print(f"  {k['ms_per_step']:7.3f} ms  x{k['calls_per_step']:<5.0f} {k['name'][:90]}", file=sys.stderr)
        else:
            print(f"{key}: {value}", file=sys.stderr, flush=True)
        gc.collect()
        report.save()


# --------------------------------------------------------------------------------------------- main


class Report:
    """The probe's JSON, rewritten after each part (a probe cut short by its time limit still reports)."""

    def __init__(self, path: Path | None, device, tmp: Path, fields: dict):
        self.path, self.device, self.tmp = path, device, tmp
        self.checks: dict = {}
        self.rows: list[dict] = []
        self.data = {**fields, "graph_vs_eager_max_rel_diff": self.checks}

    def save(self, **extra) -> None:
        write_json(self.path, {**self.data, **extra, "probe": self.rows, **memory(self.device)})


def run_probe(args, report: Report) -> None:
    """Checks without streams, the CUDA extras, rows without streams, then the stream checks and stream rows."""
    from inceptionlab.data import load_fashion_mnist

    streams = [c for c in CHECK_CASES if c["options"].get("branch_streams")]
    if args.checks_only:
        run_checks(CHECK_CASES, report)
        return
    run_checks([c for c in CHECK_CASES if c not in streams], report)
    data = load_fashion_mnist(download=False, progress=False).to(report.device)  # once; each row slices it
    if report.device.type == "cuda":
        cuda_extras(report, data, args.image_size)
    rows = setup_rows(args.image_size)
    probe_rows([r for r in rows if not r["overrides"]["branch_streams"]], report, data, args.warmup_steps, args.steps)
    run_checks(streams, report)
    probe_rows([r for r in rows if r["overrides"]["branch_streams"]], report, data, args.warmup_steps, args.steps)
    order = [r["setup"] for r in rows]
    report.rows.sort(key=lambda r: order.index(r["setup"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    p.add_argument("--image-size", type=int, default=96, help="the chapter's rows (the fast rows use the preset's)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per row")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps per row (graph capture included)")
    p.add_argument("--checks-only", action="store_true", help="only the graph-vs-eager checks (they run on a CPU too)")
    p.add_argument("--json", type=Path, help="write everything here, after each part")
    args = p.parse_args(argv)
    meta = run_meta()
    import torch

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="probe-step-") as tmp:
        fields = {"meta": meta, "image_size": args.image_size, "steps": args.steps, "warmup_steps": args.warmup_steps,
                  "device": str(device), "torch_version": torch.__version__,
                  "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else meta["cpu"]}
        report = Report(args.json, device, Path(tmp), fields)
        run_probe(args, report)
        meta["loadavg_after"] = os.getloadavg()
        report.save()
    from inceptionlab.cli import exit_now

    exit_now(0)  # without the interpreter's slow module teardown, as the `inceptionlab` command exits


if __name__ == "__main__":
    raise SystemExit(main())
