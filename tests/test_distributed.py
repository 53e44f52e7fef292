"""torchrun + DistributedDataParallel on CPU (Gloo): two processes with a global batch B end with the same
weights as each other and as one process with batch B, and only rank 0 writes the run directory; a signal that
reaches one rank stops both at the same step, and the run resumes to the uninterrupted run's numbers."""

import json
import os
import signal
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

KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")

WORKER = textwrap.dedent(
    """
    import gc, json, os, sys
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from inceptionlab.config import TrainConfig
    from inceptionlab.engine import distributed
    from inceptionlab.train import train

    destroy, alive = distributed.destroy_process_group, []
    def counting_destroy():  # DDP wrappers alive when the group goes (each holds it: a hang at exit otherwise)
        alive.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
        destroy()
    distributed.destroy_process_group = counting_destroy

    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    result = train(config, log=None)
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()},
               os.path.join(sys.argv[2], f"rank{rank}.pt"))
    with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
        json.dump({"run_dir": str(result.run_dir), "metrics": result.metrics, "ddp_alive": alive}, f)
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
    assert info0["ddp_alive"] == info1["ddp_alive"] == [0]  # the wrapper went before its process group
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


# A stop signal that reaches one rank only, an uneven split (333 training and 101 test images over 2 ranks) and a
# resume, in one torchrun job: the worker owns the process group (the trainer then leaves it alone), so the three
# trainings share one start-up. The trainer's lr_at is wrapped to record every step a rank takes and, when armed,
# to send SIGTERM to rank 1 alone at one step; sync_every=1 makes the ranks agree on stopping at every step.
STOP_WORKER = textwrap.dedent(
    """
    import datetime, json, os, signal, sys
    from pathlib import Path
    import torch
    import torch.distributed as dist
    from inceptionlab.config import TrainConfig
    from inceptionlab.data import load_fashion_mnist
    from inceptionlab.engine import trainer

    config, out, stop_at = TrainConfig.from_dict(json.loads(sys.argv[1])), Path(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))  # a desync fails in a minute
    rank, data = dist.get_rank(), load_fashion_mnist(download=False, progress=False)
    steps, armed, real_lr_at = [], [False], trainer.lr_at

    def lr_at(config, step, steps_per_epoch, *rest):
        steps.append(step)
        if armed[0] and rank == 1 and step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr_at(config, step, steps_per_epoch, *rest)

    trainer.lr_at = lr_at

    def record(name, result):
        torch.save(result.model.state_dict(), out / f"{name}-rank{rank}.pt")
        info = {"status": result.status, "signal": result.signal, "steps": steps[:], "metrics": result.metrics,
                "summary": json.loads((result.run_dir / "summary.json").read_text()),  # before the next run
                "files": sorted(p.name for p in result.run_dir.iterdir())}
        (out / f"{name}-rank{rank}.json").write_text(json.dumps(info))
        steps.clear()

    record("straight", trainer.train(config, data=data, run_dir=out / "straight", log=None))
    armed[0] = True
    record("stopped", trainer.train(config, data=data, run_dir=out / "stopped", log=None))
    armed[0] = False
    record("resumed", trainer.train(resume=out / "stopped", data=data, log=None))
    dist.destroy_process_group()
    """
)


def test_stop_on_one_rank_with_an_uneven_split_and_resume(tmp_path):
    config = TrainConfig(**{**CONFIG, "epochs": 3, "limit_train": 333, "limit_test": 101}, sync_every=1,
                         out=str(tmp_path / "unused"))
    steps_per_epoch = 6  # each rank: ceil(333 / 2) = 167 images (one repeated to even the shards), batches of 32
    stop_at = steps_per_epoch + 2  # the third step of the second epoch
    worker = tmp_path / "worker.py"
    worker.write_text(STOP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(worker), json.dumps(config.to_dict()), str(tmp_path), str(stop_at)]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the data verification's cache, not ~/.cache
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    info = {(name, r): json.loads((tmp_path / f"{name}-rank{r}.json").read_text())
            for name in ("straight", "stopped", "resumed") for r in (0, 1)}
    weights = {(name, r): torch.load(tmp_path / f"{name}-rank{r}.pt", weights_only=True)
               for name in ("straight", "resumed") for r in (0, 1)}

    # both ranks left at the very step rank 1 was signalled at, and both report the signal
    for r in (0, 1):
        assert info["stopped", r]["steps"] == list(range(stop_at + 1)), r
        assert (info["stopped", r]["status"], info["stopped", r]["signal"]) == ("interrupted", signal.SIGTERM), r
        assert len(info["stopped", r]["metrics"]) == 1
    summary = info["stopped", 0]["summary"]
    assert (summary["status"], summary["signal"], summary["epochs_completed"]) == ("interrupted", "SIGTERM", 1)
    assert "model.safetensors" not in info["stopped", 0]["files"]

    # the resume redoes the interrupted epoch and ends exactly where the uninterrupted run ended
    for r in (0, 1):
        assert info["straight", r]["steps"] == list(range(3 * steps_per_epoch))
        assert info["resumed", r]["steps"] == list(range(steps_per_epoch, 3 * steps_per_epoch))
        assert info["resumed", r]["status"] == "completed"
        for a, b in zip(info["straight", r]["metrics"], info["resumed", r]["metrics"], strict=True):
            assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
        for name, value in weights["straight", r].items():
            assert torch.equal(value, weights["resumed", r][name]), (r, name)
            assert torch.equal(value, weights["straight", 0][name]), (r, name)  # the ranks agree
    assert runs.read_summary(tmp_path / "stopped")["status"] == "completed"
    per_class = json.loads((tmp_path / "stopped" / "per_class.json").read_text())
    assert sum(map(sum, per_class["confusion"])) == 101  # the odd test split: 51 + 50 images, none twice
