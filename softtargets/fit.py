"""A small generic training loop for a user's own student, on top of the read API.

Any softtargets dataset and any store kind: batches come from DistillDataset (targets in
memory) or StreamingDistillDataset (streamed unit by unit), the loss is distillation_loss, and
inputs reach the student as the dataset gives them (its dtype and shape, as write_logits gives
them to the teacher), so the student does its own scaling.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from softtargets.config import check_alpha, check_temperature
from softtargets.errors import ConfigError, TrainingDivergedError
from softtargets.loader import StreamOptions
from softtargets.progress import bar as progress_bar
from softtargets.read import (DistillDataset, SoftTargets, StreamingDistillDataset,
                              distillation_loss)
from softtargets.store import read_meta
from softtargets.write.forward import as_input

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What the loop needs besides the model, the data and the store."""

    temperature: float
    alpha: float
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    optimizer: str = "sgd"
    loader: str = "auto"  # auto: stream when the dense targets would exceed 1 GiB
    loader_workers: int = 0
    clip_grad: float = 0.0
    rule: str | None = None
    tail: str = "rest"

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got "
                              f"{self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got "
                                  f"{getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.loader_workers < 0:
            raise ConfigError(f"--loader-workers must be >= 0, got {self.loader_workers}")
        StreamOptions(loader=self.loader)  # the same loader names as the built-in students


def _stream(store: str, cfg: FitConfig) -> bool:
    """Whether to stream the store rather than read its targets into memory."""
    if cfg.loader != "auto":
        return cfg.loader == "stream"
    meta, _ = read_meta(store)
    return meta.n * meta.num_classes * 2 > StreamOptions().memory_limit_bytes  # float16 bytes


def batches(dataset: Any, store: str, cfg: FitConfig) -> tuple[Any, Any]:
    """(the stream or None, an iterable of (x, y, target) batches) over `dataset` and `store`."""
    options = dict(temperature=cfg.temperature, rule=cfg.rule, tail=cfg.tail)
    if _stream(store, cfg):
        stream = StreamingDistillDataset(dataset, store, batch_size=cfg.batch_size,
                                         seed=cfg.seed, **options)
        return stream, stream.loader(num_workers=cfg.loader_workers)
    data = DistillDataset(dataset, SoftTargets(store, **options))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed),
                        num_workers=cfg.loader_workers, collate_fn=DistillDataset.collate)
    return None, loader


def _optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)


def _epoch(model: nn.Module, loader: Iterable[Any], optim: torch.optim.Optimizer,
           cfg: FitConfig, epoch: int, bar: Any) -> float:
    """One epoch; the mean training loss per row."""
    model.train()
    total, rows = 0.0, 0
    for step, (x, y, target) in enumerate(loader):
        loss = distillation_loss(model(x), target, y, temperature=cfg.temperature,
                                 alpha=cfg.alpha)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"student: loss became {loss.item()} at epoch "
                                        f"{epoch + 1}, step {step + 1} (lr {cfg.lr}); lower --lr")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optim.step()
        total += loss.item() * len(y)
        rows += len(y)
        bar.update(len(y))
    return total / max(rows, 1)


@torch.no_grad()
def held_out_errors(model: nn.Module, test: Any, *, batch_size: int) -> dict[str, Any]:
    """Errors of the student's argmax on a held-out split (per position for sequences)."""
    model.eval()
    errors = count = 0
    for start in range(0, len(test), batch_size):
        x, y = test.read(slice(start, min(len(test), start + batch_size)))
        pred = model(as_input(x)).argmax(-1)  # (B,) or (B, L)
        errors += int((pred != as_input(y)).sum())
        count += int(y.size)
    return {"test_errors": errors, "test_n": count,
            "test_accuracy": 1 - errors / count if count else math.nan}


def fit_student(model: nn.Module, dataset: Any, store: str, cfg: FitConfig, *,
                test: Any = None, progress: bool = False) -> dict[str, Any]:
    """Train `model` from `store`'s soft targets on `dataset`; the metrics (test errors when
    `test` is given, the training loss of every epoch)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    stream, loader = batches(dataset, store, cfg)
    optim = _optimizer(model, cfg)
    losses = []
    bar = progress_bar(total=cfg.epochs * len(dataset), desc="student", unit="row",
                       enabled=progress)
    for epoch in range(cfg.epochs):
        if stream is not None:
            stream.set_epoch(epoch)
        losses.append(_epoch(model, loader, optim, cfg, epoch, bar))
    bar.close()
    metrics: dict[str, Any] = {"train_rows": len(dataset), "train_loss": losses[-1],
                               "train_losses": losses,
                               "loader": "stream" if stream is not None else "memory"}
    if test is not None:
        metrics.update(held_out_errors(model, test, batch_size=cfg.batch_size))
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
