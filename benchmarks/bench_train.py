"""Training speed end to end: d2l's loop (benchmarks/d2l_reference.py) and our trainer, back to back on one device.

    # CPU: a fixed number of steps on both sides (a full epoch at 96 px takes ~20 min here)
    python benchmarks/bench_train.py --device cpu --image-size 96 --json bench-out/train_cpu96.json
    # GPU: the chapter's full recipe, 10 epochs, then the `fast` preset
    python benchmarks/bench_train.py --device cuda --epochs 10 --also-preset fast --json bench-out/train_cuda.json

Each side runs in its own subprocess, one after the other, never at the same time:
- ``reference``: d2l's ``train_ch6`` on d2l's DataLoader (4 workers, per-image PIL resize), fp32, NCHW;
- ``ours``: our trainer as ``inceptionlab train`` runs it (``inceptionlab.engine.trainer.setup``, then
  ``run_epochs``) with the ``d2l`` preset plus ``--ours`` overrides (default: bf16 autocast + channels_last; on
  CUDA ``step_mode=auto`` = one CUDA graph per step): the same images, steps and test images as the reference;
- ``ours-steps``: the step function and loader that the same ``setup`` builds, alone: ``--warmup-steps`` untimed,
  then ``--steps`` timed.
Reported per side: end-to-end wall (parent's clock, from process start to exit: imports, loading, warm-up,
graph capture, training, every evaluation, run-directory writes), training images/s counted the way d2l
counts it (time inside the steps) and in steady state (after the warm-up steps), test accuracy, peak host
RSS (``getrusage`` of the process; of the d2l DataLoader's largest worker separately) and peak GPU memory
(``torch.cuda.max_memory_allocated``); for our runs, where the wall time went (``phases``). Not a test: the
numbers depend on the machine and its load, which is recorded (``os.getloadavg``) before and after.
The step-time probe (one setup after another, the graph-vs-eager checks) is ``benchmarks/probe_step.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import build_state, memory, run_meta, time_steps, write_json

STARTED = time.time()  # a child's first moment in Python (wall clock, comparable with the parent's spawn time)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _config(spec: dict):
    """``{"preset": name, **overrides}`` -> the TrainConfig `inceptionlab train --preset name ...` would build."""
    from inceptionlab.config import preset_config

    spec = dict(spec)
    return preset_config(spec.pop("preset", "d2l"), **spec).validate()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- children


def child_ours(spec: dict, unverified_streams: bool = False) -> dict:
    """Our trainer end to end: the trainer's setup, then its epochs, as `inceptionlab train` runs them."""
    marks = {"python_started": STARTED}  # where the wall time outside the trainer goes (see _phases)
    import torch

    from inceptionlab.config import CUDA_SWITCHES
    from inceptionlab.engine.trainer import run_epochs

    marks["imported"] = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        config = _config({**spec, "out": out})
        state = build_state(config, None, log=_stderr, allow_unverified_streams=unverified_streams)  # <out>/<run>
        result = run_epochs(state)
        marks["trained"] = time.time()
    marks["run_dir_removed"] = time.time()
    summary, device = result.summary, state.device
    return {
        "side": f"ours ({config.preset})",
        "config": config.to_dict(),
        "step_mode": state.step_mode,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "test_acc": summary.get("test_acc"),
        "train_acc": summary.get("train_acc"),
        "train_loss": summary.get("train_loss"),
        "trainer_elapsed_seconds": summary.get("elapsed_seconds"),
        **{name: state.cuda_opts[name] for name in CUDA_SWITCHES},  # what the run resolved them to
        "unverified_streams": unverified_streams,
        "timings": summary.get("timings"),  # setup / train / eval / write / graph capture, inside the trainer
        # the trainer's per-epoch figure: images / time of the epoch's training loop (loader included)
        "d2l_examples_per_sec": summary.get("images_per_sec"),
        "epochs": [{k: row[k] for k in ("epoch", "train_loss", "train_acc", "test_acc", "images_per_sec",
                                        "epoch_seconds")} for row in result.metrics],
        "marks": marks,
        **memory(device),
    }


def child_steps(spec: dict, warmup_steps: int, steps: int, unverified_streams: bool = False) -> dict:
    """The step function fed by the loader, both as the trainer's setup builds them for exactly these steps."""
    config = _config({**spec, "limit_train": (warmup_steps + steps) * spec["batch_size"], "limit_test": 1})
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as out:
        state = build_state(config.replace(out=out), None, allow_unverified_streams=unverified_streams)
        seconds = time_steps(state, iter(state.loader), warmup_steps, steps)
    return {
        "side": f"ours steps ({config.preset})",
        "step_mode": state.step_mode,
        **state.cuda_opts,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "ms_per_step": 1000 * seconds / steps,
        "steady_images_per_sec": steps * config.batch_size / seconds,
        **memory(state.device),
    }


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


def _phases(marks: dict, spawned: float, exited: float) -> dict:
    """Seconds from spawn to exit of a child that recorded ``marks`` (wall clock): interpreter start, imports,
    the trainer's call (setup + run_epochs; its ``timings`` say what is inside), removing the run directory, then
    the report and the interpreter's exit (CUDA teardown included)."""
    phases = (("python_start", "python_started"), ("imports", "imported"), ("train_call", "trained"),
              ("run_dir_cleanup", "run_dir_removed"))
    out, last = {}, spawned
    for phase, key in phases:
        if key not in marks:
            return out
        out[phase], last = marks[key] - last, marks[key]
    out["report_and_exit"] = exited - last
    return out


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


class Sides:
    """Spawns each side in turn (this script again with ``--child``, or the reference) and collects the results."""

    def __init__(self, args, steps: int):
        self.args, self.tmp = args, Path(tempfile.mkdtemp(prefix="bench-train-"))
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                               os.environ.get("PYTHONPATH")]))}
        if args.threads:
            self.env["OMP_NUM_THREADS"] = str(args.threads)
        self.me = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--steps", str(steps),
                   "--warmup-steps", str(args.warmup_steps)]
        self.me += ["--unverified-streams"] if args.unverified_streams else []
        self.results: list[tuple[str, dict]] = []

    def run(self, name: str, cmd: list[str], json_name: str) -> dict:
        while name in dict(self.results):  # the same label twice: keep both runs
            name += " (again)"
        result = _run(cmd, self.tmp / json_name, self.env)
        self.results.append((name, result))
        return result

    def ours(self, name: str, kind: str, spec: dict, json_name: str) -> dict:
        return self.run(name, [*self.me, "--child", kind, "--child-config", json.dumps(spec),
                               "--child-json", str(self.tmp / json_name)], json_name)


def run_sides(args, steps: int, epochs: int, limit_train, limit_test) -> tuple[dict, list[tuple[str, dict]]]:
    """Reference, ours on the d2l recipe (with its steps child), then each --also-preset; one at a time."""
    sides = Sides(args, steps)
    ours_config = {"preset": "d2l", "device": args.device, "image_size": args.image_size,
                   "batch_size": args.batch_size, "epochs": epochs, "limit_train": limit_train,
                   "limit_test": limit_test, **_parse_overrides(args.ours)}
    if not args.skip_reference:
        cmd = [sys.executable, str(HERE / "d2l_reference.py"), "--device", args.device, "--epochs", str(epochs),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               "--workers", str(args.workers), "--warmup-steps", str(args.warmup_steps),
               "--json", str(sides.tmp / "reference.json")]
        cmd += ["--limit-train", str(limit_train)] if limit_train else []
        cmd += ["--limit-test", str(limit_test)] if limit_test else []
        sides.run("d2l reference", cmd, "reference.json")
    ours = sides.ours("ours (d2l recipe)", "ours", ours_config, "ours.json")
    steps_result = _run([*sides.me, "--child", "steps", "--child-config", json.dumps(ours_config),
                         "--child-json", str(sides.tmp / "steps.json")], sides.tmp / "steps.json", sides.env)
    ours["steady_images_per_sec"] = steps_result.get("steady_images_per_sec")
    ours["steps_child"] = steps_result
    for k, spec in enumerate(args.also_preset):
        preset, _, overrides = spec.partition(":")
        config = {"preset": preset, "device": args.device, "limit_train": args.limit_train,
                  "limit_test": args.limit_test, **_parse_overrides(overrides)}
        sides.ours(_run_label(preset, _parse_overrides(overrides)), "ours", config, f"also-{k}.json")
    return ours_config, sides.results


def _ratio(a, b):
    return a / b if a and b else None


def ratios(results: list[tuple[str, dict]]) -> dict:
    """Ours on the d2l recipe against the reference; and every run of ours (each --also-preset) end to end."""
    ref, ours = dict(results).get("d2l reference", {}), dict(results)["ours (d2l recipe)"]
    return {
        "steady_images_per_sec": _ratio(ours.get("steady_images_per_sec"), ref.get("steady_images_per_sec")),
        "d2l_count_images_per_sec": _ratio(ours.get("d2l_examples_per_sec"), ref.get("d2l_examples_per_sec")),
        "end_to_end_speedup": _ratio(ref.get("wall_seconds"), ours.get("wall_seconds")),
        "end_to_end_speedup_by_run": {name: _ratio(ref.get("wall_seconds"), r.get("wall_seconds"))
                                      for name, r in results if name != "d2l reference"},
    }


def _fmt(value, spec) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[tuple[str, dict]]) -> str:
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


def print_report(report: dict) -> None:
    """The table, the ratios, and where each of our runs' wall time went (the reference records no marks)."""
    results = list(report["results"].items())
    print()
    print(table(results))
    print()
    for key, value in report["ratios"].items():
        if isinstance(value, dict):
            for name, ratio in value.items():
                print(f"reference wall / {name} wall: {_fmt(ratio, '.2f')}x")
        else:
            print(f"ours / reference, {key.replace('_', ' ')}: {_fmt(value, '.2f')}x")
    for name, r in results:
        if r.get("phases"):
            t = r.get("timings") or {}
            inside = ", ".join(f"{k.removesuffix('_seconds')} {v:.2f}" for k, v in t.items()
                               if k.endswith("_seconds") and isinstance(v, (int, float)))
            print(f"{name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["phases"].items()) + f" (inside: {inside})")
    meta = report["meta"]
    print(f"load average before {meta['loadavg_before']}, after {meta['loadavg_after']}")


# --------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
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
    p.add_argument("--unverified-streams", action="store_true",
                   help="let our runs use branch streams with BatchNorm models, which the trainer refuses until the "
                   "float64 check passed on a GPU (setup's allow_unverified_streams); for timing a candidate")
    p.add_argument("--json", type=Path, help="write everything here")
    p.add_argument("--child", choices=("ours", "steps"), help=argparse.SUPPRESS)
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_child(args, steps: int) -> None:
    spec = json.loads(args.child_config)
    if args.child == "ours":
        out = child_ours(spec, args.unverified_streams)
    else:
        out = child_steps(spec, args.warmup_steps, steps, args.unverified_streams)
    args.child_json.write_text(json.dumps(out, indent=1))
    from inceptionlab.cli import exit_now

    exit_now(0)  # as the `inceptionlab` command exits (without the interpreter's module teardown)


def main(argv=None) -> int:
    args = parse_args(argv)
    on_cpu = args.device == "cpu"
    steps = args.steps or (30 if on_cpu else 300)
    if args.child:
        run_child(args, steps)
    meta = {**run_meta(), "threads": args.threads or "default"}
    epochs = args.epochs or (1 if on_cpu else 10)
    limit_train = args.limit_train or ((args.warmup_steps + steps) * args.batch_size if on_cpu else None)
    limit_test = args.limit_test or (1024 if on_cpu else None)
    ours_config, results = run_sides(args, steps, epochs, limit_train, limit_test)
    meta["loadavg_after"] = os.getloadavg()
    settings = {"device": args.device, "image_size": args.image_size, "batch_size": args.batch_size, "epochs": epochs,
                "limit_train": limit_train, "limit_test": limit_test, "steps": steps,
                "warmup_steps": args.warmup_steps, "ours": ours_config}
    report = {"meta": meta, "settings": settings, "results": dict(results), "ratios": ratios(results)}
    print_report(report)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0 if all(r.get("returncode") == 0 for _, r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
