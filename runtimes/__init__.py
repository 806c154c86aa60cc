"""Execution backends for exported artifacts (ONNX Runtime, TensorRT, bucketed GEMM kernels)."""
