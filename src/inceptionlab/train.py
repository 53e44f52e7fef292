"""Stable import path for the trainer (``from inceptionlab.train import train``); it lives in
:mod:`inceptionlab.engine.trainer`."""

from inceptionlab.config import TrainConfig
from inceptionlab.engine.evaluate import evaluate
from inceptionlab.engine.optim import build_optimizer, lr_at
from inceptionlab.engine.step import make_train_step
from inceptionlab.engine.trainer import TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "build_optimizer", "evaluate", "lr_at",
           "make_train_step", "train"]
