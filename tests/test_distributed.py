"""torchrun + DistributedDataParallel on CPU (Gloo): two processes with a global batch B end with the same
weights as each other and as one process with batch B, and only rank 0 writes the run directory."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from inceptionlab import runs
from inceptionlab.config import TrainConfig
from inceptionlab.data import load_fashion_mnist
from inceptionlab.errors import ConfigError
from inceptionlab.train import train

# LeNet: no BatchNorm and no dropout, so one process and two shards compute the same mathematics.
CONFIG = dict(model="lenet", image_size=28, epochs=2, batch_size=64, limit_train=256, limit_test=128, lr=0.3,
              optimizer="momentum", schedule="cosine", num_threads=1, device="cpu",
              precision="fp32")  # DDP against one process: the same fp32 arithmetic

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from inceptionlab.config import TrainConfig
    from inceptionlab.train import train

    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    result = train(config, log=None)
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()},
               os.path.join(sys.argv[2], f"rank{rank}.pt"))
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
        json.dump({"run_dir": str(result.run_dir), "metrics": result.metrics}, f)
    """
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_each_other_and_one_process(tmp_path):
    config = TrainConfig(**CONFIG, out=str(tmp_path / "runs"))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(worker), json.dumps(config.to_dict()), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    info0, info1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    # one run directory, made by rank 0, its path broadcast to rank 1
    assert info0["run_dir"] == info1["run_dir"]
    assert len(list((tmp_path / "runs").iterdir())) == 1
    summary = runs.read_summary(info0["run_dir"])
    assert summary["world_size"] == 2 and summary["status"] == "completed"

    single = train(config.replace(out=str(tmp_path / "single")), data=load_fashion_mnist(), log=None)
    for (name, a), b in zip(single.model.state_dict().items(), rank0.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(single.metrics, info0["metrics"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1e-9)  # the same images, the same counts
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1 / 128)


def test_global_batch_must_divide_by_the_world_size(tmp_path, monkeypatch):
    # checked before joining the process group, so torchrun's variables alone are enough to test it
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = TrainConfig(**{**CONFIG, "batch_size": 63}, out=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match=r"must be divisible by the number of processes \(2\)"):
        train(config, log=None)
    assert not (tmp_path / "runs").exists()
