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

numpy and zarr only; the torch side (DataLoader workers) lives in loader.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from softtargets.errors import StoreError
from softtargets.store import LOGITS, SAMPLE_ID, LogitStore, chunk_slice

FP16_EXP = np.uint16(0x7C00)  # all-ones exponent: Inf or NaN


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
    arrays: tuple[str, ...] = (LOGITS,)  # row arrays read beside sample_id (issue 7: views)

    @property
    def num_chunks(self) -> int:
        return len(self.kept)

    def worker_chunks(self, epoch: int, worker: int) -> np.ndarray:
        """Chunk indices logical `worker` of this rank reads in `epoch`, in reading order."""
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_chunks)
        return order[self.rank::self.world_size][worker::self.num_workers]

    def worker_rows(self, epoch: int, worker: int) -> int:
        return int(self.kept[self.worker_chunks(epoch, worker)].sum())

    def batch_counts(self, epoch: int) -> list[int]:
        """Batches each logical worker of this rank yields in `epoch`."""
        return [math.ceil(self.worker_rows(epoch, w) / self.batch_size)
                for w in range(self.num_workers)]

    def row_order(self, n: int, *, epoch: int, worker: int, group: int) -> np.ndarray:
        """The shuffle of the `n` kept rows of one group, (n,) int64."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker, group, 1])
        return rng.permutation(n)


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


class ChunkReader:
    """Reads and checks whole chunks of a store; opened inside the process that uses it.

    A local store whose codecs are the v1 spec chain (bytes, zstd or blosc, crc32c) is read with
    plain file reads and numcodecs, which avoids zarr's per-chunk event-loop round trips; anything
    else goes through zarr. Both paths verify the crc32c checksum, the sample ids and finiteness.
    """

    def __init__(self, url: str, arrays: tuple[str, ...] = (LOGITS,)) -> None:
        self.store = LogitStore.open(url)
        self.meta = self.store.meta
        self.url = url
        self.names = arrays
        # group[name] reads metadata from the store every time: look the arrays up once
        self._arrays = {SAMPLE_ID: self.store.sample_id,
                        **{name: self.store.group[name] for name in arrays}}
        self._fast = {name: _numcodecs_chain(a) for name, a in self._arrays.items()}
        self._root = _local_root(self.store.logits)

    def row_layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(row shape, dtype) of row array `name`, e.g. ((C,), float16) for logits."""
        a = self._arrays[name]
        return tuple(a.shape[1:]), np.dtype(a.dtype)  # type: ignore[attr-defined]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ids (rows,) int64 and logits (rows, C) float16 of chunk `index`, checked."""
        ids = np.empty(self.meta.chunk_rows, dtype=np.int64)
        logits = np.empty((self.meta.chunk_rows, self.meta.num_classes), dtype=np.float16)
        rows = self.read_into(index, ids, logits)
        return ids[:rows], logits[:rows]

    def read_into(self, index: int, ids: np.ndarray, *outs: np.ndarray) -> int:
        """Decode chunk `index` into ids (chunk_rows,) and one buffer (chunk_rows, *row_shape)
        per array of `self.names` (logits: (chunk_rows, C)); returns the chunk's rows.

        The fast path decompresses straight into the buffers (no copy after decoding).
        """
        sl = chunk_slice(self.meta, index)
        rows = sl.stop - sl.start
        if self._root is None or None in self._fast.values():
            if self.names == (LOGITS,):
                got_ids, got_logits = self.store.read_chunk(index)  # zarr; checks included
                ids[:rows], outs[0][:rows] = got_ids, got_logits
                return rows
            for name, out in zip((SAMPLE_ID, *self.names), (ids, *outs)):
                out[:rows] = read_rows(self._arrays[name], self.url, name, index, sl)
        else:
            self._decode_into(SAMPLE_ID, index, ids)
            for name, out in zip(self.names, outs):
                self._decode_into(name, index, out)
        for name, out in zip(self.names, outs):
            check_chunk(self.url, self.meta.dataset["n"], sl, ids[:rows], out[:rows], name=name,
                        index=index)
        digests = self.store.digests  # after the row checks: they name never-written rows
        digests.check_rows(SAMPLE_ID, sl.start, ids[:rows])
        for name, out in zip(self.names, outs):
            digests.check_rows(name, sl.start, out[:rows])
        return rows

    def read_all(self) -> tuple[np.ndarray, ...]:
        """Sample ids (N,) and each array of `self.names` (N, *row_shape), every chunk checked."""
        size, n = self.meta.chunk_rows, self.meta.n
        count = math.ceil(n / size)
        ids = np.empty(count * size, dtype=np.int64)  # (K*R,): every chunk decodes to R rows
        outs = [np.empty((count * size, *shape), dtype=dtype)
                for shape, dtype in map(self.row_layout, self.names)]
        for index in range(count):
            sl = slice(index * size, (index + 1) * size)
            self.read_into(index, ids[sl], *(out[sl] for out in outs))
        return (ids[:n], *(out[:n] for out in outs))

    def _decode_into(self, name: str, index: int, out: np.ndarray) -> None:
        array = self._arrays[name]
        key = array.metadata.encode_chunk_key((index,) + (0,) * (out.ndim - 1))
        path = self._root / array.path / key  # type: ignore[operator]
        where = chunk_label(index, chunk_slice(self.meta, index), name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError as e:
            raise StoreError(f"store {self.url!r}: {where} is missing ({key}); the chunk was "
                             "never written or was deleted") from e
        steps = list(reversed(self._fast[name]))  # type: ignore[arg-type]  # decode order
        try:
            for codec in steps[:-1]:
                raw = codec.decode(raw)
            last = steps[-1] if steps else None
            if isinstance(last, (numcodecs.Zstd, numcodecs.Blosc)):
                got = last.decode(raw, out=out)
                size = np.frombuffer(got, dtype=np.uint8).size
            else:
                raw = last.decode(raw) if last is not None else raw
                size = len(memoryview(raw).cast("B"))
                out.reshape(-1).view(np.uint8)[:size] = np.frombuffer(raw, dtype=np.uint8)
            if size != out.nbytes:
                raise ValueError(f"decoded {size} bytes, expected {out.nbytes}")
        except Exception as e:  # a bad checksum or a truncated chunk
            raise StoreError(f"store {self.url!r}: {where} cannot be decoded, the stored bytes "
                             f"are damaged: {e}") from e


def chunk_label(index: int, sl: slice, name: str) -> str:
    """How messages name a chunk: its index, its rows and its array."""
    return f"chunk {index} (rows {sl.start}..{sl.stop - 1}) of {name!r}"


def read_rows(array: object, url: str, name: str, index: int, sl: slice, *,
              axis: int = 0) -> np.ndarray:
    """Rows `sl` (chunk `index`) of `array` along `axis`, through zarr; a chunk that does not
    decode raises StoreError naming the store, the array, the chunk and its rows."""
    try:
        return np.asarray(array[(slice(None),) * axis + (sl,)])  # type: ignore[index]
    except Exception as e:  # zarr raises codec-specific errors on a bad checksum
        raise StoreError(f"store {url!r}: {chunk_label(index, sl, name)} cannot be decoded, the "
                         f"stored bytes are damaged: {e}") from e


def _local_root(array: object) -> Path | None:
    store = array.store_path.store  # type: ignore[attr-defined]
    return Path(store.root) if isinstance(store, LocalStore) else None


def _numcodecs_chain(array: object) -> list[numcodecs.abc.Codec] | None:
    """numcodecs equivalents of the array's bytes->bytes codecs, or None if not the v1 chain."""
    codecs = list(array.metadata.codecs)  # type: ignore[attr-defined]
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return None
    if codecs[0].endian is not None and codecs[0].endian.value != "little":
        return None
    chain: list[numcodecs.abc.Codec] = []
    for codec in codecs[1:]:
        if isinstance(codec, ZstdCodec):
            chain.append(numcodecs.Zstd(level=codec.level))
        elif isinstance(codec, BloscCodec):
            chain.append(numcodecs.Blosc())  # decoding reads the parameters from the header
        elif isinstance(codec, Crc32cCodec):
            chain.append(numcodecs.CRC32C(location="end"))  # checks the checksum on decode
        else:
            return None
    return chain


def check_chunk(url: str, dataset_n: int, sl: slice, ids: np.ndarray, logits: np.ndarray, *,
                name: str = LOGITS, index: int | None = None) -> None:
    """The reader's row checks: sample ids in range and finite float16 logits (R, ...); for a
    float32 array (view_params, where NaN marks an unused parameter) each row's first value."""
    where = (chunk_label(index, sl, name) if index is not None
             else f"rows {sl.start}..{sl.stop - 1} of {name!r}")
    if logits.dtype != np.float16:
        first = logits.reshape(len(logits), -1)[:, 0]
        if not np.isfinite(first).all():
            rows = (np.flatnonzero(~np.isfinite(first))[:5] + sl.start).tolist()
            raise StoreError(f"store {url!r}: {where}: rows {rows} were never written (NaN); "
                             "the chunk was deleted or is damaged, or the store is incomplete")
        return
    bits = logits.reshape(len(logits), -1).view(np.uint16)  # (R, C)
    # exponent bits all ones <=> Inf or NaN; the max of the masked exponents is one fast pass
    # (np.isfinite on float16 is ~15x slower); rows are located only when something is wrong
    if ids.min(initial=0) >= 0 and ids.max(initial=0) < dataset_n and (
            not bits.size or np.bitwise_and(bits, FP16_EXP).max() < FP16_EXP):
        return
    bad_ids = (ids < 0) | (ids >= dataset_n)
    bad_vals = (np.bitwise_and(bits, FP16_EXP) == FP16_EXP).any(axis=1)
    if bad_ids.any() or bad_vals.any():
        rows = (np.flatnonzero(bad_ids | bad_vals)[:5] + sl.start).tolist()
        raise StoreError(f"store {url!r}: {where}: rows {rows} are missing or invalid "
                         "(sample_id out of range or non-finite values); the chunk was never "
                         "written, was deleted or is damaged")


Rows = tuple[np.ndarray, ...]  # sample ids (R,) int64, then each plan array's rows, e.g. (R, C)


def worker_batches(plan: StreamPlan, *, epoch: int, worker: int,
                   skip_batches: int = 0) -> Iterator[Rows]:
    """Batches of logical `worker` in `epoch`, after skipping its first `skip_batches`.

    Opens the store itself (call it inside the process that iterates). Groups wholly inside the
    skipped prefix are not read at all. The next group is queued for decoding before the current
    one is awaited, so the decode threads never idle at a group boundary; its buffer is free by
    then (every yielded batch is a copy).
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
    reader = ChunkReader(plan.url, plan.arrays)
    size, rows = reader.meta.chunk_rows, plan.buffer_chunks * reader.meta.chunk_rows
    layouts = [reader.row_layout(name) for name in plan.arrays]
    # two group buffers: one being emitted, one being decoded into (memory: 2 groups)
    buffers = [(np.empty(rows, dtype=np.int64),  # (K*R,)
                *(np.empty((rows, *shape), dtype=dtype) for shape, dtype in layouts))  # (K*R, C)
               for _ in range(2)]

    def submit(g: int) -> list[Future]:
        return [pool.submit(reader.read_into, int(c),
                            *(b[j * size:(j + 1) * size] for b in buffers[g % 2]))
                for j, c in enumerate(groups[g])]

    pool = ThreadPoolExecutor(max(1, plan.decode_threads), thread_name_prefix="decode")
    try:
        ahead = submit(first)
        carry: Rows | None = None
        for g in range(first, len(groups)):
            current = ahead
            if g + 1 < len(groups):  # buffer (g + 1) % 2 held group g - 1, emitted already
                ahead = submit(g + 1)
            counts = [f.result() for f in current]
            arrays = buffers[g % 2]
            valid = np.concatenate([np.arange(j * size, j * size + n)
                                    for j, n in enumerate(counts)])  # buffer rows of the group
            if plan.keep is not None:
                valid = valid[plan.keep[arrays[0][valid]]]
            order = plan.row_order(len(valid), epoch=epoch, worker=worker, group=g)[skip:]
            skip = 0
            carry = yield from _emit(arrays, valid[order], carry, plan.batch_size)
        if carry is not None and len(carry[0]):
            yield carry
    finally:  # an error or an early close: drop the queued group, wait for running reads
        pool.shutdown(wait=True, cancel_futures=True)


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
