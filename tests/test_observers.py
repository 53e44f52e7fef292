"""TensorBoard events and live notebook curves: what they show is what metrics.jsonl says, read back independently
(tensorboard's own event reader), and they are off unless asked for."""

from __future__ import annotations

import sys

import pytest

from inceptionlab import runs
from inceptionlab.config import TrainConfig
from inceptionlab.errors import ConfigError
from inceptionlab.train import train


def tiny(tmp_path, **changes) -> TrainConfig:
    values = dict(model="lenet", image_size=28, epochs=2, batch_size=64, limit_train=512, limit_test=128,
                  num_threads=1, device="cpu", precision="fp32", sync_every=2, out=str(tmp_path))
    return TrainConfig(**{**values, **changes})


def test_tensorboard_events_match_metrics_jsonl(fmnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny(tmp_path, tensorboard=True), data=fmnist, log=None)
    events = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0, "images": 0}).Reload()
    rows = runs.read_metrics(result.run_dir)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "images_per_sec"):
        logged = [(e.step, e.value) for e in events.Scalars(f"epoch/{key}")]
        assert logged == [(r["epoch"] * 1000, pytest.approx(r[key], rel=1e-6)) for r in rows]
    # the running loss at every host read: 8 steps per epoch, one read every 2 steps
    running = events.Scalars("train/loss_running")
    assert [e.step for e in running] == [round((e + s / 8) * 1000) for e in range(2) for s in (2, 4, 6, 8)]
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([0.1] * 8)  # float32 in the events
    assert events.Images("test/confusion")  # the final confusion matrix as a picture
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the HParams tab has this run
    final = events.Scalars("hparam/test_acc")
    assert [e.value for e in final] == pytest.approx([result.summary["test_acc"]])
    assert not [tag for tag in events.Tags()["scalars"] if "val" in tag]  # no validation split, no val scalars


def test_tensorboard_shows_the_validation_split(fmnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny(tmp_path, tensorboard=True, val_split=200), data=fmnist, log=None)
    events = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0}).Reload()
    rows = runs.read_metrics(result.run_dir)
    for key in ("val_loss", "val_acc", "test_acc"):  # beside the test numbers, on the same x axis
        logged = [(e.step, e.value) for e in events.Scalars(f"epoch/{key}")]
        assert logged == [(r["epoch"] * 1000, pytest.approx(r[key], rel=1e-6)) for r in rows]
    summary = runs.read_summary(result.run_dir)
    for key in ("val_acc", "best_val_acc", "test_acc"):  # the HParams tab's final metrics
        assert [e.value for e in events.Scalars(f"hparam/{key}")] == pytest.approx([summary[key]], rel=1e-6)


def test_tensorboard_without_the_package_fails_before_any_work(fmnist, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'inceptionlab\[tensorboard\]'"):
        train(tiny(tmp_path, tensorboard=True), data=fmnist, log=None)
    assert not any(tmp_path.iterdir())  # no run directory was made


def live_figures(monkeypatch) -> tuple[list, list]:
    """A stand-in for the notebook's display handle, every redraw let through: (PNGs shown, figures shown). The
    figures are caught where the live curves turn them into PNGs (curves.png's figures never pass there)."""
    ipy_display = pytest.importorskip("IPython.display", reason="the notebook extra (IPython) is not installed")
    from inceptionlab import plots
    from inceptionlab.engine import observers

    updates, figures = [], []

    class Handle:
        def update(self, image):
            updates.append(image.data)

    def png_bytes(fig):
        figures.append(fig)
        return real_png_bytes(fig)

    real_png_bytes = plots.png_bytes
    monkeypatch.setattr(plots, "png_bytes", png_bytes)
    monkeypatch.setattr(ipy_display, "display", lambda *a, **k: Handle())
    monkeypatch.setattr(observers, "LIVE_DRAW_SECONDS", 0.0)
    return updates, figures


def lines_of(figure) -> dict:
    (ax,) = figure.axes
    return {line.get_label(): line for line in ax.get_lines()}


def test_live_curves_redraw_in_place_with_every_point(fmnist, tmp_path, monkeypatch):
    """The same figure is updated in place, with all points."""
    from inceptionlab.engine import observers

    updates, figures = live_figures(monkeypatch)
    drawn = []
    real = observers.LiveCurves._draw

    def spy(self, force=False):
        drawn.append((list(self.train), list(self.test)))
        real(self, force)

    monkeypatch.setattr(observers.LiveCurves, "_draw", spy)
    result = train(tiny(tmp_path), data=fmnist, log=None, live=True)
    train_points, test_points = drawn[-1]
    assert len(train_points) == 8 and [e for e, _ in test_points] == [1, 2]
    assert [acc for _, acc in test_points] == [r["test_acc"] for r in result.metrics]
    assert updates and all(png.startswith(b"\x89PNG") for png in updates)
    assert list(lines_of(figures[-1])) == ["train loss", "train acc", "test acc"]  # no validation split: no val


def test_live_curves_show_the_validation_accuracy(fmnist, tmp_path, monkeypatch):
    updates, figures = live_figures(monkeypatch)
    result = train(tiny(tmp_path, val_split=200), data=fmnist, log=None, live=True)
    lines = lines_of(figures[-1])  # the final redraw
    assert list(lines["val acc"].get_xdata()) == [1, 2]
    assert list(lines["val acc"].get_ydata()) == [r["val_acc"] for r in result.metrics]
    assert list(lines["val loss"].get_ydata()) == [r["val_loss"] for r in result.metrics]
    assert list(lines["test acc"].get_ydata()) == [r["test_acc"] for r in result.metrics]
    assert updates[-1].startswith(b"\x89PNG")


def test_nothing_live_outside_a_notebook_unless_asked(fmnist, tmp_path):
    from inceptionlab.engine.observers import in_notebook, make_observers

    assert not in_notebook()
    assert make_observers(tiny(tmp_path), tmp_path, live=None, is_main=True) == []
    assert make_observers(tiny(tmp_path, tensorboard=True), tmp_path, live=True, is_main=False) == []
