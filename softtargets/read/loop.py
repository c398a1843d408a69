"""The shared stage-2 training loop: batches from the public read path, one step per batch,
a checkpoint every N steps, and a resume in the middle of an epoch to the same weights.

    data = Batches(dataset, "teacher-logits.zarr", batch_size=128, seed=0, temperature=4.0)
    loop = Loop(model, optim, loss)
    history = loop.run(data, epochs=10, saver=Checkpointer(...), resume=True)

`Batches` gives an epoch's (x, y, target) batches from DistillDataset (targets in memory) or
StreamingDistillDataset (streamed unit by unit), or (x, y, None) for hard labels; the order of
an epoch depends on (seed, epoch) only, so its first batches can be passed over on resume.
`Loop` runs them: the user student's loop (read/fit.py) and the paper's recipe
(recipes/hinton2015/train.py, with its jitter, max-norm, cosine lr and evaluation as hooks).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from softtargets.errors import CheckpointError, ConfigError, TrainingDivergedError
from softtargets.format.store import read_meta
from softtargets.progress import bar as progress_bar
from softtargets.read.convert import fetch
from softtargets.read.dataset import DistillDataset, sample_ids_of
from softtargets.read.replay import REPLAY
from softtargets.read.stream import StreamingDistillDataset
from softtargets.read.targets import SoftTargets
from softtargets.torchfiles import safe_load, save_atomic

LossFn = Callable[[torch.Tensor, Any, Any], torch.Tensor]  # (student logits, labels, target)


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How stage 2 reads a store: whole into memory, or streamed (options of the stream)."""

    loader: str = "auto"  # auto: stream when the logits exceed memory_limit_bytes
    memory_limit_bytes: int = 1 << 30
    workers: int = 0  # DataLoader worker processes; 0 reads in this process (threads)
    buffer_chunks: int = 8  # rows are shuffled inside groups of this many chunks
    decode_threads: int = 2  # per process that decodes
    prefetch_batches: int = 8  # made ahead: by a batch thread (in process) or by the workers
    context: str | None = None  # multiprocessing start method of the workers (None: default)

    def __post_init__(self) -> None:
        if self.loader not in ("auto", "memory", "stream"):
            raise ConfigError(f"loader must be 'auto', 'memory' or 'stream', got {self.loader!r}")
        for name in ("buffer_chunks", "decode_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.prefetch_batches < 0:
            raise ConfigError(f"workers and prefetch_batches must be >= 0, got {self.workers} "
                              f"and {self.prefetch_batches}")

    def streams(self, store: str, *, row_factor: int = 1) -> bool:
        """Whether to stream `store` rather than read its targets into memory (auto: when its
        float16 targets, `row_factor` per row, exceed memory_limit_bytes)."""
        if self.loader != "auto":
            return self.loader == "stream"
        meta, _ = read_meta(store)
        return meta.n * row_factor * meta.num_classes * 2 > self.memory_limit_bytes


class Rows(Dataset):
    """A batch per item: rows `indices` of `data` (a DistillDataset, or a dataset of hard
    labels when `data` has no targets) as (x, y, target or None)."""

    def __init__(self, data: Any, sample_ids: np.ndarray | None) -> None:
        self.data, self.sample_ids = data, sample_ids

    def __len__(self) -> int:
        return len(self.data) if self.sample_ids is None else len(self.sample_ids)

    def __getitem__(self, indices: Any) -> tuple[Any, Any, Any]:
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.data, DistillDataset):
            return self.data.batch(indices)
        rows = indices if self.sample_ids is None else self.sample_ids[indices]
        x, y = fetch(self.data, rows)
        return torch.as_tensor(x), torch.as_tensor(y), None


def _as_is(batch: Any) -> Any:
    return batch


class Batches:
    """The epochs' (x, y, target) batches of `dataset` with the targets of `store` (None: hard
    labels only, target None), resumable mid-epoch.

    Streamed (options.streams): StreamingDistillDataset's own order and state_dict. In memory:
    DistillDataset batches in an order seeded by (seed, epoch), fetched a batch at a time.
    sample_ids: the transfer set (default: all of the dataset's rows). replay: stream a views
    store's replay (StreamingDistillDataset view="replay": each row's input is rebuilt as the
    view it draws this epoch, its target is that view's).
    """

    def __init__(self, dataset: Any, store: str | None, *, batch_size: int, seed: int,
                 temperature: float = 1.0, rule: str | None = None, tail: str = "rest",
                 options: StreamOptions = StreamOptions(), sample_ids: Any = None,
                 replay: bool = False) -> None:
        self.batch_size, self.seed, self.options = batch_size, seed, options
        self.stream: StreamingDistillDataset | None = None
        self._delivered = 0  # batches of the current epoch given out (in memory)
        self._epoch = 0
        targets = dict(temperature=temperature, rule=rule, tail=tail)
        if store is not None and (replay or options.streams(store)):
            # workers: the DataLoader's prefetch_factor looks ahead; a batch thread in each
            # worker as well halved the rows/s of 2 workers on 2 cores (415k vs 215k)
            self.stream = StreamingDistillDataset(
                dataset, store, batch_size=batch_size, seed=seed, sample_ids=sample_ids,
                buffer_chunks=options.buffer_chunks, decode_threads=options.decode_threads,
                prefetch_batches=0 if options.workers else options.prefetch_batches, **targets,
                **({"view": REPLAY} if replay else {}))
            # its own generator: a DataLoader draws its base seed from the global RNG
            # otherwise, and a resumed run would then see other dropout masks
            self.loader = self.stream.loader(
                num_workers=options.workers, multiprocessing_context=options.context,
                generator=torch.Generator().manual_seed(seed),
                **({"prefetch_factor": max(1, options.prefetch_batches // 2)}
                   if options.workers else {}))
            return
        chosen = None if sample_ids is None else np.asarray(sample_ids, dtype=np.int64)
        if store is None:
            ids = sample_ids_of(dataset)
            if chosen is not None and not np.array_equal(ids, np.arange(len(ids))):
                raise ConfigError("a transfer subset of hard labels needs a dataset whose row "
                                  "i has sample id i")
            self.rows = Rows(dataset, chosen)
        else:
            self.rows = Rows(DistillDataset(dataset, SoftTargets(store, **targets),
                                            sample_ids=chosen), None)

    def __len__(self) -> int:
        """Rows per epoch."""
        return self.stream.num_rows if self.stream is not None else len(self.rows)

    @property
    def kind(self) -> str:
        return "stream" if self.stream is not None else "memory"

    @property
    def rule(self) -> str | None:
        """The ensemble combination rule of the targets, None for other stores."""
        if self.stream is not None:
            return self.stream.rule
        data = self.rows.data
        return data.targets.rule if isinstance(data, DistillDataset) else None

    def num_batches(self) -> int:
        """Batches per epoch (under the loader's workers when streamed)."""
        if self.stream is not None:
            return self.stream.num_batches(self.options.workers)
        return math.ceil(len(self) / self.batch_size)

    def epoch(self, epoch: int, *, resume: dict[str, Any] | None = None) -> Iterator[Any]:
        """The batches of `epoch`; after `resume` (a state_dict() of this epoch), only those not
        delivered yet."""
        skip = 0 if resume is None else int(resume["delivered"])
        if self.stream is not None:
            self.stream.set_epoch(epoch)
            if skip:
                self.stream.load_state_dict(resume)
            return iter(self.loader)
        self._epoch, self._delivered = epoch, skip
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self), generator=g)
        starts = range(skip * self.batch_size, len(self), self.batch_size)
        loader = DataLoader(self.rows, sampler=[order[s:s + self.batch_size] for s in starts],
                            batch_size=None, num_workers=self.options.workers,
                            collate_fn=_as_is, generator=torch.Generator().manual_seed(self.seed))
        return self._counted(loader)

    def _counted(self, loader: DataLoader) -> Iterator[Any]:
        for batch in loader:
            self._delivered += 1  # before the yield: the caller holds it now
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """Where the current epoch stands: its number and the batches delivered so far, with
        the settings the order depends on."""
        if self.stream is not None:
            return self.stream.state_dict()
        return {"epoch": self._epoch, "delivered": self._delivered, "seed": self.seed,
                "batch_size": self.batch_size, "rows": len(self)}


class Checkpointer:
    """Saves the training state every `every` steps (and after each epoch) to `path`, written
    whole to a temp file and renamed, so a run killed at any point resumes from its last save:
    the model, the optimizer, the lr schedule, torch's RNG and `generators`, the stream's
    position in its epoch, the history and the running loss of the epoch."""

    def __init__(self, path: Path, every: int, config: dict[str, Any]) -> None:
        if every < 1:
            raise ConfigError(f"--checkpoint-every must be >= 1 batches, got {every}")
        self.path, self.every, self.config = Path(path), every, config

    def save(self, state: dict[str, Any]) -> None:
        save_atomic({"config": self.config, **state}, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, None when there is none; refuses one of other settings."""
        if not self.path.exists():
            return None
        fix = "move it away to train afresh, or pass another --out"
        state = safe_load(self.path, fix=fix)
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise CheckpointError(f"cannot resume from {str(self.path)!r}: it is not a training "
                                  f"state of softtargets (no config); {fix}")
        if state["config"] != self.config:
            diff = sorted(k for k in set(state["config"]) | set(self.config)
                          if state["config"].get(k) != self.config.get(k))
            raise ConfigError(f"cannot resume from {str(self.path)!r}: it was saved with other "
                              f"settings ({', '.join(diff)} differ); use the same settings or "
                              "another --out")
        return state


Prepare = Callable[[Any, Any, Any, int, int], tuple[Any, Any, Any]]


@dataclasses.dataclass
class Loop:
    """SGD steps over Batches. Hooks: prepare(x, y, target, epoch, step) -> (x, y, target)
    before the forward pass (input scaling, jitter, mixup), after_step(model) after each
    optimizer step (max-norm), evaluate(model) -> metrics after each epoch."""

    model: nn.Module
    optim: torch.optim.Optimizer
    loss: LossFn
    clip_grad: float = 0.0
    scheduler: Any = None  # stepped after every optimizer step
    generators: dict[str, torch.Generator] = dataclasses.field(default_factory=dict)
    prepare: Prepare | None = None
    after_step: Callable[[nn.Module], None] | None = None
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None
    desc: str = "student"
    lr: float = 0.0

    def run(self, data: Any, epochs: int, *, saver: Checkpointer | None = None,
            resume: bool = False, progress: bool = False) -> list[dict[str, Any]]:
        """Train `epochs` epochs of `data` (from the saved state with `resume`); the history,
        a row per epoch: epoch, train_loss (mean per row), seconds, the evaluation."""
        state = saver.load() if saver is not None and resume else None
        history: list[dict[str, Any]] = []
        first, position, partial = 0, None, (0.0, 0)
        if state is not None:
            self._restore(state)
            history, first = list(state["history"]), len(state["history"])
            if int(state["position"]["delivered"]):  # killed inside epoch `first`
                position, partial = state["position"], tuple(state["partial"])
        steps = data.num_batches()
        bar = progress_bar(total=epochs * steps, desc=self.desc, unit="step", enabled=progress)
        bar.update(first * steps + (0 if position is None else int(position["delivered"])))
        for epoch in range(first, epochs):
            t0 = time.perf_counter()
            total, rows = self._epoch(data, epoch, position, partial, saver, history, bar)
            position, partial = None, (0.0, 0)
            row = {"epoch": epoch + 1, "train_loss": total / max(rows, 1),
                   "seconds": time.perf_counter() - t0}
            if self.evaluate is not None:
                row.update(self.evaluate(self.model))
            history.append(row)
            if saver is not None:  # the epoch is finished: resume at the next one
                self._save(saver, history, {"epoch": epoch + 1, "delivered": 0}, (0.0, 0))
            bar.set_postfix(loss=f"{row['train_loss']:.4f}",
                            **({"test_errors": row["test_errors"]} if "test_errors" in row
                               else {}))
        bar.close()
        return history

    def _epoch(self, data: Any, epoch: int, position: dict[str, Any] | None,
               partial: tuple[float, int], saver: Checkpointer | None,
               history: list[dict[str, Any]], bar: Any) -> tuple[float, int]:
        """One epoch from `position` on; (sum of the batch losses times rows, rows), counting
        the batches before `position` by `partial`."""
        self.model.train()
        total, rows = partial
        start = 0 if position is None else int(position["delivered"])
        for step, (x, y, target) in enumerate(data.epoch(epoch, resume=position), start=start):
            if self.prepare is not None:
                x, y, target = self.prepare(x, y, target, epoch, step)
            loss = self.loss(self.model(x), y, target)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{self.desc}: loss became {loss.item()} at epoch {epoch + 1}, step "
                    f"{step + 1} (lr {self.lr}); lower --lr")
            self.optim.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_grad > 0:
                # logit matching at high T is a regression with unbounded gradients
                nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            self.optim.step()
            if self.scheduler is not None:
                self.scheduler.step()
            if self.after_step is not None:
                self.after_step(self.model)
            total += loss.item() * len(y)
            rows += len(y)
            bar.update()
            if saver is not None and (step + 1) % saver.every == 0:
                self._save(saver, history, data.state_dict(), (total, rows))
        return total, rows

    def _save(self, saver: Checkpointer, history: list[dict[str, Any]],
              position: dict[str, Any], partial: tuple[float, int]) -> None:
        saver.save({"history": list(history), "position": dict(position),
                    "partial": list(partial), "model": self.model.state_dict(),
                    "optimizer": self.optim.state_dict(),
                    "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "generators": {k: g.get_state() for k, g in self.generators.items()}})

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        for name, g in self.generators.items():
            g.set_state(state["generators"][name])
