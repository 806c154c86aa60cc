"""The public Python API: ``quantize`` -> ``finetune`` -> ``evaluate``, and save/load of quantized models.

    qmodel = amq_export.quantize(model, amq_export.AMQConfig(budget=4.0), calibration=train[:32])
    history = amq_export.finetune(qmodel, train, val, normalizer=norm, epochs=3)
    metrics = amq_export.evaluate(qmodel, test, normalizer=norm, budget=4.0, mode="aux")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amq_export.amq.config import AMQConfig
from amq_export.amq.model import AMQModel
from amq_export.amq.qat import (
    assign_layerwise_bits,
    calibrate,
    choose_layer_offsets,
    evaluate,
    finetune,
    fit_auxiliary,
)
from amq_export.checkpoint import load_state_dict_checked
from amq_export.errors import AMQError
from amq_export.safe_io import atomic_write, read_weights_only

QUANTIZED_FORMAT = "amq-export/quantized"
QUANTIZED_VERSION = 1
logger = logging.getLogger("amq_export")

__all__ = ["AMQConfig", "AMQModel", "assign_layerwise_bits", "calibrate", "choose_layer_offsets", "evaluate",
           "export", "finetune", "fit_auxiliary", "load_quantized", "quantize", "save_quantized"]


def export(qmodel: AMQModel, path: str | os.PathLike[str], *, example: Any, target: str = "onnx", **options: Any):
    """Export ``qmodel`` for ``target`` (``onnx`` | ``ort``) to ``path``, tracing with one ``example`` mesh;
    see :func:`amq_export.exporter.export` for the options. Returns an ``ExportResult``."""
    from amq_export.exporter import export as export_artifact

    return export_artifact(qmodel, path, example=example, target=target, **options)


def quantize(model: nn.Module, config: AMQConfig | None = None, *, calibration: Sequence[Any] | None = None,
             verbose: bool = False) -> AMQModel:
    """Rewrite a float mesh model (in place) into an ``AMQModel`` by running the module passes.

    find domains -> insert adaptive quantizers -> runtime activations -> attach auxiliary model [-> calibrate, when
    ``calibration`` meshes are given]. The pass report is kept in ``qmodel.pass_report``.
    """
    from passes import (
        AttachAuxiliary,
        Calibrate,
        FindDomains,
        InsertQuantizers,
        PassContext,
        PassManager,
        RuntimeActivations,
    )

    config = config or AMQConfig()
    if not hasattr(model, "config"):
        raise AMQError(f"{type(model).__name__} has no .config; quantize models built by amq_export.models")
    ctx = PassContext.from_config(config)
    passes = [FindDomains(), InsertQuantizers(), RuntimeActivations(), AttachAuxiliary()]
    if calibration is not None:
        passes.append(Calibrate(list(calibration)))
    report = PassManager(passes).run(model, ctx)
    qmodel = ctx.qmodel
    qmodel.pass_report = report
    qmodel.domain_table = ctx.layers
    if verbose:
        for name, changes in report:
            for change in changes:
                logger.info("%s: %s", name, change)
    return qmodel


def save_quantized(path: str | os.PathLike[str], qmodel: AMQModel, *, normalizer: dict | None = None,
                   task: dict | None = None) -> Path:
    """One weights-only file: the float architecture and config, the AMQ config and all parameters."""
    main = qmodel.main
    payload = {
        "format": QUANTIZED_FORMAT, "format_version": QUANTIZED_VERSION,
        "arch": main.arch, "config": dict(main.config), "amq_config": qmodel.amq_config.to_dict(),
        "layer_bits": qmodel.layer_bits,
        "state_dict": {k: v.detach().cpu() for k, v in qmodel.state_dict().items()},
        "normalizer": normalizer, "task": dict(task or {}),
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_quantized(path: str | os.PathLike[str]) -> tuple[AMQModel, dict[str, Any]]:
    """Rebuild a quantized model saved by :func:`save_quantized`; returns (qmodel, metadata)."""
    from amq_export.models import build_model

    blob = read_weights_only(path, "quantized checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != QUANTIZED_FORMAT:
        raise AMQError(f"{path} is not an amq-export quantized checkpoint; save it with amq_export.save_quantized")
    if blob.get("format_version", 0) > QUANTIZED_VERSION:
        raise AMQError(f"{path} has format version {blob.get('format_version')}; upgrade amq-export")
    qmodel = quantize(build_model(blob["arch"], blob["config"]), AMQConfig.from_dict(blob["amq_config"]))
    # scales become parameters at calibration: mark them so, then load the trained values
    with torch.no_grad():
        calibrate_shapes(qmodel)
    load_state_dict_checked(qmodel, blob["state_dict"], what=f"quantized checkpoint {path}")
    qmodel.layer_bits = blob.get("layer_bits")
    return qmodel.eval(), {"normalizer": blob.get("normalizer"), "task": blob.get("task", {})}


def calibrate_shapes(qmodel: AMQModel) -> None:
    """Run calibration once on the synthetic probe mesh so the quantizers hold their learned-parameter form."""
    from passes import probe_mesh

    calibrate(qmodel, [probe_mesh(qmodel.main.config)], batches=1)
