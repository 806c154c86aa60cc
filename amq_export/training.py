"""Float training and evaluation of mesh models (no quantization here)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_geometric.loader import DataLoader

from amq_export.checkpoint import save_checkpoint
from amq_export.data import MeshData
from amq_export.data.datasets import MeshDataset
from amq_export.data.normalizer import Normalizer
from amq_export.errors import AMQError
from amq_export.metrics import batch_relative_l2
from amq_export.progress import console, progress_bar


@dataclass
class TrainResult:
    """What a float training run measured; ``history`` has one dict per epoch."""

    best_val_rel_l2: float
    best_epoch: int
    test_rel_l2: float
    train_seconds: float
    epoch_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mesh_loader(meshes: list[MeshData], batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A PyG loader over meshes; shuffling is seeded so runs repeat exactly."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(meshes, batch_size=batch_size, shuffle=shuffle, generator=generator)


@torch.no_grad()
def evaluate_float(model: nn.Module, meshes: Iterable[MeshData], normalizer: Normalizer, batch_size: int = 16) -> float:
    """Mean per-sample relative L2 error in physical units (the FNO convention)."""
    meshes = list(meshes)
    if not meshes:
        raise AMQError("no meshes to evaluate on; pass a non-empty dataset split")
    was_training = model.training
    model.eval()
    errors = [batch_relative_l2(model(b), b, normalizer) for b in mesh_loader(meshes, batch_size)]
    model.train(was_training)
    return torch.cat(errors).mean().item()


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, time_budget_s: float | None = None
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to 0 over ``steps``, or over ``time_budget_s`` seconds (from now) if that runs out first."""
    start = time.perf_counter()

    def progress_fraction(step: int) -> float:
        done = step / steps
        if time_budget_s is not None:
            done = max(done, (time.perf_counter() - start) / time_budget_s)
        return min(done, 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * progress_fraction(s))))


def train_float(
    model: nn.Module,
    dataset: MeshDataset,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 8,
    weight_decay: float = 1e-5,
    seed: int = 0,
    time_budget_s: float | None = None,
    out: str | Path | None = None,
    task: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``dataset`` with a per-sample relative L2 loss, AdamW and a cosine schedule.

    The best model by validation relative L2 is kept (and saved to ``out`` when given); the
    model ends holding those best weights, and its test error is reported. With
    ``time_budget_s`` the run stops after the epoch that uses up that wall-clock time, and the
    learning-rate schedule follows whichever of epochs or time runs out first, so a budgeted run
    still anneals fully on a slower machine.
    """
    if epochs < 1 or batch_size < 1 or not (lr > 0):
        raise AMQError(f"epochs ({epochs}) and batch size ({batch_size}) must be >= 1 and lr ({lr}) > 0")
    if time_budget_s is not None and not time_budget_s > 0:
        raise AMQError(f"time budget must be > 0 seconds, got {time_budget_s}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loader = mesh_loader(dataset.train, batch_size, shuffle=True, seed=seed)
    start = time.perf_counter()
    scheduler = cosine_schedule(optimizer, epochs * len(loader), time_budget_s)
    best = (math.inf, 0)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = []
    with progress_bar(progress) as bar:
        job = bar.add_task(f"train {getattr(model, 'arch', 'model')}", total=epochs, info="")
        for epoch in range(1, epochs + 1):
            model.train()
            t0, total, count = time.perf_counter(), 0.0, 0
            for batch in loader:
                loss = batch_relative_l2(model(batch), batch, dataset.normalizer).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * batch.num_graphs
                count += batch.num_graphs
            val = evaluate_float(model, dataset.val, dataset.normalizer, batch_size)
            row = {"epoch": epoch, "train_rel_l2": total / count, "val_rel_l2": val,
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            improved = val < best[0]
            if improved:
                best = (val, epoch)
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if out is not None:
                    save_checkpoint(out, model, normalizer=dataset.normalizer.to_dict(), task=task)
            bar.update(job, advance=1, info=f"train {row['train_rel_l2']:.4f} val {val:.4f}")
            if bar.disable:
                console.print(
                    f"epoch {epoch:3d}/{epochs}  train rel-L2 {row['train_rel_l2']:.4f}  val rel-L2 {val:.4f}"
                    f"  {row['seconds']:.1f}s{'  *best' if improved else ''}"
                )
            if time_budget_s is not None and time.perf_counter() - start >= time_budget_s:
                break
    train_seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    test = evaluate_float(model, dataset.test, dataset.normalizer, batch_size)
    return TrainResult(
        best_val_rel_l2=best[0],
        best_epoch=best[1],
        test_rel_l2=test,
        train_seconds=train_seconds,
        epoch_seconds=sum(r["seconds"] for r in history) / len(history),
        history=history,
    )
