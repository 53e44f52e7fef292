"""Stable import path for prediction (``from inceptionlab.predict import load_image, load_predictor, predict``); it
lives in :mod:`inceptionlab.deploy.predict`."""

from inceptionlab.deploy.predict import (
    ImageError,
    Prediction,
    image_to_pixels,
    load_image,
    load_image_with_info,
    load_predictor,
    load_run_image,
    logits_of,
    predict,
)
from inceptionlab.inputs import class_names, pixel_model

__all__ = ["ImageError", "Prediction", "class_names", "image_to_pixels", "load_image", "load_image_with_info",
           "load_predictor", "load_run_image", "logits_of", "pixel_model", "predict"]
