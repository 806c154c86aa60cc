"""Graph-rewrite passes: module level (domains, quantizer insertion) and ONNX level (lowering, clean-up)."""
