"""SoftTargets: a store's soft targets by sample id, for every store kind.

    targets = SoftTargets("teacher-logits.zarr", temperature=4.0)
    targets[17]                 # one sample's target
    targets.batch([3, 17, 5])   # a batch target (leading B)

The store is opened (and the options checked) when SoftTargets is made, and its targets are
read into memory on first use, chunk by chunk through the kind's checked reader. Pickling keeps
only the URL and the options, so each DataLoader worker (fork or spawn) reads the store itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from softtargets.read.distill import map_tensors
from softtargets.errors import ConfigError, StoreMismatchError
from softtargets.read.batch import Target
from softtargets.read.load import ReadOptions, Source, Table, open_source
from softtargets.read.replay import REPLAY, Replay
from softtargets.format.identity import check_dataset
from softtargets.format.store import StoreMeta


class SoftTargets:
    """Soft targets of a store by sample id: dense, ensemble, views, top-k, sampled, per-position.

    temperature: the student's T; targets are given at T (raw logits carry T along).
    rule: an ensemble's combination, "arithmetic" or "geometric" (default: the store's own).
    tail: top-k stores, "rest" (exact; needs the tail mass stored at T) or "renormalise" (any
    T, ignores the tail). view: views stores, the stored view to read (default view 0, the
    clean input when the store was written with clean_view0), or "replay": every view, so
    that a student replays them. A view k's target belongs to the input stage 1 built for
    view k, not to the plain input: pair a fixed view k > 0 with that augmented input. With
    "replay", `targets[i]` holds sample i's V views (V, C) and `view_params(ids)` their
    augmentation parameters (B, V, P); DistillDataset(dataset, targets) then gives each
    sample, each epoch, one view chosen by (seed, epoch, sample id), its input rebuilt from
    the stored parameters exactly as the teacher saw it and that view's target
    (StreamingDistillDataset(..., view="replay") likewise, streamed).
    """

    def __init__(self, store: str | os.PathLike[str], *, temperature: float = 1.0,
                 rule: str | None = None, tail: str = "rest",
                 view: int | str | None = None) -> None:
        if not isinstance(store, (str, os.PathLike)):
            raise ConfigError(f"SoftTargets takes a store path or URL, got "
                              f"{type(store).__name__}; pass e.g. 'teacher-logits.zarr'")
        self.url = os.fspath(store)
        self.options = ReadOptions(temperature=temperature, rule=rule, tail=tail, view=view)
        self._source: Source | None = None
        self._meta: StoreMeta | None = None
        self._rule: str | None = None
        self._table: Table | None = None
        self._pid = os.getpid()
        self._open()  # refuses what the store cannot give, here rather than in a worker

    # --- pickling: the URL and the options only; each process opens and reads the store ---

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._source, self._meta, self._rule, self._table = None, None, None, None

    def _open(self) -> Source | None:
        """The store opened in this process (None once its targets are loaded)."""
        if self._meta is None:
            self._source, self._pid = open_source(self.url, self.options), os.getpid()
            self._meta, self._rule = self._source.meta, self._source.rule
        return self._source

    def _loaded(self) -> Table:
        if self._table is None:
            source = self._open()
            if source is None or self._pid != os.getpid():  # a forked worker opens its own
                source = open_source(self.url, self.options)
            self._table, self._source = source.load(), None  # no reader kept past the load
        return self._table

    # --- what the targets are ---

    @property
    def temperature(self) -> float:
        return self.options.temperature

    @property
    def meta(self) -> StoreMeta:
        """The store's metadata (teacher, dataset identity, kind, classes, ...)."""
        self._open()
        return self._meta  # type: ignore[return-value]

    @property
    def rule(self) -> str | None:
        """The ensemble combination rule in use, None for other stores."""
        self._open()
        return self._rule

    @property
    def kind(self) -> str:
        """The store's kind: "dense" (one teacher, ensemble or views), "topk" or "sampled"."""
        return self.meta.kind

    @property
    def replay(self) -> Replay | None:
        """How the stored views are replayed (view="replay"), else None."""
        if self.options.view != REPLAY:
            return None
        return Replay.of_store(self.url, self.meta)

    def view_params(self, sample_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Augmentation parameters (B, V, P) float32 of every stored view of `sample_ids`
        (view="replay" only)."""
        params = self._loaded().view_params
        if params is None:
            raise ConfigError(f"view_params needs every view: open the store with "
                              f"SoftTargets({self.url!r}, view='replay')")
        return params[self._rows(np.asarray(sample_ids, dtype=np.int64).reshape(-1))]

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def positions(self) -> int | None:
        """L for a per-position store (targets of sequences of L positions), else None."""
        return self._loaded().positions

    @property
    def sample_ids(self) -> np.ndarray:
        """int64 (S,): the sample ids the store has targets for, increasing."""
        return self._loaded().sample_ids

    def __len__(self) -> int:
        return len(self._loaded().sample_ids)

    def __repr__(self) -> str:
        return (f"SoftTargets({self.url!r}, kind={self.kind!r}, num_classes={self.num_classes}, "
                f"temperature={self.temperature:g}, rule={self.rule!r})")

    # --- reads ---

    def __getitem__(self, sample_id: int) -> Target:
        """The target of one sample: (C,) dense, (K,) sparse, (L, K) per position."""
        if isinstance(sample_id, torch.Tensor) and sample_id.ndim == 0:
            sample_id = int(sample_id)
        if isinstance(sample_id, bool) or not isinstance(sample_id, (int, np.integer)):
            raise ConfigError(f"targets[i] takes one integer sample id, got "
                              f"{type(sample_id).__name__}; use targets.batch(ids) for several")
        return self._one(int(self._rows(np.array([sample_id]))[0]))

    def batch(self, sample_ids: Sequence[int] | np.ndarray | torch.Tensor) -> Target:
        """The targets of `sample_ids` (B,) as one batch target (leading B)."""
        ids = np.asarray(sample_ids.cpu() if isinstance(sample_ids, torch.Tensor)
                         else sample_ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ConfigError(f"targets.batch takes a 1-d sequence of integer sample ids, got "
                              f"shape {ids.shape} and dtype {ids.dtype}")
        rows = torch.from_numpy(self._rows(ids.astype(np.int64)))
        # index_select: a row gather, ~10x faster than advanced indexing t[rows] on a CPU
        return map_tensors(self._loaded().target, lambda t: t.index_select(0, rows))

    def __iter__(self) -> Iterator[Target]:
        """Targets in increasing sample id order."""
        return (self._one(row) for row in range(len(self)))

    def _one(self, row: int) -> Target:
        # a copy, not a view: a view would carry (and, sent between processes, share) the
        # storage of the whole table
        return map_tensors(self._loaded().target[row], torch.clone)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Table rows (B,) of sample ids (B,); refuses ids the store has no target for."""
        table = self._loaded()
        known = table.sample_ids
        if table.dense_ids and (not ids.size or (ids.min() >= 0 and ids.max() < len(known))):
            return ids  # sample ids 0..S-1: row s holds sample id s
        rows = np.searchsorted(known, ids)
        found = rows < len(known)
        found[found] = known[rows[found]] == ids[found]
        if not found.all():
            missing = ids[~found][:5].tolist()
            raise StoreMismatchError(
                f"store {self.url!r} has no target for sample id(s) {missing} (it has "
                f"{len(known)} samples, ids {_span(known)}); use sample ids of the data the "
                "store was computed on")
        return rows

    def check_dataset(self, identity: dict[str, Any]) -> None:
        """Refuse a dataset (given by its identity) other than the store's data."""
        check_dataset(self.meta, self.url, identity)


def _span(ids: np.ndarray) -> str:
    return f"{ids[0]}..{ids[-1]}" if len(ids) else "none"
