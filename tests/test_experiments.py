"""compare and sweep: grids of real training runs on a tiny slice of the real Fashion-MNIST."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from inceptionlab import experiments, runs
from inceptionlab.cli import main
from inceptionlab.config import TrainConfig
from inceptionlab.errors import ConfigError, DatasetError, InputSizeError, RunDirError

PNG = b"\x89PNG\r\n\x1a\n"


def tiny(**changes) -> TrainConfig:
    """A budget that trains in about a second per run on a CPU: still the real trainer on real images."""
    base = TrainConfig(image_size=28, epochs=1, batch_size=64, limit_train=128, limit_test=100, device="cpu",
                       num_threads=1)
    return base.replace(**changes)


def table_rows(text: str) -> list[list[str]]:
    """Data rows of the Markdown table (the header and the --- rule excluded)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_compare_two_models_two_seeds_writes_table_results_and_plot(fmnist, tmp_path):
    out = tmp_path / "cmp"
    result = experiments.compare(["lenet", "googlenet"], tiny(), seeds=2, out_dir=out, data=fmnist, log=None)

    assert result.status == "completed" and result.exit_code == 0
    assert "Status: completed" in (out / "table.md").read_text()
    assert (out / "curves.png").read_bytes()[:8] == PNG
    header = next(line for line in (out / "table.md").read_text().splitlines() if line.startswith("| model"))
    assert "test acc (mean ± std)" in header and "parameters" in header and "GFLOP" in header
    rows = table_rows((out / "table.md").read_text())
    assert [r[0] for r in rows] == ["lenet", "googlenet"]
    assert rows[0][1] == "61,706" and rows[1][1] == "5,977,530"  # parameters, from the registry

    saved = json.loads((out / "results.json").read_text())
    assert saved["kind"] == "compare" and saved["seeds"] == [0, 1] and len(saved["rows"]) == 2
    # no --val-split: nothing is ranked (the rows stay in the order given) and no row has a validation accuracy
    assert "ranking" not in saved and not any("val_acc" in row or "val_curves" in row for row in saved["rows"])
    assert "val acc" not in header and "validation" not in (out / "table.md").read_text()
    for row, cells in zip(saved["rows"], rows, strict=True):
        accs = row["test_acc"]
        assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
        assert row["test_acc_mean"] == pytest.approx(statistics.mean(accs))
        assert row["test_acc_std"] == pytest.approx(statistics.stdev(accs))
        assert cells[3] == f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}"
        assert len(row["curve_mean"]) == 1  # one epoch
        # every number comes from a real run directory written by the trainer
        for seed, run_dir, acc in zip(row["seeds"], row["run_dirs"], accs, strict=True):
            summary = json.loads((tmp_path / run_dir / "summary.json").read_text())
            config = json.loads((tmp_path / run_dir / "config.json").read_text())
            assert summary["test_acc"] == acc and config["seed"] == seed and config["model"] == row["model"]
            assert (tmp_path / run_dir / "model.safetensors").is_file()
    # the two seeds really differ (different init and data order)
    assert saved["rows"][1]["curves"][0] != saved["rows"][1]["curves"][1] or \
        saved["rows"][1]["test_acc"][0] != saved["rows"][1]["test_acc"][1]


def test_sweep_two_sizes(fmnist, tmp_path):
    out = tmp_path / "sweep"
    result = experiments.sweep("lenet", [30, 28], tiny(), out_dir=out, data=fmnist, log=None)

    assert [r.image_size for r in result.rows] == [28, 30]  # sorted
    assert (out / "accuracy.png").read_bytes()[:8] == PNG and (out / "curves.png").read_bytes()[:8] == PNG
    rows = table_rows((out / "table.md").read_text())
    assert [r[0] for r in rows] == ["28", "30"]
    assert all(r[3].endswith("± n/a") for r in rows)  # one seed: the std is undefined, not zero
    for row in json.loads((out / "results.json").read_text())["rows"]:
        config = json.loads((tmp_path / row["run_dirs"][0] / "config.json").read_text())
        assert config["image_size"] == row["image_size"] and config["model"] == "lenet"


def test_sweep_refuses_sizes_outside_the_models_limits_before_training(fmnist, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(InputSizeError, match=r"24.*minimum input size is 31"):
        experiments.sweep("googlenet-paper", [24, 32], tiny(), out_dir=out, data=fmnist, log=None)
    with pytest.raises(InputSizeError, match=r"40.*maximum 31"):
        experiments.check_sweep_sizes("lenet", [28, 40])
    with pytest.raises(ConfigError, match="repeat"):
        experiments.check_sweep_sizes("googlenet", [32, 32])
    assert not out.exists()


def test_statistics_helpers():
    assert experiments.std([0.5]) is None
    assert experiments.std([0.8, 0.9]) == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert experiments.mean([0.8, 0.9]) == pytest.approx(0.85)


def test_cli_compare_and_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the data verification cache
    out = tmp_path / "cli"
    code = main(["compare", "lenet", "--image-size", "28", "--epochs", "1", "--batch-size", "64", "--limit-train",
                 "128", "--limit-test", "100", "--device", "cpu", "--num-threads", "1", "--no-progress",
                 "--out-dir", str(out)])
    assert code == 0
    assert len(table_rows((out / "table.md").read_text())) == 1
    assert "| lenet |" in capsys.readouterr().out

    # a size below the minimum: exit 1, the minimum named, nothing written
    code = main(["sweep", "--model", "googlenet-paper", "--image-size", "16,32", "--out", str(tmp_path / "r")])
    assert code == 1
    assert "minimum input size is 31" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

    # usage errors: exit 2
    for argv in (["sweep", "--model", "googlenet", "--image-size", "16,x"], ["sweep", "--model", "googlenet"],
                 ["compare", "no-such-model"], ["compare"], ["compare", "lenet", "--seeds", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv


def test_a_diverged_run_is_a_row_of_the_table_and_the_experiment_goes_on(fmnist, tmp_path):
    """A NaN loss in one run (seen on an H200: the chapter's recipe at 48 px) must not throw the other rows away."""
    out = tmp_path / "div"
    variants = [experiments.Variant("boom", tiny(model="googlenet", lr=1e9)),
                experiments.Variant("ok", tiny(model="lenet"))]
    result = experiments.run_variants("compare", variants, out_dir=out, data=fmnist, log=None)

    assert result.status == "completed" and result.exit_code == 0
    boom, ok = result.rows
    assert boom.test_acc == [] and [d["seed"] for d in boom.diverged] == [0]
    assert "learning rate" in boom.diverged[0]["error"]
    assert len(ok.test_acc) == 1 and not ok.diverged
    rows = table_rows((out / "table.md").read_text())
    assert rows[0][0] == "boom" and rows[0][3] == "diverged" and rows[0][5] == "0 (+1 diverged)"
    assert rows[1][0] == "ok" and float(rows[1][3].split()[0]) == pytest.approx(ok.test_acc[0], abs=1e-4)
    saved = json.loads((out / "results.json").read_text())  # strict JSON: no NaN for the diverged row
    assert saved["rows"][0]["test_acc_mean"] is None and saved["rows"][0]["diverged"][0]["seed"] == 0
    assert json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert (tmp_path / "div" / "runs" / "boom-seed0" / "summary.json").is_file()  # the trainer's record of it


def test_branch_streams_for_a_batchnorm_model_are_refused_before_the_first_run(fmnist, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(experiments, "resolve_device", lambda *args, **kwargs: torch.device("cuda"))
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="refused for googlenet-bn"):
        experiments.compare(["googlenet", "googlenet-bn"], tiny(branch_streams=True), out_dir=out, data=fmnist,
                            log=None)
    assert not out.exists()  # nothing trained, nothing written


def curves_axes(monkeypatch):
    """The axes of every curves.png figure the experiment saves (accuracy.png's are left out)."""
    saved = []
    monkeypatch.setattr(experiments, "save_figure",
                        lambda fig, path: saved.append(fig.axes[0]) if path.name == "curves.png" else None)
    return saved


def test_curves_plot_the_validation_accuracy_dashed_beside_the_test_accuracy(fmnist, tmp_path, monkeypatch):
    saved = curves_axes(monkeypatch)
    out = tmp_path / "cmp"
    experiments.compare(["lenet"], tiny(epochs=2, val_split=200), seeds=2, out_dir=out, data=fmnist, log=None)

    row = json.loads((out / "results.json").read_text())["rows"][0]
    metrics = [[m["val_acc"] for m in runs.read_metrics(tmp_path / d)] for d in row["run_dirs"]]
    assert row["val_curves"] == metrics and row["val_curve_mean"] == pytest.approx([statistics.mean(e) for e in
                                                                                    zip(*metrics, strict=True)])
    ax = saved[-1]
    test, val = [line for line in ax.get_lines() if line.get_xdata().size]  # the legend's style key has no data
    assert list(test.get_ydata()) == pytest.approx(row["curve_mean"])
    assert list(val.get_xdata()) == [1, 2] and list(val.get_ydata()) == pytest.approx(row["val_curve_mean"])
    assert val.get_linestyle() == "--" and test.get_linestyle() == "-" and val.get_color() == test.get_color()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"lenet (val {row['val_acc_mean']:.3f}, test {row['test_acc_mean']:.3f})", "dashed: validation"]


def test_curves_without_a_validation_split_have_no_dashed_lines(monkeypatch, tmp_path):
    saved = curves_axes(monkeypatch)
    rows = [experiments.RowResult(label, "lenet", 28, 1, 0.0, seeds=[0, 1], test_acc=[0.6, 0.7],
                                  curves=[[0.5, 0.6], [0.6, 0.7]]) for label in ("a", "b")]
    experiments.plot_curves(tmp_path / "curves.png", rows)
    (ax,) = saved
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "-"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (0.650)", "b (0.650)"]
    assert ax.get_ylabel() == "test accuracy"


# --------------------------------------------------------------------------------------------- an --out-dir reused


def test_a_rerun_into_the_same_out_dir_keeps_the_other_rows_unless_told_to_replace_them(fmnist, tmp_path):
    """compare with fewer models used to drop the other rows from results.json and table.md."""
    out = tmp_path / "cmp"
    first = experiments.compare(["lenet", "googlenet-lite"], tiny(), out_dir=out, data=fmnist, log=None)
    lite = first.rows[1].to_dict()

    again = experiments.compare(["lenet"], tiny(), out_dir=out, data=fmnist, log=None)
    assert [r.label for r in again.rows] == ["lenet", "googlenet-lite"] and again.status == "completed"
    saved = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["lenet", "googlenet-lite"] and saved["rows"][1] == lite
    # lenet's row is the rerun's (its run directory continued: other wall seconds), in its old place
    assert saved["rows"][0] == again.rows[0].to_dict() and again.rows[0].wall_seconds != first.rows[0].wall_seconds
    assert [r[0] for r in table_rows((out / "table.md").read_text())] == ["lenet", "googlenet-lite"]

    with pytest.raises(ConfigError) as info:  # rows of another budget would be read as comparable
        experiments.compare(["lenet"], tiny(epochs=2), out_dir=out, data=fmnist, log=None)
    assert str(info.value) == (f"{out / 'results.json'} holds rows trained under another budget (epochs 1 there, 2 "
                               "here); pass --replace (replace=True) to drop them, or another --out-dir")
    assert json.loads((out / "results.json").read_text()) == saved

    replaced = experiments.compare(["lenet"], tiny(), out_dir=out, data=fmnist, log=None, replace=True)
    assert [r.label for r in replaced.rows] == ["lenet"]
    assert [r["label"] for r in json.loads((out / "results.json").read_text())["rows"]] == ["lenet"]
    assert [r[0] for r in table_rows((out / "table.md").read_text())] == ["lenet"]

    with pytest.raises(DatasetError):  # asked to replace, it drops the earlier rows at once, even if it then fails
        experiments.compare(["lenet"], tiny(data_dir=str(tmp_path / "no-data")), out_dir=out, log=None, replace=True)
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == [] and saved["status"] == "running" and table_rows((out / "table.md").read_text()) == []


def test_a_row_trained_again_replaces_the_earlier_one_only_once_all_its_seeds_ran():
    def row(label, size, seeds):
        return experiments.RowResult(label, "lenet", size, 1, 0.0, seeds=list(range(seeds)), test_acc=[0.5] * seeds)

    earlier = [row("a", 28, 2), row("b", 30, 2)]
    result = experiments.ExperimentResult("compare", None, "running", list(earlier), TrainConfig(), [0, 1], "cpu", 0.0)
    half, full, new = row("b", 30, 1), row("b", 30, 2), row("c", 24, 1)
    experiments.place_row(result, half)  # an interrupted rerun keeps the earlier row
    assert result.rows == earlier and result.rows[1] is earlier[1]
    experiments.place_row(result, full)
    assert result.rows[1] is full
    experiments.place_row(result, new)  # a new label goes at the end (a compare keeps its order)
    assert [r.label for r in result.rows] == ["a", "b", "c"]
    experiments.place_row(result, row("d", 20, 0))  # nothing run yet: nothing to show
    assert len(result.rows) == 3
    result.kind = "sweep"
    experiments.place_row(result, row("e", 26, 1))
    assert [r.image_size for r in result.rows] == [24, 26, 28, 30]


def test_a_second_experiment_in_a_directory_in_use_is_refused_before_any_work(fmnist, tmp_path):
    out = tmp_path / "busy"
    holder = runs.lock_run_dir(out)
    try:
        with pytest.raises(RunDirError, match="is in use"):
            experiments.compare(["lenet"], tiny(), out_dir=out, data=fmnist, log=None)
    finally:
        holder.release()
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_sweep_rerun_keeps_its_rows_in_size_order(fmnist, tmp_path):
    out = tmp_path / "sweep"
    experiments.sweep("lenet", [30], tiny(), out_dir=out, data=fmnist, log=None)
    result = experiments.sweep("lenet", [28], tiny(), out_dir=out, data=fmnist, log=None)
    assert [r.image_size for r in result.rows] == [28, 30]
    assert [r[0] for r in table_rows((out / "table.md").read_text())] == ["28", "30"]


def test_the_replace_flag_reaches_the_library(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiments, "run_variants", lambda kind, variants, **kw: calls.append(kw["replace"]))
    monkeypatch.setattr("inceptionlab.cli.experiments._finish", lambda result: 0)
    for extra in ([], ["--replace"]):
        assert main(["compare", "lenet", "--out-dir", str(tmp_path), *extra]) == 0
        assert main(["sweep", "--model", "lenet", "--image-size", "28", "--out-dir", str(tmp_path), *extra]) == 0
    assert calls == [False, False, True, True]


def test_a_sigkilled_compare_is_reported_interrupted_by_the_next_one(fmnist, tmp_path):
    """A SIGKILLed compare left table.md saying "running" for good; the next compare into the directory (which
    holds its lock, so no live process is writing there) rewrites it as interrupted before anything else."""
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "inceptionlab", "compare", "lenet", "googlenet-bn", "--image-size", "28",
            "--epochs", "1", "--batch-size", "64", "--limit-train", "128", "--limit-test", "100", "--device", "cpu",
            "--num-threads", "1", "--no-progress", "--out-dir", str(out)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rows_written() -> int:
        path = out / "results.json"
        return len(json.loads(path.read_text())["rows"]) if path.exists() else 0  # replaced atomically: whole

    try:
        deadline = time.monotonic() + 240
        while not rows_written() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the first row's outputs: written while googlenet-bn trains
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert "Status: running" in (out / "table.md").read_text()

    lines = []
    with pytest.raises(ConfigError, match="another budget"):  # even a refused rerun tells the truth first
        experiments.compare(["lenet"], tiny(epochs=2), out_dir=out, data=fmnist, log=lines.append)
    assert lines == [f"{out}: the compare that wrote it was stopped; its table now says interrupted"]
    assert "Status: interrupted" in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    assert [r[0] for r in table_rows((out / "table.md").read_text())] == ["lenet"]


def test_sigterm_between_runs_leaves_a_table_saying_interrupted(fmnist, tmp_path, monkeypatch):
    """The trainer handles SIGTERM during its epochs; one between two runs used to end the process with the table
    saying "running"."""
    real_cost = experiments.analysis.model_cost

    def cost_then_sigterm(model, *args):
        if model == "googlenet-lite":  # the second row, after the first row's outputs were written
            os.kill(os.getpid(), signal.SIGTERM)
        return real_cost(model, *args)

    monkeypatch.setattr(experiments.analysis, "model_cost", cost_then_sigterm)
    out = tmp_path / "term"
    result = experiments.compare(["lenet", "googlenet-lite"], tiny(), out_dir=out, data=fmnist, log=None)
    assert result.status == "interrupted" and result.exit_code == 128 + signal.SIGTERM
    assert [r.label for r in result.rows] == ["lenet"]
    assert "Status: interrupted" in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
