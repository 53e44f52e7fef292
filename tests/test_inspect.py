"""inceptionlab.inspect on a small trained googlenet-bn (28 px, ~20 s of training on 1,280 images): ablation is
evaluated exactly as `inceptionlab evaluate` does, and its numbers agree with an independent implementation that
edits the block's concatenated output with a forward hook, using the chapter's channel table."""

import json
import shutil

import pytest
import torch
from PIL import Image

from inceptionlab import inspect as insp
from inceptionlab.cli import main
from inceptionlab.data import ImageDataset
from inceptionlab.engine.evaluate import evaluate_run
from inceptionlab.errors import InceptionLabError
from inceptionlab.models import create_model

TEST_IMAGES = 500  # conftest.small_test_data's test split

# the chapter's first Inception block, inception(192, 64, (96, 128), (16, 32), 32): channels of b1..b4 in the
# concatenated output
B3_0_SLICES = [(0, 64), (64, 192), (192, 224), (224, 256)]


@pytest.fixture(scope="module")
def small_data(small_test_data) -> ImageDataset:
    return small_test_data


@pytest.fixture(scope="module")
def run_dir(small_run_dir):
    return small_run_dir


@pytest.fixture(scope="module")
def report(run_dir, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    return insp.inspect_run(run_dir, data=small_data, blocks=["b3.0"], image=3, out_dir=out)


def b3_0(report) -> dict:
    (block,) = report["blocks"]
    assert block["block"] == "b3.0"
    return block


@pytest.fixture(scope="module")
def reference(run_dir, small_data):
    """Independent of inspect's branch recording: the block's own output (the concatenation), its per-channel
    mean and sum of squares over the test images from a forward hook, and evaluation with a slice replaced."""
    run = insp.load_run(run_dir, data=small_data)
    block = run.model.b3[0]
    outputs = []
    hook = block.register_forward_hook(lambda _m, _a, out: outputs.append(out.double().cpu()))
    try:
        run.evaluate()
    finally:
        hook.remove()
    out = torch.cat(outputs)
    means, squares = out.mean(dim=(0, 2, 3)), out.square().sum(dim=(0, 2, 3))

    def evaluate_with_slice(start, stop, mode):
        def replace(_m, _a, out):
            out = out.clone()
            out[:, start:stop] = 0 if mode == "zero" else means[start:stop].to(out.dtype).view(1, -1, 1, 1)
            return out

        handle = block.register_forward_hook(replace)
        try:
            return run.evaluate()
        finally:
            handle.remove()

    return {"run": run, "block": block, "means": means, "squares": squares, "evaluate": evaluate_with_slice}


def test_unablated_model_gives_evaluate_runs_numbers_exactly(run_dir, small_data, report, reference):
    expected = evaluate_run(run_dir, data=small_data)
    assert expected["test_acc"] >= 0.45  # trained: chance is 0.1, so the ablation tests below can fail
    assert (report["test_acc"], report["test_loss"], report["count"]) == (
        expected["test_acc"], expected["test_loss"], expected["count"]) and report["count"] == TEST_IMAGES
    # the patched block forward that replaces nothing computes what the block does
    run, block = reference["run"], reference["block"]
    nothing = run.evaluate({block: insp.ablation_forward(block, insp.BranchStats(), [], "zero")})
    assert (nothing["acc"], nothing["loss"]) == (expected["test_acc"], expected["test_loss"])
    assert "forward" not in vars(block)  # the patch is gone afterwards


def test_channel_allocation_is_the_chapters(report):
    block = b3_0(report)
    assert block["channels"] == [64, 128, 32, 32] and block["kind"] == "Inception"
    assert [r["channels"] for r in block["branches"]] == [64, 128, 32, 32] and block["all"]["channels"] == 256


def test_energy_shares_match_the_block_output(report, reference):
    shares = [r["energy_share"] for r in b3_0(report)["branches"]]
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    squares = reference["squares"]
    expected = [float(squares[a:b].sum() / squares.sum()) for a, b in B3_0_SLICES]
    assert shares == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("branch", [1, 2, 4])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_branch_ablation_matches_replacing_its_channels_in_the_output(report, reference, branch, mode):
    row = b3_0(report)["branches"][branch - 1]
    result = reference["evaluate"](*B3_0_SLICES[branch - 1], mode)
    assert row[f"{mode}_acc"] == result["acc"]
    assert row[f"{mode}_loss"] == pytest.approx(result["loss"], rel=1e-3)  # mean: rounding of the mean's sum
    assert row[f"{mode}_drop"] == pytest.approx(report["test_acc"] - result["acc"])


def test_whole_block_ablation_drops_to_chance_and_mean_differs_from_zero(report):
    block = b3_0(report)
    assert report["test_acc"] >= 0.45
    assert block["all"]["zero_acc"] <= 0.2 and block["all"]["mean_acc"] <= 0.2
    for row in block["branches"]:
        assert row["mean_loss"] != row["zero_loss"]
    assert any(row["mean_acc"] != row["zero_acc"] for row in block["branches"])


def test_confident_mistakes_are_mistakes_in_order(report, small_data):
    errors = report["errors"]
    assert 0 < len(errors) <= 16
    assert all(e["true"] == int(small_data.test_labels[e["index"]]) != e["predicted"] for e in errors)
    confidences = [e["confidence"] for e in errors]
    assert confidences == sorted(confidences, reverse=True)
    assert len(errors) == min(16, round((1 - report["test_acc"]) * TEST_IMAGES))


def test_files_are_written(report):
    files = report["files"]
    assert set(files) == {"branches", "errors", "features", "report"}
    for key in ("branches", "errors", "features"):
        with Image.open(files[key]) as image:
            assert image.format == "PNG" and min(image.size) > 100
    with open(files["report"]) as f:
        saved = json.load(f)
    assert saved["blocks"] == json.loads(json.dumps(report["blocks"])) and saved["test_acc"] == report["test_acc"]


def test_a_model_without_branches_is_an_error():
    with pytest.raises(InceptionLabError, match="lenet has no multi-branch"):
        insp.select_blocks(create_model("lenet"), "lenet", None)
    with pytest.raises(InceptionLabError, match="blocks of googlenet are: b3.0, b3.1, b4.0"):
        insp.select_blocks(create_model("googlenet"), "googlenet", ["b6.0"])


def test_cli_json_with_an_image_file(run_dir, fmnist, tmp_path, capsys):
    image = tmp_path / "coat.png"
    Image.fromarray(fmnist.test_images[0, 0].numpy()).save(image)
    code = main(["inspect", str(run_dir), "--json", "--limit-test", "100", "--blocks", "b5.1", "--image",
                 str(image), "--out", str(tmp_path / "out")])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 100 and [b["block"] for b in result["blocks"]] == ["b5.1"]
    assert result["blocks"][0]["channels"] == [384, 384, 128, 128]  # the chapter's inception(832, 384, ...)
    assert (tmp_path / "out" / "features.png").is_file()


def test_cli_errors_cleanly(run_dir, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "config.json", unfinished)
    assert main(["inspect", str(unfinished)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("inceptionlab inspect: error:") and "model.safetensors" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["inspect", str(run_dir), "--image", "10000"]) == 1
    assert "index 10000 is out of range; pass 0..9999" in capsys.readouterr().err
