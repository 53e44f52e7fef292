"""Analysis library and CLI: layer arithmetic against PyTorch, the chapter's figures, size limits, exit codes."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from inceptionlab import analysis
from inceptionlab.analysis import (
    check_input_size,
    conv_output_size,
    input_size_report,
    model_cost,
    pool_output_size,
    stage_shapes,
)
from inceptionlab.cli import main
from inceptionlab.errors import InputSizeError


def torch_size(op, n: int) -> int | None:
    try:
        return op(torch.empty(1, 1, n, n, device="meta")).shape[-1]
    except RuntimeError:
        return None


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_formula_agrees_with_pytorch(ceil_mode):
    for n, k, s, p in itertools.product(range(1, 12), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2)):
        if p > k // 2:  # PyTorch refuses such pools outright, whatever the input
            continue
        got = torch_size(lambda x: F.max_pool2d(x, k, s, p, ceil_mode=ceil_mode), n)  # noqa: B023
        assert pool_output_size(n, k, s, p, ceil_mode=ceil_mode) == got, (n, k, s, p, ceil_mode)


def test_conv_formula_agrees_with_pytorch():
    for n, k, s, p, d in itertools.product(range(1, 12), (1, 3, 5, 7), (1, 2, 4), (0, 1, 3), (1, 2)):
        weight = torch.empty(1, 1, k, k, device="meta")
        got = torch_size(lambda x: F.conv2d(x, weight, stride=s, padding=p, dilation=d), n)  # noqa: B023
        assert conv_output_size(n, k, s, p, d) == got, (n, k, s, p, d)


def test_googlenet_flops_and_shapes_match_the_anchors():
    cost = model_cost("googlenet", size=28)
    assert cost.params == 5_977_530
    assert cost.gflops_natural == pytest.approx(0.552, abs=5e-4)  # ANCHORS.md: 0.552 GFLOP at 96
    assert cost.gflops_at_size < cost.gflops_natural / 9  # FLOPs scale with the pixel count (28/96)^2 ~ 1/11.8
    assert cost.fc_params == 10_250 and cost.fc_share < 0.002
    shapes = {row.name: row.shape for row in stage_shapes("googlenet", 96)}
    assert shapes == {"b1": (64, 24, 24), "b2": (192, 12, 12), "b3": (480, 6, 6), "b4": (832, 3, 3),
                      "b5": (1024,), "head": (10,)}


def test_fully_connected_share_explains_the_parameter_gap():
    nin, alexnet = model_cost("nin"), model_cost("alexnet", size=28)
    assert nin.fc_params == 0  # NiN's classifier is a conv block + global average pooling
    assert alexnet.fc_share > 0.9 and alexnet.gflops_at_size is None  # 28 is outside AlexNet's 193..224
    rows = stage_shapes("googlenet-paper", 96)
    assert [r.name for r in rows if r.shape is None] == ["aux1", "aux2"]  # training-only heads, counted apart
    assert sum(r.params for r in rows) == model_cost("googlenet-paper").params


@pytest.mark.parametrize(
    ("name", "min_size", "max_size", "max_for_1x1"),
    [
        ("googlenet", 1, None, 32),  # padded convs and pools: even a 1x1 image goes through
        ("inception-v3", 1, None, 32),
        ("googlenet-paper", 31, None, 62),  # ceil-mode pools without padding need at least 3 rows before b4e
        ("nin", 67, None, 98),
        ("lenet", 28, 31, None),  # not "exactly 28": the pools' floor absorbs up to 3 extra pixels
        ("alexnet", 193, 224, None),
    ],
)
def test_input_size_limits_are_confirmed_by_real_forward_passes(name, min_size, max_size, max_for_1x1):
    report = input_size_report(name, verify=True)
    assert (report.min_size, report.max_size, report.max_size_for_1x1) == (min_size, max_size, max_for_1x1)
    assert report.verified is True  # a real CPU forward at min_size (and max_size) works
    assert report.failed_below is (None if min_size == 1 and max_size is None else True)


def test_vgg_size_band_from_arithmetic():
    # five 2x2 pools before a Linear(512*7*7): 224..255 (the real passes are in test_models / the CLI)
    report = input_size_report("vgg11", verify=False)
    assert (report.min_size, report.max_size) == (224, 255)
    assert "25088" in report.limit_reason


def test_check_input_size_names_the_minimum():
    check_input_size("googlenet-paper", 31)
    with pytest.raises(InputSizeError, match=r"accepts any size >= 31"):
        check_input_size("googlenet-paper", 30)
    with pytest.raises(InputSizeError, match=r"accepts 28 to 31"):
        check_input_size("lenet", 96)
    with pytest.raises(InputSizeError):
        check_input_size("googlenet", 0)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_shapes_and_min_size_json(capsys):
    code, out, _ = run_cli(capsys, "shapes", "--model", "googlenet", "--size", "96", "--json")
    data = json.loads(out)
    assert code == 0 and data["params"] == 5_977_530
    assert [s["shape"] for s in data["stages"]][:4] == [[64, 24, 24], [192, 12, 12], [480, 6, 6], [832, 3, 3]]
    code, out, _ = run_cli(capsys, "min-size", "--model", "lenet", "--json")
    data = json.loads(out)
    assert code == 0 and (data["min_size"], data["max_size"], data["verified"]) == (28, 31, True)
    code, out, _ = run_cli(capsys, "min-size", "--model", "googlenet-paper")
    assert code == 0 and "any size >= 31" in out and "fails as claimed" in out


def test_cli_params_table(capsys):
    code, out, _ = run_cli(capsys, "params", "--size", "28", "--json")
    data = json.loads(out)
    rows = {r["model"]: r for r in data["models"]}
    assert code == 0 and set(rows) >= {"googlenet", "alexnet", "vgg11", "nin", "lenet", "inception-v3"}
    assert rows["googlenet"]["gflops_natural"] == pytest.approx(0.552, abs=5e-4)
    assert rows["vgg11"]["params"] == 128_806_154 and rows["vgg11"]["gflops_at_size"] is None
    assert "global average pooling" in data["explanation"]


def test_cli_text_params_footer(capsys, monkeypatch):
    monkeypatch.setattr(analysis, "list_models", lambda: ["googlenet", "nin"])  # the text layout, not the sums
    code, out, _ = run_cli(capsys, "params")
    assert code == 0 and "googlenet" in out and "5,977,530" in out and "Why NiN and GoogLeNet" in out


def test_cli_errors_and_exit_codes(capsys):
    code, _, err = run_cli(capsys, "shapes", "--model", "googlenet-paper", "--size", "28")
    assert code == 1 and "any size >= 31" in err and "Traceback" not in err
    for argv in (["shapes", "--model", "googlenet-v9"], ["shapes", "--size", "-3"], ["shapes", "--size", "2.5"],
                 ["min-size"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    err = capsys.readouterr().err
    assert "choose from: googlenet" in err and "positive whole number" in err


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [  # the stage tables in docs/models.md and in the modules' docstrings
        ("inception-v3", 96, [(192, 12, 12), (288, 12, 12), (768, 6, 6), (768, 6, 6), (1280, 3, 3), (1024, 3, 3),
                              (1024,), (10,)]),
        ("inception-v3", 28, [(192, 4, 4), (288, 4, 4), (768, 2, 2), (768, 2, 2), (1280, 1, 1), (1024, 1, 1),
                              (1024,), (10,)]),
        ("inception-resnet", 96, [(256, 12, 12), (256, 12, 12), (896, 6, 6), (896, 6, 6), (1536, 3, 3),
                                  (1536, 3, 3), (1536,), (10,)]),
        ("googlenet-paper", 96, [(64, 24, 24), (192, 12, 12), (480, 6, 6), (512, 6, 6), (528, 6, 6), (832, 3, 3),
                                 (1024,), (10,), None, None]),
        ("alexnet", 224, [(96, 26, 26), (256, 12, 12), (256, 5, 5), (6400,), (10,)]),
    ],
)
def test_documented_stage_shapes(name, size, expected):
    assert [row.shape for row in stage_shapes(name, size)] == expected


def test_models_command_lists_the_registry(capsys):
    import json

    from inceptionlab.models import list_models

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_models()
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"]: m["natural_size"] for m in listed}["googlenet"] == 96
    assert len(listed) == len(list_models())
