"""Initialise every activation quantizer's scale and every layer's input range from a few batches."""

from __future__ import annotations

from torch import nn

from amq_export.amq.qat import calibrate
from passes.context import PassContext


class Calibrate:
    name = "calibrate"
    requires = frozenset({"auxiliary"})
    guarantees = frozenset({"calibrated"})

    def __init__(self, meshes: list, batches: int = 4, batch_size: int = 8) -> None:
        self.meshes, self.batches, self.batch_size = list(meshes), batches, batch_size

    def run(self, model: nn.Module, ctx: PassContext) -> list[str]:
        calibrate(ctx.qmodel, self.meshes, batches=self.batches, batch_size=self.batch_size)
        used = min(len(self.meshes), self.batches * self.batch_size)
        return [f"calibrated {len(ctx.layer_costs)} quantized layers on {used} meshes"]
