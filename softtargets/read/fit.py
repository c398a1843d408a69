"""A small generic training loop for a user's own student, on top of the read API.

Any softtargets dataset and any store kind: batches come from DistillDataset (targets in
memory) or StreamingDistillDataset (streamed unit by unit), the loss is distillation_loss, and
inputs reach the student as the dataset gives them (its dtype and shape, as write_logits gives
them to the teacher), so the student does its own scaling.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from softtargets.config import check_alpha, check_temperature
from softtargets.errors import ConfigError, TrainingDivergedError
from softtargets.read.loader import StreamOptions
from softtargets.progress import bar as progress_bar
from softtargets.read import (DistillDataset, SoftTargets, StreamingDistillDataset,
                              distillation_loss)
from softtargets.read.distill import check_loss
from softtargets.format.store import read_meta
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


def _stream(store: str, cfg: FitConfig) -> bool:
    """Whether to stream the store rather than read its targets into memory."""
    if cfg.loader != "auto":
        return cfg.loader == "stream"
    meta, _ = read_meta(store)
    return meta.n * meta.num_classes * 2 > StreamOptions().memory_limit_bytes  # float16 bytes


class Batches:
    """The epochs' (x, y, target) batches over `dataset` and `store`, resumable mid-epoch.

    Streamed: StreamingDistillDataset's own order and state_dict. In memory: a DataLoader over
    DistillDataset whose shuffle is seeded by (seed, epoch), so an epoch's order can be
    replayed and its first `skip` batches passed over.
    """

    def __init__(self, dataset: Any, store: str, cfg: FitConfig) -> None:
        options = dict(temperature=cfg.temperature, rule=cfg.rule, tail=cfg.tail)
        self.cfg, self.stream, self.data = cfg, None, None
        if _stream(store, cfg):
            self.stream = StreamingDistillDataset(dataset, store, batch_size=cfg.batch_size,
                                                  seed=cfg.seed, **options)
            # its own generator: a DataLoader draws its base seed from the global RNG
            # otherwise, and a resumed run would then see other dropout masks
            self.loader = self.stream.loader(num_workers=cfg.loader_workers,
                                             generator=torch.Generator().manual_seed(cfg.seed))
        else:
            self.data = DistillDataset(dataset, SoftTargets(store, **options))

    def epoch(self, epoch: int, *, skip: int = 0) -> Iterator[Any]:
        """The batches of `epoch` after its first `skip`."""
        if self.stream is not None:
            self.stream.set_epoch(epoch)
            if skip:
                self.stream.load_state_dict({**self.stream.state_dict(), "epoch": epoch,
                                             "delivered": skip,
                                             "workers": self.cfg.loader_workers})
            return iter(self.loader)
        loader = DataLoader(self.data, batch_size=self.cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(
                                self.cfg.seed * 1_000_003 + epoch),
                            num_workers=self.cfg.loader_workers,
                            collate_fn=DistillDataset.collate)
        return itertools.islice(loader, skip, None)


def _optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)


def _epoch(model: nn.Module, loader: Iterable[Any], optim: torch.optim.Optimizer,
           cfg: FitConfig, epoch: int, bar: Any, *, start: int = 0,
           saver: Checkpointer | None = None) -> float:
    """One epoch from batch `start` on; the mean training loss per row (of the batches run
    here: a resumed epoch's earlier batches are not in it)."""
    model.train()
    total, rows = 0.0, 0
    for step, (x, y, target) in enumerate(loader, start=start):
        loss = distillation_loss(model(x), target, y, temperature=cfg.temperature,
                                 alpha=cfg.alpha, loss=cfg.loss)
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
        if saver is not None:
            saver.step(epoch, step + 1)
    return total / max(rows, 1)


class Checkpointer:
    """Saves the training state every `every` batches (and after each epoch) to `path`, written
    whole to a temp file and renamed, so a run killed at any point resumes from its last save:
    the model, the optimizer, torch's RNG, the epoch, the batches of it done, the losses."""

    def __init__(self, path: Path, every: int, model: nn.Module,
                 optim: torch.optim.Optimizer, config: dict[str, Any]) -> None:
        if every < 1:
            raise ConfigError(f"--checkpoint-every must be >= 1 batches, got {every}")
        self.path, self.every, self.model, self.optim = path, every, model, optim
        self.config, self.losses = config, []  # losses of the finished epochs

    def step(self, epoch: int, done: int) -> None:
        if done % self.every == 0:
            self.save(epoch, done)

    def save(self, epoch: int, done: int) -> None:
        state = {"config": self.config, "epoch": epoch, "batches_done": done,
                 "losses": list(self.losses), "model": self.model.state_dict(),
                 "optimizer": self.optim.state_dict(), "rng": torch.get_rng_state()}
        tmp = self.path.with_name(self.path.name + ".partial")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> tuple[int, int]:
        """Restore a saved state; (epoch, batches of it done). Refuses other settings."""
        state = torch.load(self.path, weights_only=True)
        if state["config"] != self.config:
            diff = sorted(k for k in set(state["config"]) | set(self.config)
                          if state["config"].get(k) != self.config.get(k))
            raise ConfigError(f"cannot resume from {str(self.path)!r}: it was saved with other "
                              f"settings ({', '.join(diff)} differ); use the same settings or "
                              "another --out")
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.losses = list(state["losses"])
        return int(state["epoch"]), int(state["batches_done"])


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
    data = Batches(dataset, store, cfg)
    optim = _optimizer(model, cfg)
    saver = None if checkpoint is None else Checkpointer(
        Path(checkpoint), checkpoint_every, model, optim,
        {**dataclasses.asdict(cfg), "store": str(store), "rows": len(dataset)})
    first, done = 0, 0
    if saver is not None and resume and saver.path.exists():
        first, done = saver.load()
    losses = [] if saver is None else saver.losses
    bar = progress_bar(total=cfg.epochs * len(dataset), desc="student", unit="row",
                       enabled=progress)
    for epoch in range(first, cfg.epochs):
        skip = done if epoch == first else 0
        losses.append(_epoch(model, data.epoch(epoch, skip=skip), optim, cfg, epoch, bar,
                             start=skip, saver=saver))
        if saver is not None:
            saver.save(epoch + 1, 0)  # the epoch is finished: resume at the next one
    bar.close()
    metrics: dict[str, Any] = {"train_rows": len(dataset), "train_loss": losses[-1],
                               "train_losses": losses,
                               "loader": "stream" if data.stream is not None else "memory"}
    if test is not None:
        metrics.update(held_out_errors(model, test, batch_size=cfg.batch_size))
    metrics["seconds"] = time.perf_counter() - t0
    return metrics
