"""The explorer page in a real browser (Debian's Chromium, headless, --dump-dom): the page writes what it shows into
<body data-*>, and that must be what deploy.predict gives for the image (an independent path), and with branches
knocked out from the URL what inspect's ablation of the whole network gives. The test is skipped only where
Chromium is missing and $CI is not set; under CI a missing Chromium fails it (`make test` installs it)."""

import functools
import html
import json
import os
import re
import shutil
import subprocess

import pytest
from PIL import Image

from inceptionlab.data.resize import resize_batch
from inceptionlab.deploy.predict import load_predictor, predict
from inceptionlab.explore.model import Explorer
from inceptionlab.explore.server import ExplorerServer, start_in_thread
from inceptionlab.inputs import class_names
from inceptionlab.inspect import replaced_forwards
from inceptionlab.prefix import ablated_forward, replacement


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Chromium is missing: `make test` installs it (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def url(small_run_dir, small_test_data):
    explorer = Explorer(small_run_dir, subset=100)
    explorer.run.data = small_test_data
    server = ExplorerServer(explorer, port=0)
    start_in_thread(server)
    yield server.url
    server.shutdown()
    server.server_close()


def browse(chromium, url, tmp_path, *extra) -> dict:
    """The page's <body> data attributes after its scripts ran (Chromium's virtual time waits for the fetches)."""
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", *extra, url],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r"<body([^>]*)>", done.stdout)
    assert match, done.stderr[-2000:]
    return {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', match.group(1))}


def expected(run_dir, data, index, off=None):
    """predict's probabilities of test image ``index``, with ``off`` ({block: [0-based branches]}) zero-ablated
    by replacing those blocks' forward in the whole network (inspect's ablated_forward)."""
    model, config = load_predictor(run_dir)
    modules = {name.removeprefix("model."): m for name, m in model.named_modules()}
    forwards = {modules[b]: functools.partial(ablated_forward, modules[b], {i: replacement("zero") for i in branches})
                for b, branches in (off or {}).items()}
    x = resize_batch(data.test_images[index : index + 1], config.image_size)
    with replaced_forwards(forwards):
        (p,) = predict(model, x, top_k=config.num_classes, names=class_names(config))
    probs = dict(zip(p.classes, p.probabilities, strict=True))
    return p.classes[0], [probs[i] for i in range(config.num_classes)]


def test_page_shows_predicts_prediction(chromium, url, small_run_dir, small_test_data, tmp_path):
    body = browse(chromium, f"{url}?image=7", tmp_path, "--dump-dom")
    assert body.get("state") == "ready", body
    top, probs = expected(small_run_dir, small_test_data, 7)
    assert int(body["predicted"]) == top and body["image"] == "7"
    assert json.loads(body["probabilities"]) == pytest.approx(probs, abs=1e-5)


def test_knockout_from_the_url_equals_inspects_ablation(chromium, url, small_run_dir, small_test_data, tmp_path):
    body = browse(chromium, f"{url}?image=7&off=b3.0:2,b4.1:1,b4.1:3", tmp_path, "--dump-dom")
    assert body.get("state") == "ready" and body["off"] == "b3.0:2,b4.1:1,b4.1:3", body
    top, probs = expected(small_run_dir, small_test_data, 7, {"b3.0": [1], "b4.1": [0, 2]})
    _, plain = expected(small_run_dir, small_test_data, 7)
    assert int(body["predicted"]) == top
    assert json.loads(body["probabilities"]) == pytest.approx(probs, abs=1e-5)
    assert probs != pytest.approx(plain, abs=1e-3)  # the knockout changed something


def test_screenshot(chromium, url, tmp_path):
    shot = tmp_path / "explorer.png"
    browse(chromium, f"{url}?image=7", tmp_path, f"--screenshot={shot}", "--window-size=1400,1800", "--dump-dom")
    with Image.open(shot) as image:
        assert image.size == (1400, 1800)
        assert len(image.convert("L").resize((64, 64)).getcolors(4096)) > 8  # a drawn page, not a blank one
