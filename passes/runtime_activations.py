"""Replace the ``nn.SiLU`` modules of a quantized model by ``RuntimeSiLU``.

A quantized model's evaluation in PyTorch runs the exported artifact's integer arithmetic; its SiLUs are the
remaining float kernels whose last bits differ between the two (``amq_export/amq/runtime_silu.py``). A
``RuntimeSiLU`` is PyTorch's SiLU, and ONNX Runtime's inside ``runtime_activations`` (parity checks).
"""

from __future__ import annotations

from torch import nn

from amq_export.amq.runtime_silu import RuntimeSiLU
from passes.context import PassContext


class RuntimeActivations:
    """Swap every ``nn.SiLU`` (setattr on its parent) for a ``RuntimeSiLU``."""

    name = "runtime_activations"
    requires = frozenset({"quantizers"})
    guarantees = frozenset({"runtime_activations"})

    def run(self, model: nn.Module, ctx: PassContext) -> list[str]:
        swapped = []
        for parent_name, parent in list(model.named_modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.SiLU:
                    setattr(parent, name, RuntimeSiLU().train(child.training))
                    swapped.append(f"{parent_name}.{name}" if parent_name else name)
        return [f"{len(swapped)} SiLU -> RuntimeSiLU (ONNX Runtime's logistic on request): {', '.join(swapped)}"
                ] if swapped else []
