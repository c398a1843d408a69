"""Stage 2 data: join a dataset split with a logit store through sample_id.

The teacher is never in memory here: only its stored logits are. Small stores are loaded whole
(DistillData); stores above `StreamOptions.memory_limit_bytes` are streamed chunk by chunk
(StreamingDistillData over read.stream.StreamingDistillDataset; the order is stream.py's).
`distill_data` chooses.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from softtargets.datasets.idx_files import Split
from softtargets.datasets.idx import IDXDataset
from softtargets.read.distill import SparseTargets, sparse_targets
from softtargets.errors import ConfigError, StoreMismatchError
from softtargets.read.stream import StreamingDistillDataset
from softtargets.format.sparse_store import SparseStore
from softtargets.format.store import LogitStore

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | SparseTargets | None]


class DistillData:
    """Rows of a split with their teacher logits, in seeded shuffled batches.

    images (R, H, W) uint8, labels (R,) int64, teacher (R, C) float16 or None for hard labels only.
    R is the number of rows the store covers (all of the split, or a subset by sample_id).
    """

    def __init__(self, split: Split, store: LogitStore | SparseStore | None = None, *,
                 rows: np.ndarray | None = None, temperature: float = 1.0,
                 tail: str = "rest") -> None:
        index = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
        teacher: torch.Tensor | SparseTargets | None = None
        if isinstance(store, SparseStore):
            # sparse stores: targets already at the student's T (temperature, tail only used here)
            index, teacher = sparse_aligned(split, store, rows=rows, temperature=temperature,
                                            tail=tail)
        elif store is not None:
            teacher_by_id = aligned_logits(split, store)  # (N, C), NaN where the store has no row
            covered = ~np.isnan(teacher_by_id[:, 0])
            if rows is None:
                index = np.flatnonzero(covered)
            elif not covered[index].all():
                missing = index[~covered[index]][:5].tolist()
                raise StoreMismatchError(f"store {store.url!r} has no logits for sample ids "
                                         f"{missing}; the transfer set must be inside the store")
            teacher = torch.from_numpy(teacher_by_id[index])
        self.index = index
        self.images = torch.from_numpy(split.images[index])
        self.labels = torch.from_numpy(split.labels[index].astype(np.int64))
        self.teacher = teacher

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, epoch: int = 0) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, *, batch_size: int, epoch: int, seed: int) -> Iterator[Batch]:
        """Shuffled batches; the order depends only on (seed, epoch)."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self), generator=g)
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            t = self.teacher[idx] if isinstance(self.teacher, SparseTargets) else (
                None if self.teacher is None else self.teacher[idx].float())
            yield self.images[idx], self.labels[idx], t


def aligned_logits(split: Split, store: LogitStore) -> np.ndarray:
    """Teacher logits indexed by dataset row, (N, C) float16, NaN where the store has no row.

    Refuses a store of another dataset, split, size or class set.
    """
    check_aligned(split, store)
    ids, logits = store.read_all()
    # float16 logits; float32 log-probs from an ensemble view (ensemble.EnsembleTargets)
    out = np.full((len(split), store.meta.num_classes), np.nan, dtype=logits.dtype)
    out[ids] = logits
    return out


def check_aligned(split: Split, store: LogitStore | SparseStore) -> None:
    """Refuse a store of another dataset, split, size, fingerprint or class set."""
    store.check_dataset(split.identity())
    if tuple(store.meta.class_names) != tuple(split.class_names):
        raise StoreMismatchError(f"store {store.url!r} has classes {list(store.meta.class_names)} "
                                 f"but {split.name} has {list(split.class_names)}")


def sparse_aligned(split: Split, store: SparseStore, *, rows: np.ndarray | None,
                   temperature: float, tail: str) -> tuple[np.ndarray, SparseTargets]:
    """Dataset rows (R,) and their sparse targets at T, joined through sample_id."""
    check_aligned(split, store)
    if store.spec.position:
        raise StoreMismatchError(f"store {store.url!r} has per-position rows (sequences); an "
                                 "image student needs one row per sample")
    ids, _, stored = store.read_all()
    targets = sparse_targets(stored, kind=store.meta.kind, temperatures=store.spec.temperatures,
                             temperature=temperature, tail=tail,
                             sample_temperature=store.spec.sample_temperature)
    where = np.full(len(split), -1, np.int64)  # dataset row -> store row
    where[ids] = np.arange(len(ids))
    index = np.sort(ids) if rows is None else np.asarray(rows, dtype=np.int64)
    if (where[index] < 0).any():
        missing = index[where[index] < 0][:5].tolist()
        raise StoreMismatchError(f"store {store.url!r} has no targets for sample ids {missing}; "
                                 "the transfer set must be inside the store")
    return index, targets[torch.from_numpy(where[index])]


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How stage 2 reads a store: whole into memory, or streamed (options of the stream)."""

    loader: str = "auto"  # auto: stream when the logits exceed memory_limit_bytes
    memory_limit_bytes: int = 1 << 30
    workers: int = 0  # DataLoader worker processes; 0 streams in this process (threads)
    buffer_chunks: int = 8  # rows are shuffled inside groups of this many chunks
    decode_threads: int = 2  # per process that decodes
    prefetch_batches: int = 8
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


def distill_data(split: Split, store: LogitStore | None, *, rows: np.ndarray | None = None,
                 options: StreamOptions = StreamOptions()) -> DistillData | StreamingDistillData:
    """In-memory DistillData for small stores, StreamingDistillData for large ones."""
    if store is None or options.loader == "memory":
        return DistillData(split, store, rows=rows)
    size = store.meta.n * store.meta.num_classes * 2  # float16 bytes
    if options.loader == "auto" and size <= options.memory_limit_bytes:
        return DistillData(split, store, rows=rows)
    return StreamingDistillData(split, store, rows=rows, options=options)


class StreamingDistillData:
    """Rows of a split with their teacher logits, streamed from the store in seeded batches.

    Same interface as DistillData (`len`, `num_batches`, `batches`), plus `state_dict` /
    `load_state_dict` to resume in the middle of an epoch: the stage-2 commands' face of
    read.stream.StreamingDistillDataset, which does the streaming (the store's chunk order,
    ranks, workers, checks). Teacher logits come as float16 (the losses cast). rows: the
    transfer set (sample ids), default every row the store holds. replay: replay a views
    store's views (one teacher), inputs flattened.
    """

    def __init__(self, split: Split, store: LogitStore, *, rows: np.ndarray | None = None,
                 options: StreamOptions = StreamOptions(), rank: int | None = None,
                 world_size: int | None = None, replay: bool = False) -> None:
        self.options = options
        if rows is None and store.meta.n != len(split):  # a store of a subset: its own rows
            rows = np.asarray(store.sample_id[:])
        rank = None if world_size is None else (rank or 0)
        self.stream = StreamingDistillDataset(
            IDXDataset.from_split(split), store.url, sample_ids=rows, with_ids=True, rank=rank,
            world_size=world_size, buffer_chunks=options.buffer_chunks,
            decode_threads=options.decode_threads, prefetch_batches=options.prefetch_batches,
            view="replay" if replay else None)
        self.replay = replay
        self.rank, self.world_size = self.stream.rank, self.stream.world_size
        self.kept = self.stream._kept  # (num_chunks,) rows streamed of each chunk
        self._current = self.stream
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        """Rows in the transfer set (all ranks together)."""
        return self.stream.num_rows

    def _epoch(self, *, batch_size: int, epoch: int, seed: int) -> StreamingDistillDataset:
        """The stream of one epoch with this batch size and seed (shares the checked index)."""
        stream = copy.copy(self.stream)
        stream.batch_size, stream.seed = batch_size, seed
        stream.set_epoch(epoch)
        return stream

    def num_batches(self, batch_size: int, epoch: int = 0, seed: int = 0) -> int:
        """Batches this rank yields in `epoch` (each worker's last batch may be short)."""
        stream = self._epoch(batch_size=batch_size, epoch=epoch, seed=seed)
        return stream.num_batches(self.options.workers)

    def state_dict(self) -> dict[str, Any]:
        """Where the last `batches` iteration stands: epoch, seed, batch size, batches delivered."""
        return self._current.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next `batches` call of the same epoch, seed and batch size continues from `state`."""
        need = {"epoch", "seed", "batch_size", "delivered", "workers", "world_size", "rank"}
        if not need <= set(state):
            raise ConfigError(f"loader state lacks {sorted(need - set(state))}")
        here = {"workers": self.options.workers, "world_size": self.world_size, "rank": self.rank}
        for key, value in here.items():
            if state[key] != value and (key != "workers" or state["delivered"]):
                raise ConfigError(f"loader state was saved with {key}={state[key]}, this loader "
                                  f"has {key}={value}; resume with the same layout")
        self._resume = dict(state)

    def batches(self, *, batch_size: int, epoch: int, seed: int,
                with_ids: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches (images, labels, teacher float16), or (ids, ...) too when with_ids."""
        stream = self._current = self._epoch(batch_size=batch_size, epoch=epoch, seed=seed)
        resume, self._resume = self._resume, None
        if resume is not None and (resume["epoch"], resume["seed"], resume["batch_size"]) == (
                epoch, seed, batch_size):
            stream.load_state_dict(resume)
        workers = self.options.workers
        loader = stream.loader(num_workers=workers, multiprocessing_context=self.options.context,
                               prefetch_factor=max(1, self.options.prefetch_batches // 2),
                               pin_memory=torch.cuda.is_available()) if workers else stream
        for ids, x, labels, target in loader:
            if self.replay:  # the command line's students take flat inputs (B, H*W)
                x = x.flatten(1)
            batch = (ids, x, labels, target.logits)
            yield batch if with_ids else batch[1:]
