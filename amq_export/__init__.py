"""amq-export: Adaptive Mesh Quantization for neural PDE surrogates on meshes.

Pipeline: models -> passes -> QAT -> export -> runtimes. The public entry points live here.
"""

from amq_export.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from amq_export.errors import AMQError

__version__ = "0.1.0"

__all__ = ["AMQError", "Checkpoint", "__version__", "load_checkpoint", "load_model", "save_checkpoint"]
