"""Classify the user's own images with a trained run, through PyTorch or ONNX Runtime.

An image is turned into what the model saw in training (``docs/deploy.md`` has the full story):

1. decode with Pillow (PNG, JPEG, GIF, BMP, TIFF, WebP...), apply the EXIF orientation, take the first frame;
2. to grey (``convert("L")``, ITU-R 601 luma, as Pillow does it); transparent pixels count as background;
3. invert if the image is dark-on-light: Fashion-MNIST items are light on a black background;
4. pad to a square with the (black) background, keeping the aspect ratio: the dataset's items are centred;
5. resize to 28 x 28 (Pillow bilinear, antialiased when shrinking): every training image was a 28 x 28
   Fashion-MNIST image, so a sharp 500-pixel photo would otherwise look unlike anything the model saw;
6. resize 28 -> the run's image size with :func:`inceptionlab.data.resize_batch`, exactly as training did.

The result is float32 ``1 x S x S`` in [0, 1]. Normalization (when the run used it) is part of the model:
:func:`inceptionlab.inputs.pixel_model` wraps the network so that both the PyTorch and the exported ONNX model
take [0, 1] pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inceptionlab import runs
from inceptionlab.data.resize import resize_batch
from inceptionlab.deploy.onnx import open_session, session_logits
from inceptionlab.errors import InceptionLabError
from inceptionlab.inputs import class_names, pixel_model

FASHION_MNIST_SIZE = 28
INVERT_MODES = ("auto", "invert", "no-invert")


class ImageError(InceptionLabError, ValueError):
    """An image file that is missing, unreadable or not an image."""


# ----------------------------------------------------------------------------------------------- images


def _auto_invert(grey: np.ndarray, alpha: np.ndarray | None) -> bool:
    """Guess whether the image is dark-on-light from its border (the background in a product photo).

    The border is the outer 1/16 of each side. If most of it is transparent the background is transparent,
    and the item's own brightness decides: Fashion-MNIST items are light, so a dark item is inverted.
    """
    h, w = grey.shape
    m = max(1, min(h, w) // 16)
    border = np.ones((h, w), dtype=bool)
    border[m : h - m, m : w - m] = False
    if alpha is not None and alpha[border].mean() < 0.5:
        opaque = alpha > 0.5
        return bool(opaque.any() and grey[opaque].mean() < 127.5)
    weights = alpha[border] if alpha is not None else np.ones(border.sum())
    return bool((grey[border] * weights).sum() / max(weights.sum(), 1e-6) > 127.5)


def image_to_pixels(image, size: int, invert: bool | str = "auto") -> tuple[torch.Tensor, bool]:
    """A Pillow image -> (float32 ``1 x size x size`` in [0, 1], whether it was inverted). See the module doc."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
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
    if side != FASHION_MNIST_SIZE:
        small = small.resize((FASHION_MNIST_SIZE, FASHION_MNIST_SIZE), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(small).copy())
    return resize_batch(pixels[None], size)[0], invert


def load_image_with_info(path: str | os.PathLike, size: int, invert: bool | str = "auto") -> tuple[torch.Tensor, bool]:
    """:func:`load_image`, also returning whether the image was inverted (useful with ``invert="auto"``)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not halfway through preprocessing
            return image_to_pixels(image, size, invert)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP...)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated or damaged data
        raise ImageError(f"{path}: the image could not be decoded ({exc})") from None


def load_image(path: str | os.PathLike, size: int, invert: bool | str = "auto") -> torch.Tensor:
    """Read one image file as the model's input: float32 ``1 x size x size`` in [0, 1], light-on-dark.

    ``invert``: True for dark-on-light images (a garment photographed on white), False for light-on-dark
    ones (like Fashion-MNIST), ``"auto"`` to decide from the border brightness. Raises :class:`ImageError`.
    """
    return load_image_with_info(path, size, invert)[0]


# ----------------------------------------------------------------------------------------------- models


def load_predictor(run_dir: str | os.PathLike, onnx_path: str | os.PathLike | None = None, device="cpu"):
    """What :func:`predict` takes, and the run's :class:`~inceptionlab.config.TrainConfig`.

    Without ``onnx_path``: the run's PyTorch model taking [0, 1] pixels. With it: an ONNX Runtime session,
    after checking that the file was exported from this run (see :func:`inceptionlab.deploy.onnx.open_session`).
    """
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
    """Top-k classes with probabilities for ``images`` (float32 ``N x 1 x S x S`` in [0, 1]).

    ``model_or_session``: a model from :func:`pixel_model` / :func:`load_predictor`, or an
    ``onnxruntime.InferenceSession`` of an exported file. Returns one :class:`Prediction` per image.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    logits = logits_of(model_or_session, images)
    names = names or class_names(logits.shape[1])
    k = max(1, min(top_k, logits.shape[1]))
    probs, classes = torch.softmax(logits, dim=1).topk(k, dim=1)
    return [
        Prediction(c.tolist(), [names[i] for i in c.tolist()], [round(float(q), 6) for q in p])
        for p, c in zip(probs, classes, strict=True)
    ]
