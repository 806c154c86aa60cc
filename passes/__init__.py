"""Graph-rewrite passes: module level (domains, quantizer insertion) and ONNX level (lowering, clean-up)."""

from passes.attach_auxiliary import AttachAuxiliary
from passes.calibrate import Calibrate
from passes.context import OTHER, LayerInfo, PassContext
from passes.find_domains import FindDomains, probe_mesh
from passes.insert_quantizers import InsertQuantizers
from passes.manager import Pass, PassManager, Report
from passes.runtime_activations import RuntimeActivations

__all__ = [
    "OTHER",
    "AttachAuxiliary",
    "Calibrate",
    "FindDomains",
    "InsertQuantizers",
    "LayerInfo",
    "Pass",
    "PassContext",
    "PassManager",
    "Report",
    "RuntimeActivations",
    "probe_mesh",
]
