"""One image file -> uint8 C x size x size, the same way for training (the folder loader) and for ``predict``.

Pillow opens the file; the header's size is checked before any pixel is decoded; a truncated file is a
:class:`BadImageError` whatever ``ImageFile.LOAD_TRUNCATED_IMAGES`` says; EXIF orientation is applied; only the
first frame of an animated or multi-page file is used (:class:`DecodeNotes` says so). Then, in this order:

1. **8 bits**: "1" -> 0/255; palette and CMYK (and YCbCr, LAB, HSV, ...) -> RGB by Pillow's ``convert``.
   16-bit grey ("I;16", "I;16B", "I;16L") and 32-bit "I" (clipped to [0, 65535]) -> round(v * 255 / 65535), not
   Pillow's clip at 255 that loads a 16-bit PNG white; 16-bit colour PNGs reach us as 8 bits already (Pillow's
   decoder keeps the high byte, v >> 8). Float "F": clipped to [0, 1], then round(v * 255) (NaN -> 0).
2. **Transparency** (an alpha band, a palette's transparent entries, a PNG's tRNS colour) composited on
   ``background``: (pixel * a + background * (255 - a)) / 255 rounded, as ``Image.alpha_composite`` does.
3. **Colour**: ``grey`` is true when every pixel has R = G = B (or the image has one channel). ``color="grey"``
   -> Pillow's ITU-R 601-2 luma (``convert("L")``); ``"rgb"`` -> three equal channels; ``"auto"`` -> 1 channel
   iff grey.
4. **Square**: ``squash`` keeps the whole image; ``crop`` keeps the centred largest square; ``pad`` centres the
   image on a square of ``background`` (its luma for 1 channel). An odd margin puts the extra pixel right/bottom.
5. **Resize** to size x size with Pillow's BILINEAR filter on the 8-bit image (a 28 x 28 grey image gives exactly
   the pixels of :func:`inceptionlab.data.resize.resize_batch`); an image already size x size is left as it is.

``draft`` lets Pillow decode a JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling) when it stays at least size x size:
several times faster on large photos (BENCHMARKS.md), and slightly different pixels, so training and ``predict``
must use the same setting (both default to True).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import Image, ImageChops, ImageOps

from inceptionlab.errors import ConfigError, DatasetError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)
COLOR_MODES = ("auto", "grey", "rgb")
RESIZE_MODES = ("squash", "crop", "pad")
# 64 Mpx is twice an 8K frame; a larger header is a bomb or no training image, and decoding it costs GBs per worker.
MAX_PIXELS = 64 * 2**20

_ORIENTATION = 0x0112  # the EXIF tag ImageOps.exif_transpose reads
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transposed or turned by 90 degrees: width and height swap


class BadImageError(DatasetError):
    """A file that is no usable image. ``str()`` is one line, the reason; the caller adds the file's name."""


class DecodeNotes(NamedTuple):
    """What :func:`decode_image` found in the file (the folder loader reports these)."""

    mode: str  # the file's PIL mode: "L", "RGB", "RGBA", "P", "CMYK", "I;16", ...
    width: int  # original size, after EXIF rotation (before draft scaling)
    height: int
    frames: int  # > 1: animated or multi-page; only the first frame was used
    grey: bool  # every pixel has R = G = B after compositing, or the image has one channel


def is_image_file(name: str | os.PathLike) -> bool:
    """True for a name with an image suffix (any case); False for dot-files: ``.DS_Store``, AppleDouble ``._x.jpg``.

    ``Thumbs.db``, ``desktop.ini``, ``.txt`` and the like fail on their suffix."""
    base = os.path.basename(os.fspath(name))
    if base.startswith("."):
        return False
    return os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def decode_image(
    source: str | os.PathLike | bytes | BinaryIO,
    size: int,
    *,
    color: str = "auto",
    resize: str = "squash",
    background: tuple[int, int, int] = (255, 255, 255),
    draft: bool = True,
) -> tuple[np.ndarray, DecodeNotes]:
    """A path, bytes or binary file object -> (uint8 C x size x size, C-contiguous; :class:`DecodeNotes`).

    C is 1 for grey and 3 for RGB (``color="auto"``: 1 iff ``notes.grey``); the steps are in the module's docstring.
    Raises :class:`BadImageError` (one line, no file name) for anything that is not a whole, usable image.
    """
    _check_options(size, color, resize, background)
    with _open_source(source) as reader:
        image, mode, width, height, frames = _load_first_frame(reader, size, draft)
    image = _to_8bit(image, background)
    grey = image.mode == "L" or _equal_channels(image)
    image = _convert(image, "L" if color == "grey" or (color == "auto" and grey) else "RGB")
    image = _square(image, resize, background)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.array(image)
    pixels = pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))
    return pixels, DecodeNotes(mode, width, height, frames, grey)


def _check_options(size: int, color: str, resize: str, background: tuple[int, int, int]) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"image size must be a positive integer, got {size!r}")
    if color not in COLOR_MODES:
        raise ConfigError(f"color must be one of {', '.join(COLOR_MODES)}, got {color!r}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
        raise ConfigError(f"background must be three integers in 0-255 (R, G, B), got {background!r}")


class _EndOfData(Exception):
    """The decoder asked for bytes past the end of the file: the file is truncated."""


class _StrictReader:
    """A binary file whose ``read`` raises :class:`_EndOfData` at the end while ``strict``.

    Pillow treats a short read as truncation only while the global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False;
    this makes it so for our decoding without touching that global. No ``fileno``: Pillow then reads via ``read``.
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.strict = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if self.strict and not data and n != 0:
            raise _EndOfData
        return data

    def readline(self, limit: int = -1) -> bytes:
        return self._raw.readline(limit)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


@contextlib.contextmanager
def _open_source(source):
    """Yield a :class:`_StrictReader` over a path, bytes or file object; close only a file opened here."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield _StrictReader(io.BytesIO(bytes(source)))
    elif isinstance(source, (str, os.PathLike)):
        try:
            raw = open(source, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise BadImageError(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
        with raw:
            yield _StrictReader(raw)
    elif hasattr(source, "read"):
        seekable = getattr(source, "seekable", lambda: False)()
        yield _StrictReader(source if seekable else io.BytesIO(source.read()))
    else:
        raise TypeError(f"decode_image takes a path, bytes or a binary file, not {type(source).__name__}")


def _load_first_frame(reader: _StrictReader, size: int, draft: bool) -> tuple[Image.Image, str, int, int, int]:
    """Open, refuse by header size, load the first frame, apply EXIF orientation; any failure is a BadImageError."""
    try:
        reader.seek(0)
        if not reader.read(1):
            raise BadImageError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow's warning refuses the file too
            image = Image.open(reader)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise BadImageError(f"{width} x {height} pixels is over the {MAX_PIXELS:,}-pixel limit (a decompression "
                                "bomb, or too large to train on)")
        mode = image.mode
        reader.strict = True  # from here on a short read means truncation
        frames = getattr(image, "n_frames", 1)  # Pillow counts them and seeks back to the first
        if draft:
            image.draft(image.mode, (size, size))  # JPEG only; Pillow keeps the result >= size x size
        image.load()
        orientation = image.getexif().get(_ORIENTATION)
        if orientation in range(2, 9):
            image = ImageOps.exif_transpose(image)
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001 (a damaged file can make Pillow raise almost anything)
        raise BadImageError(_reason(exc)) from None
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return image, mode, width, height, frames


def _reason(exc: Exception) -> str:
    """One line saying why Pillow failed, without the file name it sometimes puts in its message."""
    if isinstance(exc, _EndOfData):
        return "truncated file (the data ends before the image does)"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can read (unknown format or damaged header)"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"refused as a decompression bomb ({' '.join(str(exc).split())})"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) if exc.args else ""  # not "None"
    text = " ".join(text.split())[:200]
    return f"cannot decode ({type(exc).__name__}{': ' + text if text else ''})"


def _to_8bit(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> "L" or "RGB", 8 bits, transparency composited on ``background`` (module docstring, 1-2)."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        grey = Image.fromarray(_wide_to_uint8(image))
        if isinstance(image.info.get("transparency"), int):  # a 16-bit tRNS grey value, compared before scaling
            alpha = np.where(np.asarray(image) == image.info["transparency"], 0, 255).astype(np.uint8)
            return _composite(Image.merge("LA", (grey, Image.fromarray(alpha))).convert("RGBA"), background)
        return grey
    if "transparency" in image.info or "A" in image.getbands() or "a" in image.getbands():
        unpremultiplied = _convert(image, "LA") if mode == "La" else image  # Pillow has no La -> RGBA
        return _composite(_convert(unpremultiplied, "RGBA"), background)
    if mode in ("L", "RGB"):
        return image  # a shortcut only: converting L to RGB would come back as grey, the same pixels
    return _convert(image, "RGB")  # 1, P, CMYK, YCbCr, LAB, HSV, RGBX: a one-channel result is found grey later


def _wide_to_uint8(image: Image.Image) -> np.ndarray:
    """16/32-bit integers: round(v * 255 / 65535) after clipping to [0, 65535]; float: round(v * 255) on [0, 1]."""
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return np.floor(np.clip(values, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)  # exact rounding: v / 257 is never a half


def _composite(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB over an opaque ``background``, alpha-weighted and rounded as Image.alpha_composite."""
    out = Image.new("RGB", image.size, background)
    out.paste(image, mask=image.getchannel("A"))
    return out


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """Pillow's ``convert``; a mode it cannot convert is a BadImageError."""
    if image.mode == mode:
        return image
    try:
        return image.convert(mode)
    except ValueError as exc:
        raise BadImageError(f"cannot convert PIL mode {image.mode} to {mode} ({exc})") from None


def _equal_channels(image: Image.Image, rows: int = 64) -> bool:
    """True when every pixel of an RGB image has R = G = B.

    Strip by strip in Pillow's C loops: a colour photo shows it in its first strip (2 ms on 4000 x 3000), a grey one
    costs one pass (70 ms there, against 115 ms for numpy's comparisons, most of it copying the image out)."""
    for top in range(0, image.height, rows):
        red, green, blue = image.crop((0, top, image.width, top + rows)).split()
        if ImageChops.difference(red, green).getbbox() or ImageChops.difference(green, blue).getbbox():
            return False
    return True


def _square(image: Image.Image, resize: str, background: tuple[int, int, int]) -> Image.Image:
    """``crop`` to the centred largest square or ``pad`` to the smallest square around the image; ``squash``: as is."""
    width, height = image.size
    if resize == "squash" or width == height:
        return image
    if resize == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return image.crop((left, top, left + side, top + side))
    side = max(width, height)
    fill = background if image.mode == "RGB" else Image.new("RGB", (1, 1), background).convert("L").getpixel((0, 0))
    out = Image.new(image.mode, (side, side), fill)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out
