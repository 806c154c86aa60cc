"""What the module-level passes share: the quantization config, the shared ``BitState`` and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amq_export.amq.allocation import validate_bits
from amq_export.amq.bit_state import DOMAINS, BitState
from amq_export.amq.config import (  # noqa: F401 (OTHER re-exported)
    OTHER,
    AMQConfig,
    check_domain_overrides,
    check_layer_offsets,
    check_weight_bits,
)
from amq_export.amq.cost import FloatLayer, LayerCost
from amq_export.amq.quant_linear import DEFAULT_ACT_QUANT

# A layer's domain: one of DOMAINS, or OTHER when its rows are none of them (it then stays float).


@dataclass(frozen=True)
class LayerInfo:
    """One weight-holding module of the float model, as ``FindDomains`` found it.

    ``kind`` is ``"linear"`` for ``nn.Linear`` / PyG ``Linear`` and the lower-case class name otherwise
    (``gru``, ``conv1d``, ``layernorm``, ``multiheadattention`` for its input projection).
    ``macs_per_row``: multiply-accumulates per input row of ``domain``. ``quantized``: a Linear called
    as a module on the rows of one domain, which ``InsertQuantizers`` replaces.
    """

    name: str
    kind: str
    domain: str
    in_features: int
    out_features: int
    macs_per_row: int
    quantized: bool

    def float_layer(self) -> FloatLayer:
        """This layer as ``cost.bops`` counts a float layer: only ``in * out`` (= MACs per row) matters."""
        if self.kind == "linear":
            return (self.name, self.domain, self.in_features, self.out_features)
        return (self.name, self.domain, self.macs_per_row, 1)


@dataclass
class PassContext:
    """Config in, results out. ``done`` holds the guarantees of the passes run so far on this context.

    ``domain_overrides`` maps module-name glob patterns (``fnmatch``) to a domain or ``"other"``; the
    first matching pattern wins. ``act_quant`` is the Brevitas activation quantizer of every bucket.
    """

    bits: tuple[int, ...]
    weight_bits: int = 8
    per_bucket_weight_bits: bool = False
    domain_overrides: dict[str, str] = field(default_factory=dict)
    layer_offsets: dict[str, int] = field(default_factory=dict)
    act_quant: type = DEFAULT_ACT_QUANT
    state: BitState = field(default_factory=BitState)
    layers: list[LayerInfo] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    amq_config: AMQConfig | None = None
    qmodel: Any = None  # the AMQModel, once AttachAuxiliary has run

    def __post_init__(self) -> None:
        self.bits = validate_bits(self.bits)
        check_weight_bits(self.weight_bits)
        check_domain_overrides(self.domain_overrides)
        check_layer_offsets(self.layer_offsets, self.bits)

    @classmethod
    def from_config(cls, config: AMQConfig) -> PassContext:
        return cls(bits=config.bits, weight_bits=config.weight_bits,
                   per_bucket_weight_bits=config.per_bucket_weight_bits,
                   domain_overrides=dict(config.domain_overrides), layer_offsets=dict(config.layer_offsets),
                   amq_config=config)

    @property
    def layer_costs(self) -> list[LayerCost]:
        """The cost-model view of the quantized layers (what ``InsertQuantizers`` swaps in)."""
        return [LayerCost(layer.name, layer.domain, layer.in_features, layer.out_features, self.weight_bits,
                          self.layer_offsets.get(layer.name, 0))
                for layer in self.layers if layer.quantized]

    @property
    def float_layers(self) -> list[FloatLayer]:
        """The layers left in float whose rows are a domain's, in the form ``cost.bops`` takes."""
        return [layer.float_layer() for layer in self.layers if not layer.quantized and layer.domain in DOMAINS]
