"""curves.png's figure: what it draws is what the metrics rows say, validation curves only for rows that have them."""

from __future__ import annotations

import pytest

from inceptionlab import plots

ROWS = [{"epoch": 1, "train_loss": 1.2, "train_acc": 0.55, "test_loss": 0.9, "test_acc": 0.66},
        {"epoch": 2, "train_loss": 0.7, "train_acc": 0.74, "test_loss": 0.6, "test_acc": 0.77}]
VAL = [{"val_loss": 0.95, "val_acc": 0.64}, {"val_loss": 0.58, "val_acc": 0.79}]


def curves_of(rows, tmp_path, monkeypatch) -> dict:
    """The lines of the figure :func:`plots.plot_curves` saves for ``rows``, by legend label."""
    saved = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(fig))
    plots.plot_curves(tmp_path / "curves.png", rows, title="t")
    (ax,) = saved[0].axes
    return {line.get_label(): line for line in ax.get_lines()}


def test_curves_show_validation_loss_and_accuracy_from_the_rows(tmp_path, monkeypatch):
    lines = curves_of([{**r, **v} for r, v in zip(ROWS, VAL, strict=True)], tmp_path, monkeypatch)
    assert list(lines) == ["train loss", "train acc", "test acc", "val loss", "val acc"]
    assert list(lines["val acc"].get_xdata()) == [1, 2]
    assert list(lines["val acc"].get_ydata()) == [0.64, 0.79]
    assert list(lines["val loss"].get_ydata()) == [0.95, 0.58]
    assert list(lines["test acc"].get_ydata()) == [0.66, 0.77]  # beside the test curve, not instead of it
    # a style of their own: another line style and colour than the test curve
    test, val = lines["test acc"], lines["val acc"]
    assert (val.get_linestyle(), val.get_color()) != (test.get_linestyle(), test.get_color())
    assert val.get_linestyle() != lines["train acc"].get_linestyle()


def test_curves_without_a_validation_split_are_unchanged(tmp_path, monkeypatch):
    lines = curves_of(ROWS, tmp_path, monkeypatch)
    assert list(lines) == ["train loss", "train acc", "test acc"]
    assert list(lines["test acc"].get_ydata()) == [0.66, 0.77]


@pytest.mark.parametrize("rows, expected", [(ROWS, []), ([{**ROWS[0], **VAL[0]}], [(1, 0.95, 0.64)])])
def test_val_points(rows, expected):
    assert plots.val_points(rows) == expected
