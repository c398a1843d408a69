"""Stage-2 batches of the paper's students: the public read path (read.loop.Batches over
DistillDataset / StreamingDistillDataset, any store kind), or a views store's replay."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np

from softtargets.config import StudentTrainConfig
from softtargets.datasets.idx import IDXDataset
from softtargets.datasets.idx_files import Split
from softtargets.errors import ConfigError
from softtargets.format import ensemble
from softtargets.format.store import SAMPLE_ID, LogitStore
from softtargets.read.batch import DenseTarget
from softtargets.read.loop import Batches, StreamOptions
from softtargets.read.view_loader import ViewData


def has_views(store: Any) -> bool:
    """A dense store written with --views (docs/FORMAT.md 'Augmented views')."""
    return isinstance(store, LogitStore) and "views" in store.meta.extra


class EpochBatches:
    """Data with `batches(batch_size=, epoch=, seed=)` (view_loader.ViewData, or a script's
    own) under the Batches interface; its tensor targets become DenseTargets at `temperature`
    (log-probabilities when `log_probs`)."""

    kind = "memory"

    def __init__(self, data: Any, *, batch_size: int, seed: int, temperature: float,
                 log_probs: bool = False, rule: str | None = None) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.temperature, self.log_probs, self.rule = temperature, log_probs, rule
        self._epoch, self._delivered = 0, 0

    def __len__(self) -> int:
        return len(self.data)

    def num_batches(self) -> int:
        return int(self.data.num_batches(self.batch_size))

    def epoch(self, epoch: int, *, resume: dict[str, Any] | None = None) -> Iterator[Any]:
        """The batches of `epoch`, after the first resume["delivered"]."""
        self._epoch = epoch
        self._delivered = 0 if resume is None else int(resume["delivered"])
        batches = self.data.batches(batch_size=self.batch_size, epoch=epoch, seed=self.seed)
        return self._wrapped(islice(batches, self._delivered, None))

    def _wrapped(self, batches: Iterator[Any]) -> Iterator[Any]:
        for x, y, t in batches:
            self._delivered += 1
            if t is not None:
                t = DenseTarget(self.temperature, **{"log_probs" if self.log_probs
                                                     else "logits": t})
            yield x, y, t

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "delivered": self._delivered, "seed": self.seed,
                "batch_size": self.batch_size, "rows": len(self)}


def student_data(split: Split, store: Any, cfg: StudentTrainConfig, *,
                 rows: np.ndarray | None) -> Batches | EpochBatches:
    """Stage-2 batches of `split` with the targets of `store` (None: hard labels) over the
    transfer set `rows` (sample ids; None: every row the store holds)."""
    options = StreamOptions(loader=cfg.loader, workers=cfg.loader_workers)
    dataset = IDXDataset.from_split(split)
    common = dict(batch_size=cfg.batch_size, seed=cfg.seed)
    if has_views(store):  # replay stored augmented views
        members = ensemble.is_ensemble(store)
        if cfg.combine is not None and not members:
            raise ConfigError(f"--combine {cfg.combine} applies to ensemble stores, but store "
                              f"{store.url!r} holds one teacher's views; drop --combine")
        views = int(store.meta.extra["views"]["views"])
        if not members and options.streams(store.url, row_factor=views):
            return Batches(dataset, store.url, sample_ids=rows, options=options, replay=True,
                           temperature=cfg.temperature, **common)
        data = ViewData(split, store.url, rows=rows, temperature=cfg.temperature,
                        rule=cfg.combine)
        return EpochBatches(data, temperature=cfg.temperature, log_probs=data.log_probs,
                            rule=data.rule if data.log_probs else None, **common)
    if store is None:
        return Batches(dataset, None, sample_ids=rows, options=options, **common)
    if cfg.combine is not None and not ensemble.is_ensemble(store):
        raise ConfigError(f"--combine {cfg.combine} applies to ensemble stores, but store "
                          f"{store.url!r} holds one teacher's logits; drop --combine")
    if rows is None and store.meta.n != len(split):  # a store of a subset: its own rows
        rows = np.asarray(store.group[SAMPLE_ID][:])
    return Batches(dataset, store.url, sample_ids=rows, options=options,
                   temperature=cfg.temperature, rule=cfg.combine, tail=cfg.tail, **common)
