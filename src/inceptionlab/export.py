"""Stable import path for ONNX export (``from inceptionlab.export import export_onnx``); it lives in
:mod:`inceptionlab.deploy.onnx`."""

from inceptionlab.deploy.onnx import (
    ATOL,
    DEFAULT_OPSET,
    ONNXMismatchError,
    check_onnx,
    export_onnx,
    onnx_logits,
    open_session,
    read_metadata,
)

__all__ = ["ATOL", "DEFAULT_OPSET", "ONNXMismatchError", "check_onnx", "export_onnx", "onnx_logits", "open_session",
           "read_metadata"]
