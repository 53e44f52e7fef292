"""Shipping a trained run: :mod:`.onnx` (export, check, open safely) and :mod:`.predict` (your own images)."""
