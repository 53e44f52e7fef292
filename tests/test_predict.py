"""`inceptionlab predict` and inceptionlab.predict: image files from real Fashion-MNIST test images."""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from inceptionlab import data, runs
from inceptionlab.cli import main
from inceptionlab.config import TrainConfig
from inceptionlab.models import create_model, init_xavier_
from inceptionlab.predict import ImageError, load_image, load_image_with_info, pixel_model, predict

SIZE = 28  # small, so the tests run in seconds on a CPU; the pipeline is the same at 96


def make_run(run_dir, fmnist, *, model_name="googlenet", image_size=SIZE, normalize=False, train_images=600):
    """A run directory with a briefly trained model: Xavier-initialised features, a head fitted on them.

    Fitting only the linear head on frozen random features is a few seconds of CPU and gives ~75 % test
    accuracy, enough for predictions that mean something. The standardisation of the features is folded
    into the head, so the saved model is a plain registered model.
    """
    torch.manual_seed(0)
    model = init_xavier_(create_model(model_name)).eval()
    config = {"model": model_name, "model_options": {}, "num_classes": 10, "in_channels": 1,
              "image_size": image_size, "normalize": normalize}
    net = pixel_model(model, TrainConfig.from_dict(config))  # trains on what the model sees after its normalization
    if train_images:
        with torch.no_grad():
            x = data.resize_batch(fmnist.train_images[:train_images], image_size)
            features = model.forward_features(_normalized(x, net))
        mu, sd = features.mean(0), features.std()  # one scale: dead features have std 0
        head = torch.nn.Linear(features.shape[1], 10)
        opt = torch.optim.Adam(head.parameters(), 1e-2)
        y = fmnist.train_labels[:train_images]
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(head((features - mu) / sd), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            model.head.weight.copy_(head.weight / sd)
            model.head.bias.copy_(head.bias - (head.weight / sd) @ mu)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.save_weights(run_dir / runs.WEIGHTS, model, {"model": model_name, "image_size": str(image_size)})
    (run_dir / runs.CONFIG).write_text(json.dumps(config))
    return run_dir


def _normalized(x, net):
    """The input of the bare network: ``x`` after the wrapper's normalization (if any)."""
    return (x - net.mean) / net.std if hasattr(net, "mean") else x


@pytest.fixture(scope="module")
def fmnist():
    return data.load_fashion_mnist()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fmnist):
    return make_run(tmp_path_factory.mktemp("run") / "googlenet", fmnist)


def write_image(path, pixels: np.ndarray, mode="L", size=None, invert=False, alpha_background=False):
    """A Fashion-MNIST image (uint8 28x28, light-on-dark) as a file, optionally converted like a user's photo."""
    pixels = 255 - pixels if invert else pixels
    image = Image.fromarray(pixels, mode="L")
    if size is not None:
        image = image.resize(size, Image.Resampling.BICUBIC)
    if alpha_background:  # item opaque, background transparent (and white underneath)
        grey = np.asarray(image)
        alpha = Image.fromarray(np.where(grey > 10, 255, 0).astype(np.uint8), mode="L")
        image = Image.fromarray(np.where(grey > 10, grey, 255).astype(np.uint8), mode="L").convert("RGBA")
        image.putalpha(alpha)
        return image.save(path)
    image.convert(mode).save(path)


def test_png_of_a_test_image_gives_exactly_the_training_input(tmp_path, fmnist):
    pixels = fmnist.test_images[:3]
    for i, size in enumerate((28, 40, 96)):
        path = tmp_path / f"{i}.png"
        write_image(path, pixels[i, 0].numpy())
        x = load_image(path, size, invert=False)
        assert x.shape == (1, size, size) and x.dtype == torch.float32
        assert torch.allclose(x, data.resize_batch(pixels[i : i + 1], size)[0], atol=1e-6)


def test_auto_invert_and_alpha(tmp_path, fmnist):
    pixels = fmnist.test_images[0, 0].numpy()
    expected = data.resize_batch(fmnist.test_images[:1], SIZE)[0]
    write_image(tmp_path / "light.png", pixels)
    write_image(tmp_path / "dark.png", pixels, invert=True)
    write_image(tmp_path / "rgba.png", pixels, alpha_background=True)
    x, inverted = load_image_with_info(tmp_path / "light.png", SIZE)
    assert not inverted and torch.allclose(x, expected, atol=1e-6)
    x, inverted = load_image_with_info(tmp_path / "dark.png", SIZE)  # bright border -> inverted back
    assert inverted and torch.allclose(x, expected, atol=1e-6)
    assert torch.allclose(load_image(tmp_path / "dark.png", SIZE, invert=True), expected, atol=1e-6)
    x, inverted = load_image_with_info(tmp_path / "rgba.png", SIZE)  # transparent border = background
    assert not inverted and (x - expected).abs().max() < 0.05


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path, fmnist):
    pixels = fmnist.test_images[0, 0].numpy()
    Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # mode I;16
    x = load_image(tmp_path / "deep.png", SIZE, invert=False)
    assert torch.allclose(x, data.resize_batch(fmnist.test_images[:1], SIZE)[0], atol=1e-6)


def test_bad_files_raise_image_error(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("L", (28, 28)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:40])
    for name in ("notes.png", "missing.png", "cut.png"):
        with pytest.raises(ImageError, match=name):
            load_image(tmp_path / name, SIZE)
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path, SIZE)


def test_predict_matches_labels_on_png_and_jpeg(tmp_path, fmnist, run_dir, capsys):
    """Grey PNG, RGB JPEG at other sizes (non-square too), dark-on-light with --invert: mostly the true label."""
    n = 6
    labels = fmnist.test_labels[:n].tolist()
    variants = {
        "grey.png": dict(mode="L"),
        "rgb.jpg": dict(mode="RGB", size=(90, 90)),
        "wide.png": dict(mode="RGB", size=(70, 56)),
        "dark.png": dict(mode="L", invert=True, size=(56, 56)),
    }
    paths = {}
    for suffix, kwargs in variants.items():
        paths[suffix] = [tmp_path / f"{i}-{suffix}" for i in range(n)]
        for i, path in enumerate(paths[suffix]):
            write_image(path, fmnist.test_images[i, 0].numpy(), **kwargs)
    light = [str(p) for suffix in ("grey.png", "rgb.jpg", "wide.png") for p in paths[suffix]]
    outputs = []
    for files, flag in ((light, "--no-invert"), (list(map(str, paths["dark.png"])), "--invert")):
        assert main(["predict", str(run_dir), *files, "--top-k", "3", "--json", flag]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["backend"] == "pytorch"
    predictions = outputs[0]["predictions"] + outputs[1]["predictions"]
    for k, suffix in enumerate(variants):
        predicted = [p["top_k"][0]["class"] for p in predictions[k * n : (k + 1) * n]]
        correct = sum(p == t for p, t in zip(predicted, labels, strict=True))
        assert correct >= n - 2, (suffix, predicted, labels)
    assert [p["inverted"] for p in predictions] == [False] * 3 * n + [True] * n
    top = predictions[0]["top_k"]
    assert len(top) == 3 and top[0]["name"] == data.CLASS_NAMES[top[0]["class"]]
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"] > 0
    # the grey PNGs of 28x28 test images are the training inputs themselves: same classes as in memory
    model, config = runs.load_run_model(run_dir)
    direct = predict(pixel_model(model, config), data.resize_batch(fmnist.test_images[:n], SIZE), top_k=1)
    assert [p.classes[0] for p in direct] == [p["top_k"][0]["class"] for p in predictions[:n]]


def test_non_image_among_images(tmp_path, fmnist, run_dir, capsys):
    good = []
    for i in range(2):
        good.append(tmp_path / f"{i}.png")
        write_image(good[-1], fmnist.test_images[i, 0].numpy())
    bad = tmp_path / "readme.png"
    bad.write_text("hello")
    code = main(["predict", str(run_dir), str(good[0]), str(bad), str(good[1]), str(tmp_path / "gone.jpg")])
    captured = capsys.readouterr()
    assert code == 1
    assert "readme.png" in captured.err and "not an image" in captured.err
    assert "gone.jpg" in captured.err and "no such file" in captured.err
    assert "Traceback" not in captured.err
    lines = captured.out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(good[0]), str(good[1])]
    assert all("%" in line for line in lines)


def test_run_dir_without_weights_is_refused(tmp_path, fmnist, run_dir, capsys):
    broken = tmp_path / "unfinished"
    broken.mkdir()
    shutil.copy(run_dir / runs.CONFIG, broken / runs.CONFIG)
    image = tmp_path / "a.png"
    write_image(image, fmnist.test_images[0, 0].numpy())
    assert main(["predict", str(broken), str(image)]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err
    assert main(["predict", str(tmp_path / "nowhere"), str(image)]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_normalized_run_takes_pixels(fmnist, monkeypatch):
    """With normalize=true the wrapper applies mean/std, so callers always pass [0, 1] pixels."""
    model = create_model("googlenet").eval()
    config = TrainConfig(model="googlenet", image_size=SIZE, normalize=True)
    x = data.resize_batch(fmnist.test_images[:4], SIZE)
    with torch.no_grad():
        expected = model((x - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD)
        assert torch.allclose(pixel_model(model, config)(x), expected)
    assert pixel_model(model, config.replace(normalize=False)) is model


# ------------------------------------------------------------------------------------ large images and bombs


def png_of_zeros(path, width, height, rows=None):
    """A valid grey PNG of ``width`` x ``height`` black pixels, written without allocating the image: the
    IDAT stream is compressed row by row (a real decompression bomb: a few KB on disk). ``rows`` truncates it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), bytes(width + 1), []  # filter byte 0, then the pixels
    for _ in range(height if rows is None else rows):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))
    return path


def exact_pixels(grey: np.ndarray) -> torch.Tensor:
    """The reference of the module doc's steps 4-5 without any shortcut: pad to a square, then Pillow's resize."""
    h, w = grey.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.uint8)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = grey
    small = Image.fromarray(square).resize((28, 28), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255)


@pytest.mark.parametrize("shape", [(1, 8000), (8000, 3)])
def test_long_strip_is_shrunk_before_it_is_padded(tmp_path, shape):
    """The 1 x 50,000 PNG of the report became a 50,000^2 float array (19.8 GB). Sizes here keep a broken guard
    survivable (8000^2 float32 = 256 MB); numpy's allocations are what tracemalloc sees."""
    path = tmp_path / "strip.png"
    Image.new("L", shape, 200).save(path)
    tracemalloc.start()
    x = load_image(path, SIZE, invert=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32e6, f"{peak / 1e6:.0f} MB for a {shape} image"
    assert x.shape == (1, SIZE, SIZE) and 0 < x.max() <= 200 / 255 + 1e-6


def test_shrinking_a_large_photo_keeps_what_the_model_sees(tmp_path, fmnist):
    """A 2400 x 1800 photo of a test item (above the shrink threshold) against the unshortened pipeline."""
    item = Image.fromarray(fmnist.test_images[0, 0].numpy()).resize((2400, 1800), Image.Resampling.BICUBIC)
    item.save(tmp_path / "big.png")
    expected = data.resize_batch((exact_pixels(np.asarray(item)) * 255).round().to(torch.uint8)[None], SIZE)[0]
    x = load_image(tmp_path / "big.png", SIZE, invert=False)
    assert (x - expected).abs().max() <= 1 / 255 + 1e-6


def test_decompression_bombs_are_refused_before_decoding(tmp_path, run_dir, capsys, recwarn):
    """72 Mpx is above our limit and below Pillow's warning; 144 Mpx is the reported 12000^2 PNG; 400 Mpx is
    above Pillow's own error. Each is a one-line error, and the other image of the same command still works."""
    good = tmp_path / "good.png"
    Image.new("L", (28, 28)).save(good)
    cases = [png_of_zeros(tmp_path / "72mpx.png", 9000, 8000),
             png_of_zeros(tmp_path / "144mpx.png", 12000, 12000, rows=10),
             png_of_zeros(tmp_path / "400mpx.png", 20000, 20000, rows=10)]
    for path in cases:
        assert path.stat().st_size < 200_000
        with pytest.raises(ImageError, match=f"{path.name}.*(megapixels|decompression bomb)"):
            load_image(path, SIZE)
    assert main(["predict", str(run_dir), str(good), *map(str, cases)]) == 1
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == len(cases) and "Traceback" not in captured.err
    assert captured.out.startswith(str(good))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]  # a 2nd stderr line


# ----------------------------------------------------------------------------------------------- auto-invert


def cut_out(item: np.ndarray, negate: bool = False) -> Image.Image:
    """A user's cut-out of a garment: the item's own grey levels, dark interior pixels included, opaque wherever
    the item is; fully transparent (white underneath, as an editor leaves it) everywhere else."""
    colours = 255 - item if negate else item
    rgba = np.stack([colours, colours, colours, np.where(item > 0, 255, 0)], axis=-1).astype(np.uint8)
    rgba[item == 0, :3] = 255
    return Image.fromarray(rgba, mode="RGBA")


def test_cut_outs_are_inverted_only_when_dark_on_light(tmp_path, fmnist):
    """The first 200 test items as light-on-dark cut-outs (Fashion-MNIST's colours) stay as they are, and as
    dark-on-light cut-outs (a garment photo's colours) are inverted; both give exactly the training input.
    The rule before (the item's mean grey) inverted 64 of the first 200."""
    items = fmnist.test_images[:200]
    expected = data.resize_batch(items, SIZE)
    wrong = {False: [], True: []}
    for i, item in enumerate(items[:, 0].numpy()):
        for negate in (False, True):
            path = tmp_path / f"{i}-{negate}.png"
            cut_out(item, negate).save(path)
            x, inverted = load_image_with_info(path, SIZE)
            if inverted != negate or not torch.allclose(x, expected[i], atol=1e-6):
                wrong[negate].append(i)
    assert wrong == {False: [], True: []}


# ----------------------------------------------------------------------------------- device and broken models


def test_unknown_device_is_named_before_the_weights_are_read(tmp_path, fmnist, run_dir, capsys):
    image = tmp_path / "a.png"
    write_image(image, fmnist.test_images[0, 0].numpy())
    for device in ("tpu", "cuda:99", "meta"):
        assert main(["predict", str(run_dir), str(image), "--device", device]) == 1
        err = capsys.readouterr().err
        assert f"--device {device}" in err and runs.WEIGHTS not in err and len(err.strip().splitlines()) == 1


def test_overflowing_logits_are_refused_not_printed_as_nan(tmp_path, fmnist, run_dir, capsys):
    """Finite weights whose logits overflow to infinity: softmax would print "nan%" with exit 0."""
    broken = tmp_path / "overflow"
    shutil.copytree(run_dir, broken)
    state = load_file(broken / runs.WEIGHTS)
    state["head.weight"] = torch.full_like(state["head.weight"], 3e38)
    save_file(state, broken / runs.WEIGHTS)
    image = tmp_path / "a.png"
    write_image(image, fmnist.test_images[0, 0].numpy())
    assert main(["predict", str(broken), str(image)]) == 1
    captured = capsys.readouterr()
    assert "NaN or infinite" in captured.err and "nan" not in captured.out


def test_exif_orientation_still_applies_to_a_shrunk_photo(tmp_path, fmnist):
    """A phone photo stored sideways with EXIF orientation 6, large enough to be shrunk first."""
    upright = Image.fromarray(fmnist.test_images[0, 0].numpy()).resize((1900, 2000), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif.tobytes())
    upright.save(tmp_path / "upright.png")
    x = load_image(tmp_path / "sideways.png", SIZE, invert=False)
    assert (x - load_image(tmp_path / "upright.png", SIZE, invert=False)).abs().max() <= 2 / 255
