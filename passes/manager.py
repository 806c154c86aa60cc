"""The pass manager: runs module-level passes in order, checks their prerequisites, logs their changes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from torch import nn

from passes.context import PassContext

logger = logging.getLogger("amq_export.passes")


class Pass(Protocol):
    """A rewrite step. ``requires``: guarantees earlier passes must have given; ``run`` returns its changes."""

    name: str
    requires: frozenset[str]
    guarantees: frozenset[str]

    def run(self, model: nn.Module, ctx: PassContext) -> list[str]: ...


Report = list[tuple[str, list[str]]]


class PassManager:
    """Runs passes in order on one model and context.

    Every pass's ``requires`` is checked before any pass runs, against ``ctx.done`` (guarantees of
    passes run earlier on the same context) plus the guarantees of the passes before it in this list,
    so a later manager (e.g. calibration) can continue where an earlier one stopped.
    """

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    def check(self, ctx: PassContext) -> None:
        """Raise ValueError naming the first pass whose requirements no earlier pass guarantees."""
        available = set(ctx.done)
        for p in self.passes:
            missing = p.requires - available
            if missing:
                raise ValueError(
                    f"pass {p.name!r} requires {sorted(missing)}, which no earlier pass guarantees "
                    f"(available: {sorted(available)}); put the passes that guarantee them first"
                )
            available |= p.guarantees

    def run(self, model: nn.Module, ctx: PassContext) -> Report:
        """Run every pass; returns [(pass name, its changes)] and logs each change at INFO."""
        self.check(ctx)
        report: Report = []
        for p in self.passes:
            changes = p.run(model, ctx)
            ctx.done |= p.guarantees
            for change in changes:
                logger.info("%s: %s", p.name, change)
            report.append((p.name, changes))
        return report
