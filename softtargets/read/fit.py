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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softtargets.config import check_alpha, check_temperature
from softtargets.errors import ConfigError
from softtargets.read.loop import Batches, Checkpointer, Loop, StreamOptions
from softtargets.read.distill import check_loss
from softtargets.read.loss import distillation_loss
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
    loss: str = "kl"  # "kl" at T or "mse" of logits (distillation_loss)

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        check_loss(self.loss)
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


def _optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)


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
                test: Any = None, progress: bool = False, checkpoint: str | None = None,
                checkpoint_every: int = 100, resume: bool = False) -> dict[str, Any]:
    """Train `model` from `store`'s soft targets on `dataset`; the metrics (test errors when
    `test` is given, the training loss of every epoch).

    checkpoint: a file the training state is saved to every `checkpoint_every` batches and
    after each epoch; with `resume` and that file present, training goes on from it, mid-epoch,
    with exactly the batches not yet trained on (streamed or in memory)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = Batches(dataset, store, batch_size=cfg.batch_size, seed=cfg.seed,
                   temperature=cfg.temperature, rule=cfg.rule, tail=cfg.tail,
                   options=StreamOptions(loader=cfg.loader, workers=cfg.loader_workers))
    saver = None if checkpoint is None else Checkpointer(
        Path(checkpoint), checkpoint_every,
        {**dataclasses.asdict(cfg), "store": str(store), "rows": len(dataset)})

    def loss(s: torch.Tensor, y: torch.Tensor, target: Any) -> torch.Tensor:
        return distillation_loss(s, target, y, temperature=cfg.temperature, alpha=cfg.alpha,
                                 loss=cfg.loss)

    loop = Loop(model, _optimizer(model, cfg), loss, clip_grad=cfg.clip_grad, lr=cfg.lr)
    history = loop.run(data, cfg.epochs, saver=saver, resume=resume, progress=progress)
    losses = [row["train_loss"] for row in history]
    metrics: dict[str, Any] = {"train_rows": len(dataset), "train_loss": losses[-1],
                               "train_losses": losses, "loader": data.kind}
    if test is not None:
        metrics.update(held_out_errors(model, test, batch_size=cfg.batch_size))
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
