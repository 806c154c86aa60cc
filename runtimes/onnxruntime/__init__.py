"""ONNX Runtime backend: sessions over exported artifacts, the optimized-graph export, parity checks."""

from runtimes.onnxruntime.parity import parity
from runtimes.onnxruntime.session import META_KEY, OrtModel, read_meta, save_optimized

__all__ = ["META_KEY", "OrtModel", "parity", "read_meta", "save_optimized"]
