"""benchmarks/choose_cuda_options.py: the switches gpu_check.sh applies come only from rows whose checks passed."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import choose_cuda_options as choose  # noqa: E402

from inceptionlab.config import PRESETS  # noqa: E402


def _row(batch, ms, **switches):
    fast = PRESETS["fast"]
    return {"setup": f"b{batch} {sorted(switches)}", "mode": "cudagraph", "model": fast["model"],
            "size": fast["image_size"], "batch": batch, "precision": "bf16", "channels_last": True,
            "ms_per_step": ms, "prepare_seconds": 1.0, **switches}


def test_fastest_row_whose_checks_passed_at_the_batch_asked_for():
    checks = {"googlenet-bn, fuse 1x1": 4e-10, "googlenet-bn, batched casts, bf16": 0.0,
              "googlenet-bn, branch streams": 0.6}  # streams: a failed check
    own = PRESETS["fast"]["batch_size"]
    other = 2 * own
    probe = {"image_size": 96, "graph_vs_eager_max_rel_diff": checks, "probe": [
        _row(other, 9.0), _row(other, 8.0, batched_casts=True, fuse_1x1=True), _row(other, 6.0, branch_streams=True),
        _row(own, 6.5), _row(own, 7.0, batched_casts=True, fuse_1x1=True),
    ]}
    best, notes = choose.choose(probe, "fast", batch=other)
    assert best == {"branch_streams": False, "cudnn_benchmark": False, "batched_casts": True, "fuse_1x1": True}
    assert any("skipped" in n and "branch streams" in n for n in notes)
    best, _ = choose.choose(probe, "fast")  # the preset's own batch: the plain graph was faster there
    assert not any(best.values())
    steps = choose.TARGETS["fast"][3]
    assert steps == PRESETS["fast"]["epochs"] * -(-60_000 // PRESETS["fast"]["batch_size"])


@pytest.mark.parametrize(("target", "batch"), [("recipe", None), ("fast", None), ("fast", 512)])
def test_the_probe_writes_the_rows_and_check_keys_that_choose_reads(tmp_path, target, batch):
    """probe_step.py's rows (as its JSON holds them) and its check keys: with every check passed and the row with
    streams, batched casts and fused 1x1 the fastest of the target's, that row wins."""
    import probe_step

    cpu = torch.device("cpu")
    rows = [probe_step.describe_row(r, probe_step.row_config(r, cpu, str(tmp_path)))
            for r in probe_step.setup_rows(96)]
    every = {"branch_streams": True, "batched_casts": True, "fuse_1x1": True}
    for row in rows:
        is_every = all(row[k] for k in every) and not row["cudnn_benchmark"]
        row.update(ms_per_step=5.0 if is_every else 10.0, prepare_seconds=1.0)
    checks = {probe_step.check_key(case): 0.0 for case in probe_step.CHECK_CASES}
    probe = {"image_size": 96, "graph_vs_eager_max_rel_diff": checks, "probe": rows}
    best, notes = choose.choose(probe, target, batch)
    assert best == {**every, "cudnn_benchmark": False}, notes
    assert not any("skipped" in n for n in notes)
