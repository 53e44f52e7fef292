"""torchrun on the CPU (Gloo): a job whose worker dies is restarted by torchrun (--max-restarts) and continues
from the run directory's checkpoint (train --run-dir), ending with the numbers of an uninterrupted job; and two
"nodes" on 127.0.0.1 meet through c10d rendezvous."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from inceptionlab import runs

OPTIONS = ["--model", "lenet", "--image-size", "28", "--epochs", "3", "--batch-size", "64", "--limit-train", "512",
           "--limit-test", "128", "--lr", "0.1", "--optimizer", "momentum", "--schedule", "cosine",
           "--crop-padding", "2", "--num-threads", "1", "--device", "cpu", "--precision", "fp32", "--no-progress"]
KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")

# The training command, except that on torchrun's first attempt rank 1 kills itself (SIGKILL, no cleanup) at the
# start of epoch 2, once rank 0's checkpoint of epoch 1 is on disk: a worker lost mid-job.
FAULTY = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from inceptionlab.cli import main
    from inceptionlab.engine import trainer

    run_dir = Path(sys.argv[sys.argv.index("--run-dir") + 1])
    if os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        start_epoch = trainer.start_epoch

        def dying_start_epoch(state, epoch):
            if epoch == 1:
                while not (run_dir / "checkpoint.pt").exists():
                    time.sleep(0.05)
                time.sleep(0.5)  # the rename is atomic; let rank 0 finish the epoch's other files
                os.kill(os.getpid(), signal.SIGKILL)
            return start_epoch(state, epoch)

        trainer.start_epoch = dying_start_epoch
    sys.exit(main(sys.argv[1:]))
    """
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], capture_output=True, text=True,
                          timeout=timeout)


def metrics(run_dir) -> list[tuple]:
    return [tuple(row[k] for k in KEYS) for row in runs.read_metrics(run_dir)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("elastic") / "reference"
    res = torchrun("--standalone", "--nproc_per_node", "2", "-m", "inceptionlab", "train", "--run-dir",
                   str(run_dir), *OPTIONS)
    assert res.returncode == 0, res.stderr[-3000:]
    return metrics(run_dir)


def test_a_killed_worker_is_restarted_and_the_job_continues_from_its_checkpoint(uninterrupted, tmp_path):
    script = tmp_path / "faulty_train.py"
    script.write_text(FAULTY)
    run_dir = tmp_path / "run"
    res = torchrun("--standalone", "--nproc_per_node", "2", "--max-restarts", "1", "--monitor-interval", "0.2",
                   str(script), "train", "--run-dir", str(run_dir), *OPTIONS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "continuing" in res.stdout and f"{run_dir} after epoch 1" in res.stdout  # it resumed, not restarted
    assert metrics(run_dir) == uninterrupted
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2


def test_a_run_dir_holding_another_run_is_refused(uninterrupted, tmp_path):
    from inceptionlab.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), *OPTIONS[:-1], "--epochs", "1"]) == 0
    options = [*OPTIONS[:-1], "--lr", "0.05"]  # argparse keeps the last --lr
    assert main(["train", "--run-dir", str(run_dir), *options]) == 1


def test_two_nodes_on_localhost_meet_through_c10d(uninterrupted, tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    command = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
               "--rdzv_id", "inceptionlab-test", "-m", "inceptionlab", "train", "--run-dir", str(run_dir), *OPTIONS]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *command], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert metrics(run_dir) == uninterrupted  # the same two ranks, the same numbers


def test_a_dead_or_silent_peer_is_one_line_and_other_errors_pass_through():
    from inceptionlab.engine.distributed import peer_failures_reported
    from inceptionlab.errors import PeerError

    gloo = "[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:30947. This is typically\n..."
    with pytest.raises(PeerError, match=r"stopped or stopped answering .*--run-dir") as info:
        with peer_failures_reported(True):
            raise RuntimeError(gloo)
    assert "\n" not in str(info.value)
    with pytest.raises(PeerError, match="Timed out"):
        with peer_failures_reported(True):
            raise RuntimeError("[gloo] Timed out waiting 3000ms for recv operation to complete")
    for enabled, message in ((True, "CUDA out of memory"), (False, gloo)):  # not a peer, or not a torchrun job
        with pytest.raises(RuntimeError) as other:
            with peer_failures_reported(enabled):
                raise RuntimeError(message)
        assert type(other.value) is RuntimeError
