"""Stage 2 data: join a dataset split with a logit store through sample_id.

The teacher is never in memory here: only its stored logits are. Small stores are loaded whole
(DistillData); stores above `StreamOptions.memory_limit_bytes` are streamed chunk by chunk
(StreamingDistillData, see stream.py for the order). `distill_data` chooses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from softtargets.data import Split
from softtargets.distill import SparseTargets, sparse_targets
from softtargets.errors import ConfigError, SofttargetsError, StoreError, StoreMismatchError
from softtargets.pipeline import prefetch
from softtargets.sparse_store import SparseStore
from softtargets.store import LOGITS, LogitStore
from softtargets.stream import StreamPlan, resume_point, worker_batches
from softtargets.view_loader import ViewReplay
from softtargets.views import VIEW_LOGITS, VIEW_PARAMS

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
    # float16 logits; float32 log-probs from an ensemble view (issue 3, ensemble.EnsembleTargets)
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


@dataclasses.dataclass(frozen=True)
class WorkerFailure:
    """A softtargets error of a DataLoader worker, sent to the main process as an item so it is
    raised there unchanged (torch re-raises a worker's error with its traceback in the message)."""

    error: SofttargetsError


class StreamDataset(IterableDataset):
    """One epoch of one rank's batches; each DataLoader worker produces its logical share.

    Holds numpy arrays and a URL only: the store is opened inside each worker by
    `worker_batches`, so it is safe with fork, spawn and forkserver. `rotate` and `skip` come
    from `resume_point`: physical worker p plays logical worker (p + rotate) % num_workers.
    """

    def __init__(self, plan: StreamPlan, images: np.ndarray, labels: np.ndarray, *, epoch: int,
                 rotate: int = 0, skip: list[int] | None = None, prefetch_batches: int = 0,
                 replay: ViewReplay | None = None) -> None:
        self.plan, self.images, self.labels = plan, images, labels
        self.epoch, self.rotate = epoch, rotate
        self.skip = skip or [0] * plan.num_workers
        self.prefetch_batches = prefetch_batches
        self.replay = replay  # issue 7: rebuild each row's chosen stored view

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        physical, count = (0, 1) if info is None else (info.id, info.num_workers)
        if count != self.plan.num_workers:
            raise ConfigError(f"stream planned for {self.plan.num_workers} workers, "
                              f"the DataLoader runs {count}")
        try:
            yield from self._batches((physical + self.rotate) % count)
        except SofttargetsError as e:
            if info is None:
                raise
            yield WorkerFailure(e)  # type: ignore[misc]

    def _batches(self, worker: int) -> Iterator[tuple[torch.Tensor, ...]]:
        source = worker_batches(self.plan, epoch=self.epoch, worker=worker,
                                skip_batches=self.skip[worker])
        for ids, *values in prefetch(source, depth=self.prefetch_batches, name="stream"):
            labels = torch.from_numpy(self.labels[ids].astype(np.int64))  # (B,)
            if self.replay is not None:  # values: view_logits (B, V, C), view_params (B, V, P)
                x, logits = self.replay(ids, self.images, *values, seed=self.plan.seed,
                                        epoch=self.epoch)  # (B, D) float32, (B, C) float16
                yield torch.from_numpy(ids), x, labels, logits
                continue
            images = torch.from_numpy(self.images[ids])  # (B, H, W) uint8
            yield torch.from_numpy(ids), images, labels, torch.from_numpy(values[0])  # (B, C)


class StreamingDistillData:
    """Rows of a split with their teacher logits, streamed from the store in seeded batches.

    Same interface as DistillData (`len`, `num_batches`, `batches`), plus `state_dict` /
    `load_state_dict` to resume in the middle of an epoch. Teacher logits come as float16
    (the losses cast). The sample ids are read once up front to check the join: no duplicates,
    every id inside the split, and every row of `rows` covered (8 bytes per row of memory).
    """

    def __init__(self, split: Split, store: LogitStore, *, rows: np.ndarray | None = None,
                 options: StreamOptions = StreamOptions(), rank: int | None = None,
                 world_size: int | None = None, replay: ViewReplay | None = None) -> None:
        check_aligned(split, store)
        self.options = options
        self.replay = replay  # issue 7: stream view_logits/view_params and replay the views
        self.images, self.labels = split.images, split.labels
        # Memory: 9 bytes per row here (ids, then a seen-mask), freed after the checks; the
        # stream itself holds two groups of chunks whatever N is.
        ids = np.asarray(store.sample_id[:])  # (N,) int64
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= len(split):
            raise StoreError(f"store {store.url!r}: sample ids outside [0, {len(split)})")
        covered = np.zeros(len(split), dtype=bool)
        covered[ids] = True
        if int(covered.sum()) != ids.size:
            raise StoreError(f"store {store.url!r}: sample_id has duplicates; the store is damaged")
        keep = None
        if rows is not None:
            keep = np.zeros(len(split), dtype=bool)
            keep[np.asarray(rows, dtype=np.int64)] = True
            if not covered[keep].all():
                missing = np.flatnonzero(keep & ~covered)[:5].tolist()
                raise StoreMismatchError(f"store {store.url!r} has no logits for sample ids "
                                         f"{missing}; the transfer set must be inside the store")
        starts = np.arange(0, len(ids), store.meta.chunk_rows)
        if keep is None:  # (num_chunks,) rows kept per chunk
            self.kept = np.diff(np.append(starts, len(ids))).astype(np.int64)
        else:
            self.kept = np.add.reduceat(keep[ids].astype(np.int64), starts)
        del ids, covered
        self.keep = keep
        self.url = store.url
        if world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
        self.rank, self.world_size = rank or 0, world_size
        self._position: dict[str, Any] = {}
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        """Rows in the transfer set (all ranks together)."""
        return int(self.kept.sum())

    def plan(self, *, batch_size: int, seed: int) -> StreamPlan:
        return StreamPlan(url=self.url, kept=self.kept, keep=self.keep, seed=seed,
                          batch_size=batch_size, buffer_chunks=self.options.buffer_chunks,
                          rank=self.rank, world_size=self.world_size,
                          num_workers=max(1, self.options.workers),
                          decode_threads=self.options.decode_threads,
                          arrays=(VIEW_LOGITS, VIEW_PARAMS) if self.replay else (LOGITS,))

    def num_batches(self, batch_size: int, epoch: int = 0, seed: int = 0) -> int:
        """Batches this rank yields in `epoch` (each worker's last batch may be short)."""
        return sum(self.plan(batch_size=batch_size, seed=seed).batch_counts(epoch))

    def state_dict(self) -> dict[str, Any]:
        """Where the last `batches` iteration stands: epoch, seed, batch size, batches delivered."""
        return dict(self._position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next `batches` call of the same epoch, seed and batch size continues from `state`."""
        need = {"epoch", "seed", "batch_size", "delivered", "workers", "world_size", "rank"}
        if not need <= set(state):
            raise ConfigError(f"loader state lacks {sorted(need - set(state))}")
        here = {"workers": self.options.workers, "world_size": self.world_size, "rank": self.rank}
        for key, value in here.items():
            if state[key] != value:
                raise ConfigError(f"loader state was saved with {key}={state[key]}, this loader "
                                  f"has {key}={value}; resume with the same layout")
        self._resume = dict(state)

    def batches(self, *, batch_size: int, epoch: int, seed: int,
                with_ids: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches (images, labels, teacher float16), or (ids, ...) too when with_ids."""
        plan = self.plan(batch_size=batch_size, seed=seed)
        delivered, rotate, skip = 0, 0, None
        resume, self._resume = self._resume, None
        if resume is not None and (resume["epoch"], resume["seed"], resume["batch_size"]) == (
                epoch, seed, batch_size):
            delivered = int(resume["delivered"])
            rotate, skip = resume_point(plan.batch_counts(epoch), delivered)
        self._position = {"epoch": epoch, "seed": seed, "batch_size": batch_size,
                          "delivered": delivered, "workers": self.options.workers,
                          "world_size": self.world_size, "rank": self.rank}
        dataset = StreamDataset(plan, self.images, self.labels, epoch=epoch, rotate=rotate,
                                skip=skip, prefetch_batches=self.options.prefetch_batches,
                                replay=self.replay)
        for batch in self._iterate(dataset):
            self._position["delivered"] += 1
            yield batch if with_ids else batch[1:]

    def _iterate(self, dataset: StreamDataset) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.options.workers == 0:
            yield from dataset
            return
        loader = DataLoader(dataset, batch_size=None, num_workers=self.options.workers,
                            multiprocessing_context=self.options.context,
                            prefetch_factor=max(1, self.options.prefetch_batches // 2),
                            pin_memory=torch.cuda.is_available())
        for batch in loader:
            if isinstance(batch, WorkerFailure):
                raise batch.error
            yield batch
