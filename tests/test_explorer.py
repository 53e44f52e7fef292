"""The explorer's HTTP API and its security rules, without a browser (http.client), on the small trained run of
conftest: predictions equal deploy.predict's (an independent path), a knockout equals inspect's whole-network
ablation, and foreign Hosts, big or missing bodies, non-images, bombs and paths outside the page are refused."""

import dataclasses
import functools
import http.client
import io
import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from inceptionlab.cli import main
from inceptionlab.data.resize import resize_batch
from inceptionlab.deploy.predict import load_predictor, load_run_image, predict
from inceptionlab.explore.model import Explorer
from inceptionlab.explore.server import MAX_BODY, ExplorerServer, start_in_thread
from inceptionlab.inputs import class_names
from inceptionlab.inspect import load_run, replaced_forwards
from inceptionlab.prefix import ablated_forward, replacement


@pytest.fixture(scope="module")
def server(small_run_dir, small_test_data):
    explorer = Explorer(small_run_dir, subset=200)
    explorer.run.data = small_test_data  # the test split the run was evaluated on (no second load)
    srv = ExplorerServer(explorer, port=0)
    start_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def request(server, method, path, body=None, headers=None, host=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host or f"127.0.0.1:{server.port}")
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if body is not None and "Content-Length" not in (headers or {}):
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    if body is not None and (headers or {}).get("Content-Length") is None:
        conn.send(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def post_json(server, path, value):
    response, data = request(server, "POST", path, json.dumps(value).encode())
    assert response.status == 200, data
    return json.loads(data)


def expected_probabilities(run_dir, x, forwards=None):
    """deploy.predict's probabilities for one input (all classes), with ``forwards`` replacing block forwards."""
    model, config = load_predictor(run_dir)
    blocks = {name.removeprefix("model."): m for name, m in model.named_modules()}  # behind PixelInput or not
    with replaced_forwards({blocks[k]: v(blocks[k]) for k, v in (forwards or {}).items()}):
        (p,) = predict(model, x, top_k=config.num_classes, names=class_names(config))
    return dict(zip(p.classes, p.probabilities, strict=True)), p.classes[0]


def test_prediction_of_a_test_image_is_predicts(server, small_run_dir, small_test_data):
    answer = post_json(server, "/api/predict", {"image": 7})
    x = resize_batch(small_test_data.test_images[7:8], 28)
    probs, top = expected_probabilities(small_run_dir, x)
    assert answer["predicted"] == top and answer["label"] == int(small_test_data.test_labels[7])
    assert answer["probabilities"] == pytest.approx([probs[i] for i in range(10)], abs=1e-5)
    assert answer["input"].startswith("data:image/png;base64,")


def test_a_bf16_runs_prediction_is_predicts_float32_answer(small_run_dir, small_test_data, monkeypatch):
    """predict and the ONNX file compute in float32, so the page shows their probabilities for a run trained in
    bf16 too (forced here, so that a CPU where `auto` means fp32 checks it as well)."""
    import inceptionlab.explore.model as explore_model

    def bf16_run(*args, **kwargs):
        run = load_run(*args, **kwargs, data=small_test_data)
        return dataclasses.replace(run, config=run.config.replace(precision="bf16"))

    monkeypatch.setattr(explore_model, "load_run", bf16_run)
    explorer = Explorer(small_run_dir, subset=50)
    assert explorer.run.config.precision == "bf16"
    answer = explorer.predict(image=7)
    probs, _ = expected_probabilities(small_run_dir, resize_batch(small_test_data.test_images[7:8], 28))
    assert answer["probabilities"] == pytest.approx([probs[i] for i in range(10)], abs=1e-5)


def test_knocked_out_branches_equal_inspects_whole_network_ablation(server, small_run_dir, small_test_data):
    answer = post_json(server, "/api/predict", {"image": 7, "off": "b3.0:2,b4.1:1,b4.1:3", "mode": "zero"})
    x = resize_batch(small_test_data.test_images[7:8], 28)
    zero = replacement("zero")
    forwards = {"b3.0": lambda m: functools.partial(ablated_forward, m, {1: zero}),
                "b4.1": lambda m: functools.partial(ablated_forward, m, {0: zero, 2: zero})}
    probs, _ = expected_probabilities(small_run_dir, x, forwards)
    plain, _ = expected_probabilities(small_run_dir, x)
    assert answer["probabilities"] == pytest.approx([probs[i] for i in range(10)], abs=1e-5)
    assert answer["probabilities"] != pytest.approx([plain[i] for i in range(10)], abs=1e-3)
    assert answer["off"] == {"b3.0": [2], "b4.1": [1, 3]}


def test_an_upload_is_prepared_as_predict_prepares_it(server, small_run_dir, small_test_data, tmp_path):
    path = tmp_path / "item.png"
    Image.fromarray(small_test_data.test_images[11, 0].numpy()).save(path)
    response, data = request(server, "POST", "/api/upload", path.read_bytes())
    assert response.status == 200, data
    answer = post_json(server, "/api/predict", {"upload": json.loads(data)["upload"]})
    model, config = load_predictor(small_run_dir)
    probs, top = expected_probabilities(small_run_dir, load_run_image(path, config)[0][None])
    assert answer["predicted"] == top
    assert answer["probabilities"] == pytest.approx([probs[i] for i in range(10)], abs=1e-5)


def test_knockout_search_changes_the_prediction(server):
    base = post_json(server, "/api/predict", {"image": 7})
    found = post_json(server, "/api/knockout", {"image": 7})
    assert found["found"] and 1 <= len(found["off"]) <= 8
    after = post_json(server, "/api/predict", {"image": 7, "off": ",".join(found["off"])})
    assert after["predicted"] != base["predicted"]


def test_anatomy_counts_the_chapters_branches(server):
    a = post_json(server, "/api/anatomy", {"image": 7, "block": "b3.0"})
    assert [b["channels"] for b in a["branches"]] == [64, 128, 32, 32] and a["out_channels"] == 256
    block = server.explorer.blocks["b3.0"]
    assert sum(b["params"] for b in a["branches"]) == sum(p.numel() for p in block.parameters())
    # 1x1 conv 192 -> 64 at 28 px: b3's grid is 4x4 (googlenet-bn at 28: 28 -> 14 -> 7 -> 4)
    h, w = a["input_shape"][1:]
    assert a["branches"][0]["macs"] == 192 * 64 * h * w
    assert all(1 <= len(b["tiles"]) <= 6 for b in a["branches"])


def test_sizes_confusion_and_specialists(server):
    response, data = request(server, "GET", "/api/size?size=1")
    small = json.loads(data)  # googlenet pads every convolution and pools globally: it takes any size
    assert response.status == 200 and small["ok"] and small["accepted"] == "any size >= 1"
    assert {c["model"]: c["gflops_at_size"] for c in small["costs"]}["alexnet"] is None  # alexnet stops earlier
    ok = json.loads(request(server, "GET", "/api/size?size=96")[1])
    assert ok["ok"] and ok["stages"][-1]["shape"] == [10]
    assert [c["model"] for c in ok["costs"]] == ["googlenet-bn", "alexnet", "vgg11", "nin"]
    c = json.loads(request(server, "GET", "/api/confusion")[1])
    assert c["count"] == 200 and sum(map(sum, c["matrix"])) == 200
    s = json.loads(request(server, "GET", "/api/specialists?block=b4.0")[1])
    assert len(s["branches"]) == 4 and all(len(b["images"]) == 6 for b in s["branches"])


def test_security_rules(server):
    response, data = request(server, "GET", "/api/run", host="evil.example:80")
    assert response.status == 403 and b"not this server's address" in data
    response, _ = request(server, "GET", "/api/run", host=f"localhost:{server.port}")
    assert response.status == 200
    assert response.getheader("Content-Security-Policy").startswith("default-src 'self'")
    assert response.getheader("Access-Control-Allow-Origin") is None
    for path in ("/../config.json", "/%2e%2e/config.json", "/%2e%2e/", "/static/../../config.json", "/app.js/.."):
        assert request(server, "GET", path)[0].status == 404, path
    response, data = request(server, "POST", "/api/upload", b"", headers={"Content-Length": str(MAX_BODY + 1)})
    assert response.status == 413 and b"8 MB" in data
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/api/upload")
    conn.endheaders()
    assert conn.getresponse().status == 411
    response, data = request(server, "POST", "/api/upload", b"this is not a picture")
    assert response.status == 400 and b"not an image" in data and len(data.splitlines()) == 1
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # 100 Mpx in a few kB
    response, data = request(server, "POST", "/api/upload", bomb.getvalue())
    assert response.status == 400 and b"the uploaded picture: refused as a decompression bomb" in data


def test_cli_serves_until_ctrl_c(small_run_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "inceptionlab", "serve", str(small_run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {small_run_dir} at http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1].strip("/\n"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "stopped" and err == ""


def test_cli_errors_are_one_line(small_run_dir, server, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert main(["serve", str(small_run_dir), "--port", str(server.port)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("inceptionlab serve: error:") for e in errors)
    assert f"port {server.port} on 127.0.0.1 is in use" in errors[1]


def test_a_model_without_branches_is_refused(small_run_dir, monkeypatch):
    from inceptionlab.errors import InceptionLabError
    from inceptionlab.explore import model as explore_model
    from inceptionlab.models import create_model

    def lenet_run(*args, **kwargs):
        run = load_run_real(*args, **kwargs)
        run.model, run.config = create_model("lenet"), run.config.replace(model="lenet")
        return run

    load_run_real = explore_model.load_run
    monkeypatch.setattr(explore_model, "load_run", lenet_run)
    with pytest.raises(InceptionLabError, match="lenet has no multi-branch"):
        Explorer(small_run_dir)


def test_notebook_helper_serves_the_page_in_an_iframe(small_run_dir):
    from inceptionlab.explore import show

    frame = show(small_run_dir, subset=50)
    try:
        assert frame.src.startswith("http://127.0.0.1:") and frame.src == frame.server.url
        conn = http.client.HTTPConnection("127.0.0.1", frame.server.port, timeout=30)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200 and b'<script src="/app.js"' in response.read()
    finally:
        frame.server.shutdown()
        frame.server.server_close()
