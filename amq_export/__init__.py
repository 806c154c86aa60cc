"""amq-export: Adaptive Mesh Quantization for neural PDE surrogates on meshes.

Pipeline: models -> passes -> QAT -> export -> runtimes. The public entry points live here:

    qmodel = amq_export.quantize(model, amq_export.AMQConfig(budget=4.0), calibration=meshes)
    amq_export.finetune(qmodel, train, val, normalizer=norm, epochs=3)
    amq_export.evaluate(qmodel, test, normalizer=norm, mode="aux")
    amq_export.export(qmodel, "model.onnx", example=test[0], target="ort")

The quantization API is imported lazily (it pulls in Brevitas), so the CLI starts fast.
"""

from typing import Any

from amq_export.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from amq_export.errors import AMQError

__version__ = "0.1.0"

_LAZY = {"AMQConfig", "AMQModel", "quantize", "finetune", "evaluate", "export", "save_quantized", "load_quantized",
         "assign_layerwise_bits", "calibrate", "choose_layer_offsets", "fit_auxiliary"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from amq_export import api

        return getattr(api, name)
    raise AttributeError(f"module 'amq_export' has no attribute {name!r}")


__all__ = [  # noqa: RUF022 (eager names, then the lazy API)
    "AMQError", "Checkpoint", "load_checkpoint", "load_model", "save_checkpoint", "__version__",
    "AMQConfig", "AMQModel", "assign_layerwise_bits", "calibrate", "choose_layer_offsets", "evaluate", "export",
    "finetune", "fit_auxiliary", "load_quantized", "quantize", "save_quantized",
]
