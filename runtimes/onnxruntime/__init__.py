"""ONNX Runtime backend: sessions over exported artifacts, the optimized-graph export, parity checks."""

from runtimes.onnxruntime.parity import parity
from runtimes.onnxruntime.session import OrtModel, save_optimized

__all__ = ["OrtModel", "parity", "save_optimized"]
