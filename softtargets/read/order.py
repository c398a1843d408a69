"""Stage 2 streaming: read a logit store chunk by chunk in a seeded, resumable order.

For stores far larger than RAM. The order of an epoch is a pure function of its `StreamPlan` and
the epoch number; no state is shared between processes:
    chunks:  a permutation of all chunks, seeded by (seed, epoch)
    ranks:   distributed rank r takes chunks[r::world_size]
    workers: logical worker w of a rank takes its chunks[w::num_workers]
    groups:  a worker reads `buffer_chunks` chunks at a time and shuffles the rows of that group
             (seeded by seed, epoch, rank, worker, group), so memory is bounded by two groups
    batches: consecutive `batch_size` rows of the worker's row sequence; only its last is short
A DataLoader returns the workers' batches round-robin (in order), which `resume_point` inverts:
a position inside an epoch is one number, the batches delivered so far.

The plan's units are a store's chunks read by `ChunkReader`, or, through `StreamPlan.source`,
those of any reader with the same interface (softtargets/read/units.py: ensembles, views,
sparse and per-position stores, whose unit items are sequences). numpy and zarr only; the torch
side (DataLoader workers) lives in softtargets/read/stream.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

# the checked reader of the stream's units; re-exported for the modules that import it here
from softtargets.format.chunks import ChunkReader, check_chunk, chunk_label, read_rows  # noqa: F401
from softtargets.errors import StoreError
from softtargets.format.store import LOGITS, StoreMeta


@dataclasses.dataclass(frozen=True, eq=False)
class StreamPlan:
    """Everything a worker needs to produce its part of an epoch. Picklable: no zarr objects.

    kept (num_chunks,) int64 is the number of rows of each chunk that the transfer set keeps;
    keep (dataset_n,) bool marks the kept sample ids, None for all.
    """

    url: str
    kept: np.ndarray
    keep: np.ndarray | None
    seed: int
    batch_size: int
    buffer_chunks: int = 8
    rank: int = 0
    world_size: int = 1
    num_workers: int = 1
    decode_threads: int = 1
    arrays: tuple[str, ...] = (LOGITS,)  # row arrays read beside sample_id (views: two)
    source: Any = None  # picklable, with open() -> UnitReader; None: ChunkReader(url, arrays)
    shuffle: bool = True  # False: chunks and rows in store order
    drop_last: bool = False  # drop each logical worker's short last batch

    @property
    def num_chunks(self) -> int:
        return len(self.kept)

    def open_reader(self) -> UnitReader:
        """The reader of this plan's units, opened in the calling process."""
        return self.source.open() if self.source is not None else ChunkReader(self.url,
                                                                               self.arrays)

    def worker_chunks(self, epoch: int, worker: int) -> np.ndarray:
        """Chunk indices logical `worker` of this rank reads in `epoch`, in reading order."""
        order = (np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_chunks)
                 if self.shuffle else np.arange(self.num_chunks))
        return order[self.rank::self.world_size][worker::self.num_workers]

    def worker_rows(self, epoch: int, worker: int) -> int:
        return int(self.kept[self.worker_chunks(epoch, worker)].sum())

    def batch_counts(self, epoch: int) -> list[int]:
        """Batches each logical worker of this rank yields in `epoch`."""
        whole = math.floor if self.drop_last else math.ceil
        return [whole(self.worker_rows(epoch, w) / self.batch_size)
                for w in range(self.num_workers)]

    def row_order(self, n: int, *, epoch: int, worker: int, group: int) -> np.ndarray:
        """The shuffle of the `n` kept rows of one group, (n,) int64."""
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker, group, 1])
        return rng.permutation(n)


class UnitReader(Protocol):
    """What `worker_batches` reads units with: ChunkReader, or a reader of units.py."""

    meta: StoreMeta

    @property
    def capacity(self) -> int:
        """The most items one unit holds (rows of a chunk, or sequences)."""

    @property
    def layouts(self) -> list[tuple[tuple[int, ...], np.dtype]]:
        """(item shape, dtype) of each output array, e.g. ((C,), float16) for logits."""

    def read_into(self, index: int, ids: np.ndarray, *outs: np.ndarray) -> int:
        """Fill ids (capacity,) and outs (capacity, *shape) with unit `index`; its items."""

    def unit_ids(self, index: int) -> np.ndarray:
        """The sample ids (items,) of unit `index`, checked, without reading its values."""


def resume_point(counts: list[int], delivered: int) -> tuple[int, list[int]]:
    """Invert the DataLoader's round-robin over workers with `counts` batches each.

    Returns (next, skip): the logical worker that yields batch number `delivered`, and how many
    batches each logical worker had yielded before it. Order is round r, then worker w, skipping
    exhausted workers (torch's in-order multi-worker iterator behaves this way).
    """
    if delivered < 0 or delivered > sum(counts):
        raise StoreError(f"resume position {delivered} is outside the epoch's {sum(counts)} batches")
    skip = [0] * len(counts)
    left = delivered
    for r in range(max(counts, default=0) + 1):
        active = [w for w, c in enumerate(counts) if c > r]
        if left < len(active) or not active:
            for w in active[:left]:
                skip[w] = r + 1
            for w in active[left:]:
                skip[w] = r
            for w, c in enumerate(counts):
                if c <= r:
                    skip[w] = c
            return (active[left] if left < len(active) else 0), skip
        left -= len(active)
    return 0, list(counts)


Rows = tuple[np.ndarray, ...]  # sample ids (R,) int64, then each plan array's rows, e.g. (R, C)


class ChunkGauge:
    """Counts the units a stream holds in its group buffers (decoding or not yet emitted).

    `held` now, `peak` the most at once, `read` in all; the stream holds at most two groups,
    2 * buffer_chunks units, whatever the store's size.
    """

    def __init__(self) -> None:
        self.held = self.peak = self.read = 0

    def take(self, units: int) -> None:
        self.held += units
        self.read += units
        self.peak = max(self.peak, self.held)

    def release(self, units: int) -> None:
        self.held -= units


def worker_batches(plan: StreamPlan, *, epoch: int, worker: int, skip_batches: int = 0,
                   gauge: ChunkGauge | None = None,
                   reader: UnitReader | None = None) -> Iterator[Rows]:
    """Batches of logical `worker` in `epoch`, after skipping its first `skip_batches`.

    Reads with `reader`, a reader of the plan's units opened in this process (reused across
    epochs), else opens the store itself (call it inside the process that iterates). Groups
    wholly inside the skipped prefix are not read at all. The next group is queued for decoding
    before the current one is awaited, so the decode threads never idle at a group boundary;
    its buffer is free by then (every yielded batch is a copy).
    """
    chunks = plan.worker_chunks(epoch, worker)
    groups = [chunks[i:i + plan.buffer_chunks] for i in range(0, len(chunks), plan.buffer_chunks)]
    skip = skip_batches * plan.batch_size
    first = 0
    while first < len(groups) and skip >= plan.kept[groups[first]].sum():
        skip -= int(plan.kept[groups[first]].sum())
        first += 1
    if first == len(groups):
        return
    gauge = gauge or ChunkGauge()
    reader = plan.open_reader() if reader is None else reader
    size, rows = reader.capacity, plan.buffer_chunks * reader.capacity
    # two group buffers: one being emitted, one being decoded into (memory: 2 groups)
    buffers = [(np.empty(rows, dtype=np.int64),  # (K*R,)
                *(np.empty((rows, *shape), dtype=dtype)  # (K*R, C), or (K*R, L, ...)
                  for shape, dtype in reader.layouts))
               for _ in range(2)]

    def submit(g: int) -> list[Future]:
        gauge.take(len(groups[g]))
        return [pool.submit(reader.read_into, int(c),
                            *(b[j * size:(j + 1) * size] for b in buffers[g % 2]))
                for j, c in enumerate(groups[g])]

    pool = ThreadPoolExecutor(max(1, plan.decode_threads), thread_name_prefix="decode")
    held = 0
    try:
        ahead = submit(first)
        held += len(groups[first])
        carry: Rows | None = None
        for g in range(first, len(groups)):
            current = ahead
            if g + 1 < len(groups):  # buffer (g + 1) % 2 held group g - 1, emitted already
                ahead = submit(g + 1)
                held += len(groups[g + 1])
            counts = [f.result() for f in current]
            arrays = buffers[g % 2]
            valid = np.concatenate([np.arange(j * size, j * size + n)
                                    for j, n in enumerate(counts)])  # buffer rows of the group
            if plan.keep is not None:
                valid = valid[plan.keep[arrays[0][valid]]]
            order = plan.row_order(len(valid), epoch=epoch, worker=worker, group=g)[skip:]
            skip = 0
            carry = yield from _emit(arrays, valid[order], carry, plan.batch_size)
            gauge.release(len(groups[g]))  # its rows are all emitted or copied into `carry`
            held -= len(groups[g])
        if carry is not None and len(carry[0]) and not plan.drop_last:
            yield carry
    finally:  # an error or an early close: drop the queued group, wait for running reads
        pool.shutdown(wait=True, cancel_futures=True)
        gauge.release(held)


def _emit(arrays: tuple[np.ndarray, ...], order: np.ndarray, carry: Rows | None,
          batch_size: int) -> Iterator[Rows]:
    """Yield full batches of rows `order` of every array (after `carry`); return the short
    remainder."""
    start = 0
    if carry is not None and len(carry[0]):
        need = batch_size - len(carry[0])
        take = order[:need]
        carry = tuple(np.concatenate([c, a[take]]) for c, a in zip(carry, arrays))
        start = len(take)
        if len(carry[0]) < batch_size:
            return carry
        yield carry
    while start + batch_size <= len(order):
        take = order[start:start + batch_size]
        yield tuple(a[take] for a in arrays)  # one gather copy per batch and array
        start += batch_size
    take = order[start:]
    return tuple(a[take] for a in arrays)
