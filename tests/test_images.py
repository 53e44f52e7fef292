"""The image decoder (inceptionlab.data.images): every input is built here, and every expected pixel is computed by
Pillow or numpy here, never by decode_image itself."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from inceptionlab.data import images
from inceptionlab.data.images import (
    COLOR_MODES,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    RESIZE_MODES,
    BadImageError,
    DecodeNotes,
    decode_image,
    is_image_file,
)
from inceptionlab.data.resize import resize_batch
from inceptionlab.errors import ConfigError, DatasetError

BILINEAR = Image.Resampling.BILINEAR
RNG = np.random.default_rng(24)

# ---------------------------------------------------------------------------------------------------------
# helpers


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def random_rgb(width: int, height: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def chw(image: Image.Image) -> np.ndarray:
    """A PIL image as the decoder's layout: C x H x W."""
    pixels = np.asarray(image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def over(rgba: np.ndarray, background) -> np.ndarray:
    """Alpha compositing in numpy: (pixel * a + background * (255 - a)) / 255, rounded (never a tie: 255 is odd)."""
    alpha = rgba[..., 3:].astype(np.float64)
    mixed = (rgba[..., :3] * alpha + np.asarray(background, np.float64) * (255 - alpha)) / 255
    return np.rint(mixed).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width x height, all black: a few KB of zlib that would decode to width * height pixels."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_file(width, height, 1, 0, data)


def png_file(width: int, height: int, depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def declared_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with a header that declares width x height (the pixel data stays as it was)."""
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]


class Spy:
    """Counts ImageFile.load calls, to prove a file was refused before any pixel was decoded."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = ImageFile.ImageFile.load

        def load(image):
            self.calls += 1
            return real(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# ---------------------------------------------------------------------------------------------------------
# the interface


def test_constants():
    assert COLOR_MODES == ("auto", "grey", "rgb") and RESIZE_MODES == ("squash", "crop", "pad")
    wanted = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
    assert wanted <= IMAGE_EXTENSIONS
    readable = Image.registered_extensions()  # every suffix we accept is one Pillow reads
    assert all(ext == ext.lower() and ext in readable for ext in IMAGE_EXTENSIONS)
    assert MAX_PIXELS == 64 * 2**20


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cat.jpg", True), ("CAT.JPG", True), ("scan.TiFF", True), ("a/b/leaf.png", True), (Path("x/y.webp"), True),
        ("c.pbm", True), ("anim.gif", True), ("photo.jpeg", True),
        (".DS_Store", False), ("Thumbs.db", False), ("desktop.ini", False), ("._cat.jpg", False),
        ("a/._cat.jpg", False), (".hidden.png", False), ("notes.txt", False), ("jpg", False), ("cat.jpg.txt", False),
        ("archive.zip", False), ("", False), ("folder/", False),
    ],
)
def test_is_image_file(name, expected):
    assert is_image_file(name) is expected


def test_output_contract_and_sources(tmp_path):
    """A path (str or Path), bytes, a file object or an unseekable stream all give the same array."""
    pixels = random_rgb(40, 30)
    data = encode(Image.fromarray(pixels), "PNG")
    (tmp_path / "x.png").write_bytes(data)

    class Stream:  # a pipe-like object: read() only
        def __init__(self, data):
            self.read = io.BytesIO(data).read

    written = io.BytesIO()
    written.write(data)  # left at its end, as after writing into it
    expected = chw(Image.fromarray(pixels).resize((20, 20), BILINEAR))
    sources = (str(tmp_path / "x.png"), tmp_path / "x.png", data, bytearray(data), written, Stream(data))
    for source in sources:
        out, notes = decode_image(source, 20)
        assert out.dtype == np.uint8 and out.shape == (3, 20, 20) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected)
        assert notes == DecodeNotes("RGB", 40, 30, 1, False)


def test_errors_pickle_and_are_dataset_errors():
    """The folder loader decodes in worker processes: errors and notes cross process boundaries."""
    error = pickle.loads(pickle.dumps(BadImageError("truncated file")))
    assert isinstance(error, DatasetError) and str(error) == "truncated file"
    notes = DecodeNotes("P", 3, 4, 2, True)
    assert pickle.loads(pickle.dumps(notes)) == notes


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"size": 0}, "positive integer"), ({"size": 2.5}, "positive integer"), ({"color": "gray"}, "auto, grey, rgb"),
        ({"resize": "stretch"}, "squash, crop, pad"), ({"background": (0, 0)}, "three integers"),
        ({"background": (0, 0, 256)}, "three integers"),
    ],
)
def test_bad_options_are_config_errors(kwargs, words):
    data = encode(Image.new("L", (4, 4)), "PNG")
    with pytest.raises(ConfigError, match=words):
        decode_image(data, **{"size": 8, **kwargs})


# ---------------------------------------------------------------------------------------------------------
# resizing: squash, crop, pad, and the device resize


def test_fashion_mnist_28_to_96_is_pillow_and_resize_batch(fmnist):
    """A grey 28 x 28 image squashed to 96 gives exactly PIL's bilinear resize, and so resize_batch's pixels."""
    batch = fmnist.test_images[:200, 0]  # N x 28 x 28
    device = torch.round(resize_batch(batch, 96) * 255).to(torch.uint8).numpy()
    for i, image in enumerate(batch.numpy()):
        out, notes = decode_image(encode(Image.fromarray(image), "PNG"), 96)
        pillow = np.asarray(Image.fromarray(image).resize((96, 96), BILINEAR))
        np.testing.assert_array_equal(out[0], pillow)
        np.testing.assert_array_equal(out, device[i])
        assert notes == DecodeNotes("L", 28, 28, 1, True)
    unchanged, _ = decode_image(encode(Image.fromarray(batch[0].numpy()), "PNG"), 28)
    np.testing.assert_array_equal(unchanged[0], batch[0].numpy())


def test_an_image_at_the_size_is_unchanged():
    pixels = random_rgb(32, 32)
    out, _ = decode_image(encode(Image.fromarray(pixels), "PNG"), 32, resize="pad")
    np.testing.assert_array_equal(out, pixels.transpose(2, 0, 1))


@pytest.mark.parametrize(("width", "height"), [(41, 30), (30, 41), (64, 17)])
def test_squash_crop_pad(width, height):
    """crop: the centred largest square; pad: centred on the background; an odd margin's extra pixel goes right or
    bottom. Then Pillow's bilinear resize to the size."""
    pixels = random_rgb(width, height)
    data = encode(Image.fromarray(pixels), "PNG")
    side, short = max(width, height), min(width, height)
    left, top = (width - short) // 2, (height - short) // 2  # floor: 41 -> 5 left, 6 right
    cropped = pixels[top : top + short, left : left + short]
    padded = np.empty((side, side, 3), np.uint8)
    padded[...] = (10, 200, 77)
    y, x = (side - height) // 2, (side - width) // 2
    padded[y : y + height, x : x + width] = pixels
    for resize, square in (("squash", pixels), ("crop", cropped), ("pad", padded)):
        out, notes = decode_image(data, 24, resize=resize, background=(10, 200, 77))
        np.testing.assert_array_equal(out, chw(Image.fromarray(square).resize((24, 24), BILINEAR)), err_msg=resize)
        assert (notes.width, notes.height) == (width, height)
    if width == 41:
        assert (left, top) == (5, 0)


def test_pad_a_grey_image_with_the_luma_of_the_background():
    grey = RNG.integers(0, 256, (10, 16), dtype=np.uint8)
    out, _ = decode_image(encode(Image.fromarray(grey), "PNG"), 16, resize="pad", background=(200, 100, 50))
    luma = round((200 * 299 + 100 * 587 + 50 * 114) / 1000)  # ITU-R 601-2
    expected = np.full((16, 16), luma, np.uint8)
    expected[3:13] = grey
    np.testing.assert_array_equal(out[0], expected)
    rgb, _ = decode_image(encode(Image.fromarray(grey), "PNG"), 16, resize="pad", color="rgb", background=(200, 100, 5))
    assert rgb[:, 0, 0].tolist() == [200, 100, 5] and (rgb[:, 3:13] == grey).all()


# ---------------------------------------------------------------------------------------------------------
# colour


def test_color_grey_rgb_auto():
    pixels = random_rgb(20, 20)
    data = encode(Image.fromarray(pixels), "PNG")
    grey, notes = decode_image(data, 20, color="grey")
    r, g, b = (pixels[..., i].astype(np.int64) for i in range(3))
    luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # Pillow's fixed-point ITU-R 601-2 (convert("L"))
    np.testing.assert_array_equal(grey[0], luma)
    assert grey.shape == (1, 20, 20) and not notes.grey
    auto, _ = decode_image(data, 20)
    assert auto.shape == (3, 20, 20)

    same = np.repeat(pixels[..., :1], 3, axis=2)  # R = G = B in an RGB file
    auto, notes = decode_image(encode(Image.fromarray(same), "PNG"), 20)
    assert auto.shape == (1, 20, 20) and notes.grey and notes.mode == "RGB"
    np.testing.assert_array_equal(auto[0], same[..., 0])
    rgb, _ = decode_image(encode(Image.fromarray(same), "PNG"), 10, color="rgb")
    expected = np.asarray(Image.fromarray(same[..., 0]).resize((10, 10), BILINEAR))
    assert rgb.shape == (3, 10, 10) and all((channel == expected).all() for channel in rgb)

    same[3, 4, 2] ^= 1  # one pixel off grey: colour
    auto, notes = decode_image(encode(Image.fromarray(same), "PNG"), 20)
    assert auto.shape == (3, 20, 20) and not notes.grey


@pytest.mark.parametrize(
    ("row", "column", "channel"), [(0, 0, 1), (63, 10, 1), (70, 5, 2), (149, 199, 0), (149, 199, 2)]
)
def test_grey_check_reaches_every_pixel(row, column, channel):
    """One pixel off grey anywhere in a 200 x 150 image (three 64-row strips) makes it colour."""
    same = np.repeat(RNG.integers(0, 255, (150, 200, 1), dtype=np.uint8), 3, axis=2)
    _, notes = decode_image(encode(Image.fromarray(same), "PNG"), 8)
    assert notes.grey
    same[row, column, channel] += 1
    out, notes = decode_image(encode(Image.fromarray(same), "PNG"), 8)
    assert not notes.grey and out.shape == (3, 8, 8)


# ---------------------------------------------------------------------------------------------------------
# modes


def test_mode_1_and_l():
    bits = RNG.random((12, 12)) > 0.5
    out, notes = decode_image(encode(Image.fromarray(bits), "PNG"), 12)
    assert notes.mode == "1" and notes.grey
    np.testing.assert_array_equal(out[0], np.where(bits, 255, 0))
    grey = RNG.integers(0, 256, (12, 12), dtype=np.uint8)
    out, notes = decode_image(encode(Image.fromarray(grey), "PNG"), 12)
    assert notes.mode == "L" and out.shape == (1, 12, 12)
    np.testing.assert_array_equal(out[0], grey)


def palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A P image, its palette (16 x RGB) and its indices."""
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = RNG.integers(0, 16, (12, 12), dtype=np.uint8)
    image = Image.new("P", (12, 12))
    image.putpalette(palette.tobytes())
    image.frombytes(indices.tobytes())
    return image, palette, indices


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_palette_without_transparency(fmt):
    image, palette, indices = palette_image()
    out, notes = decode_image(encode(image, fmt), 12)
    assert notes.mode == "P"
    np.testing.assert_array_equal(out, palette[indices].transpose(2, 0, 1))


@pytest.mark.parametrize(("fmt", "transparency"), [("PNG", 3), ("GIF", 3), ("PNG", "alphas")])
def test_palette_with_transparency(fmt, transparency):
    """A transparent index (PNG tRNS, GIF) or per-entry alphas (PNG tRNS) composite on the background."""
    image, palette, indices = palette_image()
    if transparency == "alphas":
        alphas = RNG.integers(0, 256, 16, dtype=np.uint8)
        data = encode(image, fmt, transparency=alphas.tobytes())
    else:
        alphas = np.where(np.arange(16) == transparency, 0, 255)
        data = encode(image, fmt, transparency=transparency)
    out, notes = decode_image(data, 12, background=(0, 128, 255))
    rgba = np.concatenate([palette, alphas[:, None]], axis=1).astype(np.uint8)[indices]
    assert notes.mode == "P"
    np.testing.assert_array_equal(out, over(rgba, (0, 128, 255)).transpose(2, 0, 1))


def test_alpha_modes_rgba_la_and_rgb_trns():
    rgba = np.concatenate([random_rgb(12, 12), RNG.integers(0, 256, (12, 12, 1), dtype=np.uint8)], axis=2)
    out, notes = decode_image(encode(Image.fromarray(rgba), "PNG"), 12, background=(10, 200, 77))
    assert notes.mode == "RGBA"
    np.testing.assert_array_equal(out, over(rgba, (10, 200, 77)).transpose(2, 0, 1))

    la = rgba[..., [0, 3]]
    out, notes = decode_image(encode(Image.fromarray(la, "LA"), "PNG"), 12)  # on white: still grey
    assert notes.mode == "LA" and notes.grey and out.shape == (1, 12, 12)
    np.testing.assert_array_equal(out[0], over(rgba[..., [0, 0, 0, 3]], (255, 255, 255))[..., 0])
    out, notes = decode_image(encode(Image.fromarray(la, "LA"), "PNG"), 12, background=(10, 200, 77))
    assert not notes.grey and out.shape == (3, 12, 12)  # a coloured background shows through

    pixels = random_rgb(12, 12)
    pixels[:4] = (1, 2, 3)
    out, notes = decode_image(encode(Image.fromarray(pixels), "PNG", transparency=(1, 2, 3)), 12, background=(9, 9, 9))
    expected = pixels.copy()
    expected[:4] = 9
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))


@pytest.mark.parametrize(("fmt", "mode"), [("TIFF", "CMYK"), ("JPEG", "CMYK"), ("TIFF", "LAB"), ("TIFF", "YCbCr")])
def test_other_colour_spaces_convert_as_pillow_does(fmt, mode):
    cmyk = Image.fromarray(random_rgb(16, 16)).convert("CMYK") if mode == "CMYK" else Image.new(mode, (16, 16))
    if mode != "CMYK":
        cmyk.frombytes(RNG.integers(0, 256, 16 * 16 * 3, dtype=np.uint8).tobytes())
    data = encode(cmyk, fmt)
    out, notes = decode_image(data, 16)
    assert notes.mode == mode and out.shape == (3, 16, 16)
    reference = Image.open(io.BytesIO(data)).convert("RGB")
    np.testing.assert_array_equal(out, chw(reference))
    if mode == "CMYK" and fmt == "TIFF":  # Pillow's rule: (255 - C)(255 - K) / 255, within fixed-point rounding
        c, m, y, k = (np.asarray(cmyk)[..., i].astype(np.float64) for i in range(4))
        rgb = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)]) / 255
        assert np.abs(out - rgb).max() <= 1


def sixteen_bit() -> np.ndarray:
    """16-bit values where rounding and truncation differ (129 -> 1 rounded, 0 truncated) and clipping shows."""
    values = np.array([0, 128, 129, 256, 257, 385, 386, 32767, 32896, 40000, 65278, 65407, 65535] * 12)[:144]
    return values.reshape(12, 12).astype(np.uint16)


@pytest.mark.parametrize(("fmt", "dtype", "mode"), [("PNG", "<u2", "I;16"), ("TIFF", ">u2", "I;16B"),
                                                    ("TIFF", "<i4", "I")])
def test_sixteen_bit_is_scaled_not_clipped(fmt, dtype, mode):
    values = sixteen_bit()
    data = encode(Image.fromarray(values.astype(dtype)), fmt)
    out, notes = decode_image(data, 12)
    assert notes.mode == mode and notes.grey
    np.testing.assert_array_equal(out[0], np.rint(values.astype(np.int64) * 255 / 65535))
    clipped = np.asarray(Image.open(io.BytesIO(data)).convert("L"))  # what Pillow's convert does: min(v, 255)
    np.testing.assert_array_equal(clipped, np.minimum(values, 255))
    assert (clipped == 255).mean() > 0.6 and (out[0] == 255).mean() < 0.2  # a 16-bit image loads white there, not here


def test_sixteen_bit_colour_png_keeps_pillows_high_byte():
    """Pillow decodes 16-bit RGB PNGs to 8 bits itself (v >> 8): the low byte never reaches the decoder."""
    values = np.repeat(sixteen_bit()[..., None], 3, axis=2)
    values[..., 1] = 65535 - values[..., 1]
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    out, notes = decode_image(png_file(12, 12, 16, 2, zlib.compress(raw)), 12)  # 16-bit, colour type 2 (RGB)
    assert notes.mode == "RGB" and out.shape == (3, 12, 12)
    np.testing.assert_array_equal(out, (values >> 8).transpose(2, 0, 1))


def test_thirty_two_bit_int_is_clipped_to_sixteen_bits():
    values = np.array([[-5, 0, 65535, 70000]], dtype=np.int32).repeat(4, axis=0)
    out, _ = decode_image(encode(Image.fromarray(values), "TIFF"), 4)
    np.testing.assert_array_equal(out[0], np.array([[0, 0, 255, 255]] * 4))


def test_sixteen_bit_grey_with_a_transparent_value():
    values = sixteen_bit()
    out, _ = decode_image(encode(Image.fromarray(values), "PNG", transparency=40000), 12, background=(7, 7, 7))
    expected = np.where(values == 40000, 7, np.rint(values.astype(np.int64) * 255 / 65535))
    np.testing.assert_array_equal(out[0], expected)


@pytest.mark.filterwarnings("error")  # NaN must not reach a cast to uint8
def test_float_is_clipped_to_zero_one():
    values = np.array([[-1.0, 0.0, 0.5, 0.998, 1.0, 7.0, np.nan, 1 / 255]], dtype=np.float32).repeat(8, axis=0)
    out, notes = decode_image(encode(Image.fromarray(values), "TIFF"), 8)
    assert notes.mode == "F" and notes.grey
    np.testing.assert_array_equal(out[0, 0], [0, 0, 128, 254, 255, 255, 0, 1])


def test_premultiplied_grey_alpha_tiff():
    """A TIFF with associated alpha opens as "La", which Pillow cannot convert to RGBA directly."""
    la = np.stack([RNG.integers(0, 256, (8, 8)), RNG.integers(1, 256, (8, 8))], axis=2).astype(np.uint8)
    la[..., 0] = np.minimum(la[..., 0], la[..., 1])  # premultiplied: value <= alpha
    data = encode(Image.fromarray(la, "LA"), "TIFF")
    unassociated = struct.pack("<HHIH", 338, 3, 1, 2)  # ExtraSamples = 2; 1 means associated (premultiplied)
    assert data.count(unassociated) == 1
    data = data.replace(unassociated, struct.pack("<HHIH", 338, 3, 1, 1))
    image = Image.open(io.BytesIO(data))
    assert image.mode == "La"
    straight = np.asarray(image.convert("LA"))  # Pillow undoes the premultiplication
    out, notes = decode_image(data, 8, background=(30, 60, 90))
    assert notes.mode == "La" and out.shape == (3, 8, 8)
    np.testing.assert_array_equal(out, over(straight[..., [0, 0, 0, 1]], (30, 60, 90)).transpose(2, 0, 1))


def test_a_mode_pillow_cannot_convert_is_a_bad_image(monkeypatch):
    def refuse(image, mode=None, *args, **kwargs):
        raise ValueError(f"conversion from {image.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    data = encode(Image.new("CMYK", (4, 4)), "TIFF")
    assert assert_bad(data, "") == "cannot convert PIL mode CMYK to RGB (conversion from CMYK to RGB not supported)"


def test_a_format_pillow_reads_line_by_line():
    """XPM (read with readline): any format Pillow opens works, whatever the suffix."""
    xpm = b'/* XPM */\nstatic char *x[] = {\n"2 2 2 1",\n"a c #FF0000",\n"b c #0000FF",\n"ab",\n"ba"\n};\n'
    out, notes = decode_image(xpm, 2)
    assert notes.mode == "P"
    np.testing.assert_array_equal(out, np.array([[[255, 0], [0, 255]], [[0, 0], [0, 0]], [[0, 255], [255, 0]]]))


# ---------------------------------------------------------------------------------------------------------
# EXIF, frames, JPEG draft


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation(fmt, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(random_rgb(30, 20)), fmt, exif=exif)
    out, notes = decode_image(data, 16, draft=False)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(out, chw(reference.resize((16, 16), BILINEAR)))
    assert (notes.width, notes.height) == ((20, 30) if orientation >= 5 else (30, 20))


def test_exif_rotation_in_numpy():
    """Orientation 6 is 'turn 90 degrees clockwise to display', 3 is 'turn 180' (checked without Pillow's table)."""
    pixels = random_rgb(16, 16)
    for orientation, expected in ((6, np.rot90(pixels, -1)), (3, pixels[::-1, ::-1]), (8, np.rot90(pixels, 1))):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out, _ = decode_image(encode(Image.fromarray(pixels), "PNG", exif=exif), 16)
        np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))


def test_first_frame_of_animated_and_multi_page_files():
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (10, 10), c) for c in colours]
    for fmt in ("GIF", "PNG", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
        out, notes = decode_image(data, 10)
        assert notes.frames == 3, fmt
        assert (out.reshape(3, -1).T == colours[0]).all(), fmt
    pages = [RNG.integers(0, 256, (9, 7), dtype=np.uint8) for _ in range(2)]
    data = encode(Image.fromarray(pages[0]), "TIFF", save_all=True, append_images=[Image.fromarray(pages[1])])
    out, notes = decode_image(data, 9, resize="crop")
    assert notes == DecodeNotes("L", 7, 9, 2, True)
    np.testing.assert_array_equal(out[0], np.asarray(Image.fromarray(pages[0][1:8]).resize((9, 9), BILINEAR)))


def smooth_photo(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    return (np.stack([np.sin(9 * x), np.cos(7 * y), np.sin(5 * (x + y))], axis=2) * 127 + 128).astype(np.uint8)


def test_jpeg_draft():
    """draft decodes a large JPEG at 1/8 scale (Pillow's DCT scaling) before the resize; draft=False decodes it all."""
    data = encode(Image.fromarray(smooth_photo(1024, 768)), "JPEG", quality=90)
    drafted = Image.open(io.BytesIO(data))
    drafted.draft("RGB", (64, 64))
    assert drafted.size == (128, 96)
    full = Image.open(io.BytesIO(data)).resize((64, 64), BILINEAR)
    out, notes = decode_image(data, 64)
    np.testing.assert_array_equal(out, chw(drafted.resize((64, 64), BILINEAR)))
    assert (notes.width, notes.height) == (1024, 768)
    out_full, _ = decode_image(data, 64, draft=False)
    np.testing.assert_array_equal(out_full, chw(full))
    assert (out != out_full).any()
    small, _ = decode_image(data, 300)  # min(1024 // 300, 768 // 300) = 2: half scale, still >= 300 on both sides
    half = Image.open(io.BytesIO(data))
    half.draft("RGB", (300, 300))
    assert half.size == (512, 384)
    np.testing.assert_array_equal(small, chw(half.resize((300, 300), BILINEAR)))


# ---------------------------------------------------------------------------------------------------------
# bad files


def assert_bad(source, words: str, size: int = 16) -> str:
    with pytest.raises(BadImageError) as info:
        decode_image(source, size)
    reason = str(info.value)
    assert words in reason and "\n" not in reason and reason.strip() == reason
    return reason


def test_empty_non_image_and_unreadable_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a picture\nat all\n")
    (tmp_path / "dir.png").mkdir()
    for name, words in (("empty.png", "empty file"), ("notes.jpg", "not an image"), ("dir.png", "cannot read"),
                        ("missing.png", "cannot read")):
        reason = assert_bad(tmp_path / name, words)
        assert name not in reason and str(tmp_path) not in reason  # the caller adds the name
    assert assert_bad(b"", "empty file") == "empty file"
    assert assert_bad(tmp_path / "missing.png", "") == "cannot read the file (No such file or directory)"
    assert_bad(io.BytesIO(b"\x89PNG\r\n\x1a\n"), "not an image")
    assert_bad(encode(Image.new("RGB", (8, 8)), "PNG")[:30], "not an image")  # cut inside the header


@pytest.mark.parametrize("load_truncated", [False, True])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "BMP", "PPM", "WEBP"])
def test_truncated_files(fmt, load_truncated, monkeypatch):
    """A file cut in half is a BadImageError even where other code has set ImageFile.LOAD_TRUNCATED_IMAGES, and that
    global is left as it was."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    data = encode(Image.fromarray(smooth_photo(120, 90)), fmt)
    decode_image(data, 16)  # whole: fine
    assert_bad(data[: len(data) // 2], "cannot decode" if fmt == "WEBP" else "truncated file")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated
    if load_truncated and fmt in ("JPEG", "PNG"):  # what the wrapper prevents: Pillow decodes it without a word
        Image.open(io.BytesIO(data[: len(data) // 2])).load()


def test_strict_reader_and_reasons():
    """Only a read that asks for bytes and gets none is an end of data; reasons are one line without a path."""
    reader = images._StrictReader(io.BytesIO(b"ab"))
    reader.strict = True
    assert reader.read(0) == b"" and reader.read(5) == b"ab" and reader.read(0) == b""
    with pytest.raises(images._EndOfData):
        reader.read(1)
    assert images._reason(ValueError("bad\n  table")) == "cannot decode (ValueError: bad table)"
    reason = images._reason(OSError(5, "Input/output error", "/data/x.png"))
    assert reason == "cannot decode (OSError: Input/output error)"
    assert images._reason(SyntaxError()) == "cannot decode (SyntaxError)"


def test_png_without_its_last_chunk_is_truncated():
    data = encode(Image.fromarray(smooth_photo(40, 30)), "PNG")
    assert data.endswith(png_chunk(b"IEND", b""))
    assert_bad(data[:-12], "truncated file")


@pytest.fixture(scope="module")
def real_bomb() -> bytes:
    return bomb_png(20000, 20000)  # 400 Mpx


def test_decompression_bomb_refused_from_its_header(real_bomb, monkeypatch):
    """A few KB that would decode to 400 Mpx: refused without decoding, by Pillow's limit or, with it off, by ours."""
    assert len(real_bomb) < 100_000
    spy = Spy(monkeypatch)
    assert assert_bad(real_bomb, "").startswith("refused as a decompression bomb (Image size (400000000 pixels)")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # another program switched Pillow's check off
    assert "20000 x 20000 pixels" in assert_bad(real_bomb, "decompression bomb")
    assert spy.calls == 0


def test_our_limit_is_below_pillows_and_checked_before_load(monkeypatch):
    """9000 x 8000 (72 Mpx) is under Pillow's limit (89 Mpx) and over ours; 10000 x 9500 draws Pillow's warning,
    which refuses the file as well and does not leak out; nothing is decoded; Pillow's setting is untouched."""
    small = encode(Image.new("1", (8, 8)), "PNG")
    spy = Spy(monkeypatch)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        reason = assert_bad(declared_size(small, 9000, 8000), "decompression bomb")
        assert reason.startswith("9000 x 8000 pixels is over the 67,108,864-pixel limit")
        assert_bad(declared_size(small, 10000, 9500), "decompression bomb")
    assert not leaked and spy.calls == 0 and Image.MAX_IMAGE_PIXELS == pillow_limit
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    assert_bad(encode(Image.new("L", (11, 10)), "PNG"), "over the 100-pixel limit")
    decode_image(encode(Image.new("L", (10, 10)), "PNG"), 4)  # exactly at the limit: fine


# ---------------------------------------------------------------------------------------------------------
# real images made by no one here: scikit-image's and matplotlib's sample files


def sample_files() -> list:
    import matplotlib

    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    files = [pytest.param(p, id=f"mpl-{p.name}") for p in sorted(mpl.iterdir()) if is_image_file(p.name)]
    try:
        import skimage
    except ImportError:
        return files + [pytest.param(None, marks=pytest.mark.skip(reason="scikit-image is not installed "
                                                                          "(a dev dependency: pip install -e .[dev])"))]
    data = Path(skimage.__file__).parent / "data"
    return files + [pytest.param(p, id=f"skimage-{p.name}") for p in sorted(data.iterdir()) if is_image_file(p.name)]


def pillow_reference(path: Path, size: int) -> np.ndarray:
    """The expected pixels, by the plainest Pillow route: frame 0, JPEG draft, EXIF, alpha_composite on white,
    luma if R = G = B, bilinear resize."""
    image = Image.open(path)
    image.draft(image.mode, (size, size))
    image = ImageOps.exif_transpose(image).convert("RGBA")
    rgb = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    pixels = np.asarray(rgb)
    grey = (pixels == pixels[..., :1]).all()
    return chw((rgb.convert("L") if grey else rgb).resize((size, size), BILINEAR))


@pytest.mark.parametrize("path", sample_files())
def test_real_sample_files(path):
    try:
        Image.open(path).load()
    except Exception:  # noqa: BLE001 (whatever Pillow cannot read must be a BadImageError)
        assert_bad(path, "not an image" if path.name == "multipage_rgb.tif" else "")
        return
    out, notes = decode_image(path, 48)
    np.testing.assert_array_equal(out, pillow_reference(path, 48))
    with Image.open(path) as image:
        assert notes[:4] == (image.mode, *image.size, getattr(image, "n_frames", 1))


def test_real_files_through_every_option():
    """matplotlib's RGBA logo and a JPEG from its file object, cropped and padded, grey and RGB."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as stream:
        out, notes = decode_image(stream, 40, resize="crop", color="grey", draft=False)
    image = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    assert notes == DecodeNotes("RGB", 512, 600, 1, False)
    expected = image.crop((0, 44, 512, 556)).convert("L").resize((40, 40), BILINEAR)  # 600 - 512 = 88: 44 each side
    np.testing.assert_array_equal(out[0], np.asarray(expected))

    logo = Image.open(matplotlib.cbook.get_sample_data("logo2.png", asfileobj=False))
    out, notes = decode_image(logo.filename, 60, resize="pad", background=(0, 0, 0))
    assert notes.mode == "RGBA" and logo.size == (542, 130)
    square = np.zeros((542, 542, 3), np.uint8)
    square[206:336] = over(np.asarray(logo), (0, 0, 0))
    np.testing.assert_array_equal(out, chw(Image.fromarray(square).resize((60, 60), BILINEAR)))


def test_a_real_jpeg_cut_short(tmp_path):
    import matplotlib.cbook

    data = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])
    assert_bad(tmp_path / "cut.jpg", "truncated file")
    assert os.path.getsize(tmp_path / "cut.jpg") < len(data)
