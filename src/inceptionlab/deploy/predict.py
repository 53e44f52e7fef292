"""Classify the user's own images with a trained run, through PyTorch or ONNX Runtime.

An image is turned into what the model saw in training (``docs/deploy.md`` has the full story). A run trained on a
folder of images (``--data``) prepares it exactly as its training images were prepared
(:func:`inceptionlab.data.images.decode_image` with the run's colour, resize mode and background, then the
device resize). A run trained on Fashion-MNIST, whose items are light on black and 28 px, does this:

1. decode with Pillow (PNG, JPEG, GIF, BMP, TIFF, WebP...), take the first frame; files over
   :data:`MAX_IMAGE_PIXELS` are refused before decoding; images longer than 2 x :data:`SHRINK_TO` px are first
   averaged down by a whole factor (:func:`shrink`); apply the EXIF orientation;
2. to grey (``convert("L")``, ITU-R 601 luma, as Pillow does it); transparent pixels count as background;
3. invert if the image is dark-on-light: Fashion-MNIST items are light on a black background (for a cut-out
   with a transparent background the item's edge decides, see :func:`_auto_invert`);
4. pad to a square with the (black) background, keeping the aspect ratio: the dataset's items are centred;
5. resize to the data's stored size, 28 x 28 (Pillow bilinear, antialiased when shrinking): every training image
   was 28 px, so a sharp 500-pixel photo would otherwise look unlike anything the model saw;
6. resize 28 -> the run's image size with :func:`inceptionlab.data.resize_batch`, exactly as training did.

The result is float32 ``C x S x S`` in [0, 1]. Normalization (when the run used it) is part of the model:
:func:`inceptionlab.inputs.pixel_model` wraps the network so that both the PyTorch and the exported ONNX model
take [0, 1] pixels.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inceptionlab import runs
from inceptionlab.argcheck import PATH, TEXT, Rule, check, choice, instance, optional, sequence, whole
from inceptionlab.config import DEVICES
from inceptionlab.data.resize import resize_batch
from inceptionlab.deploy.onnx import open_session, session_logits
from inceptionlab.devices import DEVICE, resolve_device
from inceptionlab.errors import ConfigError, InceptionLabError
from inceptionlab.inputs import data_info, pixel_model

NATURAL_SIZE = 28  # the light-on-dark pipeline's stored size (the run's data says it: DataInfo.image_size)
# Images with a long side above 2 * SHRINK_TO are first averaged down to SHRINK_TO..2*SHRINK_TO px (see shrink)
SHRINK_TO = 896
# 64 Mpx: more than a phone or most cameras write; decoded at up to 4 bytes a pixel that is 256 MiB at most.
# Above it a file is refused before decoding (Pillow's own limit, 89 Mpx with a warning, is a library default)
MAX_IMAGE_PIXELS = 64_000_000
INVERT_MODES = ("auto", "invert", "no-invert")
INVERT = choice((True, False, "auto"), "True, False or 'auto'")  # what the ``invert`` arguments take
DEVICE_TYPE = Rule(DEVICE.what, DEVICE.is_type)  # its value is predict_device's to check (it knows cuda:N exists)
PREDICTOR = Rule("a model from load_predictor() or an onnxruntime.InferenceSession",
                 lambda v: isinstance(v, nn.Module) or callable(getattr(v, "run", None)))


class ImageError(InceptionLabError, ValueError):
    """An image file that is missing, unreadable or not an image."""


class NonFiniteError(InceptionLabError, ValueError):
    """A model whose logits are NaN or infinite."""


# ----------------------------------------------------------------------------------------------- images


def _rim(opaque: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(outermost ring of the opaque pixels, the rest): a pixel is inside when its four neighbours are opaque.
    The image's own edge does not count as transparent: cut-outs are often cropped to the item."""
    padded = np.pad(opaque, 1, constant_values=True)
    inner = opaque & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return opaque & ~inner, inner


def _auto_invert(grey: np.ndarray, alpha: np.ndarray | None) -> bool:
    """Guess whether the image is dark-on-light from its border (the background in a product photo).

    The border is the outer 1/16 of each side. If most of it is transparent (a cut-out) there is no background
    to look at, so the item's edge decides: its outermost ring was blended with the background it was cut from,
    so a ring darker than the ring just inside it means a dark background, i.e. light-on-dark like
    Fashion-MNIST. (The item's mean brightness, the rule before, inverted 1 in 3 Fashion-MNIST test items;
    this ring rule 22 of 10,000, and none of the first 200, see tests/test_predict.py.)
    """
    h, w = grey.shape
    m = max(1, min(h, w) // 16)
    border = np.ones((h, w), dtype=bool)
    border[m : h - m, m : w - m] = False
    if alpha is not None and alpha[border].mean() < 0.5:
        rim, inside = _rim(alpha > 0.5)
        ring2 = inside & ~_rim(inside)[1]
        if not ring2.any():  # an item one or two pixels thick: Fashion-MNIST items are light
            return bool(rim.any() and grey[rim].mean() < 127.5)
        return bool(grey[rim].mean() > grey[ring2].mean())
    weights = alpha[border] if alpha is not None else np.ones(border.sum())
    return bool((grey[border] * weights).sum() / max(weights.sum(), 1e-6) > 127.5)


def _averageable(image):
    """``image`` in a mode whose pixels may be averaged: not palette indices, bits, 16-bit or a keyed colour."""
    if image.mode in ("P", "PA") or "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I;16"):
        return image.convert("I")
    return image


def shrink(image):
    """``image`` box-averaged by a whole factor to a long side of SHRINK_TO..2*SHRINK_TO px, if it is longer.

    The pipeline pads to a square before it resizes to 28 px, so a 1 x 50,000 strip became a 50,000^2 array
    (19.8 GB); averaging first bounds that square (~50 MB at most). With 32+ source pixels left per output pixel
    the final resize gives the exact path's result within 1/255 (test items at 1800-5000 px; 4/255 for a
    7000 x 200 strip). Images up to 2*SHRINK_TO px take the exact path unchanged.
    """
    factor = max(image.size) // SHRINK_TO
    if factor < 2:
        return image
    return _averageable(image).reduce(factor)  # keeps image.info, so the EXIF orientation still applies after


def image_to_pixels(image, size: int, invert: bool | str = "auto", natural: int = NATURAL_SIZE
                    ) -> tuple[torch.Tensor, bool]:
    """A Pillow image -> (float32 ``1 x size x size`` in [0, 1], whether it was inverted). See the module doc."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(shrink(image))
    if image.mode.startswith(("I", "F")):  # 16-bit or float grey: Pillow's convert("L") would clip, not scale
        wide = np.asarray(image, dtype=np.float32)
        top = 1.0 if wide.max() <= 1.0 and image.mode == "F" else (255.0 if wide.max() <= 255 else 65535.0)
        image = Image.fromarray(np.rint(wide.clip(0, top) * (255.0 / top)).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        grey_alpha = image.convert("RGBA").convert("LA")
        grey = np.asarray(grey_alpha.getchannel("L"), dtype=np.float32)
        alpha = np.asarray(grey_alpha.getchannel("A"), dtype=np.float32) / 255
    else:
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        alpha = None
    if invert == "auto":
        invert = _auto_invert(grey, alpha)
    elif not isinstance(invert, bool):
        raise ValueError(f"invert must be True, False or 'auto', got {invert!r}")
    if alpha is not None:  # transparent = background, which is black once inverted (or white before)
        grey = grey * alpha + (255.0 if invert else 0.0) * (1 - alpha)
    if invert:
        grey = 255.0 - grey
    h, w = grey.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)  # black background, item centred
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = grey
    small = Image.fromarray(np.rint(square).clip(0, 255).astype(np.uint8), mode="L")
    if side != natural:
        small = small.resize((natural, natural), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(small).copy())
    return resize_batch(pixels[None], size)[0], invert


def _open_checked(path: Path):
    """Open ``path`` with Pillow (header only), refusing more than MAX_IMAGE_PIXELS before any pixel is decoded."""
    from PIL import Image

    image = Image.open(path)
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise ImageError(
            f"{path}: {width} x {height} pixels is more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels predict "
            "reads (a decompression bomb, or a scan far larger than needed): shrink it first, e.g. to 1000 px"
        )
    if image.format == "JPEG":  # let libjpeg decode at 1/2, 1/4 or 1/8 scale: less memory and time, same shrink
        image.draft(image.mode, (SHRINK_TO, SHRINK_TO))
    return image


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    return path


def load_image_with_info(path: str | os.PathLike, size: int, invert: bool | str = "auto") -> tuple[torch.Tensor, bool]:
    """:func:`load_image`, also returning whether the image was inverted (useful with ``invert="auto"``)."""
    from PIL import Image, UnidentifiedImageError

    check(path=(path, PATH), size=(size, whole(1)), invert=(invert, INVERT))
    path = _existing_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # our own limit is below Pillow's
            with _open_checked(path) as image:
                image.load()  # decode now: a truncated file fails here, not halfway through preprocessing
                return image_to_pixels(image, size, invert)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc}); shrink the image first") from None
    except (OSError, SyntaxError) as exc:  # truncated or damaged data
        raise ImageError(f"{path}: the image could not be decoded ({exc})") from None


def load_image(path: str | os.PathLike, size: int, invert: bool | str = "auto") -> torch.Tensor:
    """Read one image file as the model's input: float32 ``1 x size x size`` in [0, 1], light-on-dark.

    ``invert``: True for dark-on-light images (a garment photographed on white), False for light-on-dark
    ones (like Fashion-MNIST), ``"auto"`` to decide from the border brightness. Raises :class:`ImageError`.
    """
    return load_image_with_info(path, size, invert)[0]


def load_run_image(path: str | os.PathLike, config, invert: bool | str = "auto") -> tuple[torch.Tensor, bool]:
    """One image file as ``config``'s run saw its training images: float32 ``C x S x S`` in [0, 1], and whether it
    was inverted (only the light-on-dark Fashion-MNIST pipeline inverts)."""
    check(path=(path, PATH), invert=(invert, INVERT))
    info = data_info(config)
    if info.source == "fashion-mnist":
        return load_image_with_info(path, config.image_size, invert)
    from inceptionlab.data.images import BadImageError, decode_image

    path = _existing_file(path)
    try:
        pixels, _ = decode_image(path, info.image_size, color="grey" if info.channels == 1 else "rgb",
                                 resize=info.resize, background=tuple(info.background))
    except BadImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    return resize_batch(torch.from_numpy(pixels)[None], config.image_size)[0], False


# ----------------------------------------------------------------------------------------------- models


def predict_device(name: str | torch.device) -> torch.device:
    """The PyTorch device ``name`` (cpu, cuda, cuda:N, mps or auto), or a ConfigError saying which exist here."""
    try:
        device = torch.device("cpu" if name == "auto" else name)
    except (RuntimeError, TypeError):
        device = None
    usable = "use cpu, cuda, cuda:N, mps or auto"
    if device is None or device.type not in DEVICES:
        raise ConfigError(f"--device {name}: not a device predict can use; {usable}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); {usable}")
    available = resolve_device(name if name == "auto" else device.type)  # ConfigError when MPS is absent
    return device if device.index is not None else available


def load_predictor(run_dir: str | os.PathLike, onnx_path: str | os.PathLike | None = None, device="cpu"):
    """What :func:`predict` takes, and the run's :class:`~inceptionlab.config.TrainConfig`.

    Without ``onnx_path``: the run's PyTorch model taking [0, 1] pixels. With it: an ONNX Runtime session,
    after checking that the file was exported from this run and computes what the run's model computes
    (see :func:`inceptionlab.deploy.onnx.open_session`). The device is checked before anything is read.
    """
    check(run_dir=(run_dir, PATH), onnx_path=(onnx_path, optional(PATH)), device=(device, DEVICE_TYPE))
    device = predict_device(device)
    if onnx_path is None:
        model, config = runs.load_run_model(run_dir, device)
        return pixel_model(model, config), config
    config = runs.read_run_config(run_dir)
    return open_session(onnx_path, run_dir=run_dir, config=config), config


# ------------------------------------------------------------------------------------------- prediction


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first."""

    classes: list[int]
    names: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict:
        return {
            "top_k": [
                {"class": c, "name": n, "probability": p}
                for c, n, p in zip(self.classes, self.names, self.probabilities, strict=True)
            ]
        }


def logits_of(model_or_session, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits (float32, on the CPU) of a PyTorch model or an ONNX Runtime session, in batches."""
    outputs = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        if isinstance(model_or_session, nn.Module):
            device = next(model_or_session.parameters()).device
            with torch.inference_mode():
                out = model_or_session(x.to(device))
            if isinstance(out, tuple):  # a model with auxiliary heads left in training mode
                raise ValueError("the model returned auxiliary outputs: call model.eval() before predicting")
            outputs.append(out.float().cpu())
        else:
            outputs.append(session_logits(model_or_session, x))
    return torch.cat(outputs)


def predict(model_or_session, images: torch.Tensor, top_k: int = 3, names: list[str] | None = None):
    """Top-k classes with probabilities for ``images`` (float32 ``N x C x S x S`` in [0, 1]), named by ``names``
    (the run's :func:`~inceptionlab.inputs.class_names`; "class i" without).

    ``model_or_session``: a model from :func:`pixel_model` / :func:`load_predictor`, or an
    ``onnxruntime.InferenceSession`` of an exported file. Returns one :class:`Prediction` per image.
    """
    check(model_or_session=(model_or_session, PREDICTOR), images=(images, instance(torch.Tensor, "a tensor")),
          top_k=(top_k, whole(1)), names=(names, optional(sequence(TEXT, "a non-empty list of class names"))))
    if images.dim() == 3:
        images = images.unsqueeze(0)
    logits = logits_of(model_or_session, images)
    broken = (~logits.isfinite().all(dim=1)).nonzero().flatten().tolist()
    if broken:  # softmax would turn them into "nan%"
        raise NonFiniteError(
            f"the model's logits are NaN or infinite for {len(broken)} of {len(logits)} images (e.g. image "
            f"{broken[0]}): its weights are damaged or overflow; retrain the run or restore model.safetensors"
        )
    names = names or [f"class {i}" for i in range(logits.shape[1])]
    k = max(1, min(top_k, logits.shape[1]))
    probs, classes = torch.softmax(logits, dim=1).topk(k, dim=1)
    return [
        Prediction(c.tolist(), [names[i] for i in c.tolist()], [round(float(q), 6) for q in p])
        for p, c in zip(probs, classes, strict=True)
    ]
