"""Stream units of every store kind: what StreamingDistillDataset reads, one unit at a time.

A unit is one chunk of the store. Each reader below has the interface of stream.UnitReader
(`capacity`, `layouts`, `read_into`, `unit_ids`) and reads through the store kind's own checked
reader, the one SoftTargets reads with (crc32c, row checks, chunk digests):

* raw logits (one teacher; view 0 is the `logits` array): chunks.ChunkReader, the fast path;
* a stored view k of one teacher: ChunkReader over `view_logits`, view k of each row;
* an ensemble (members, a stored view of them, or a combined-only store): the members combined
  per chunk at T by ensemble.EnsembleTargets, as float32 log-probs (C,);
* top-k and sampled stores: sparse_store.SparseStore.read_chunk, as its row arrays;
* per-position stores: `Sequences`, whose items are whole sequences of L positions.

numpy and zarr only: the stream's decode threads run it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np

from softtargets.format import ensemble
from softtargets.format.chunks import ChunkReader
from softtargets.errors import StoreError, StoreMismatchError
from softtargets.format.schema import POSITION
from softtargets.format.sparse_store import SparseStore
from softtargets.format.store import LOGITS, LogitStore, StoreMeta
from softtargets.format.schema import VIEW_LOGITS, VIEW_PARAMS

Layouts = list[tuple[tuple[int, ...], np.dtype]]  # (item shape, dtype) of each output array
LOGITS_KIND, ENSEMBLE_KIND, SPARSE_KIND, ARRAYS_KIND = "logits", "ensemble", "sparse", "arrays"
REPLAY = "replay"  # UnitSpec.view: every stored view with its parameters (read.replay)


@dataclasses.dataclass(frozen=True)
class UnitSpec:
    """How a process opens the unit reader of a store. Picklable: plain fields only, so each
    DataLoader worker opens the store itself.

    kind: "logits" (one teacher's raw logits, of stored view `view` when given), "ensemble"
    (members combined by `rule` at `temperature`, of stored view `view`); view "replay": every
    stored view and its parameters, (R, V, C) and (R, V, P), to replay; "sparse" (top-k or
    sampled rows; sequences of `positions` rows when given) or "arrays" (`arrays` as stored).
    """

    url: str
    kind: str
    temperature: float = 1.0
    rule: str | None = None
    view: int | str | None = None
    positions: int | None = None
    arrays: tuple[str, ...] = (LOGITS,)

    def open(self) -> ChunkReader | Chunks | Sequences:
        """The reader of this store's units, opened in the calling process."""
        if self.view == REPLAY:
            return _replay_units(self)
        if self.kind == ARRAYS_KIND or (self.kind == LOGITS_KIND and not self.view):
            return ChunkReader(self.url, self.arrays if self.kind == ARRAYS_KIND else (LOGITS,))
        if self.kind == LOGITS_KIND:  # a stored view of one teacher: (R, V, C) -> (R, C)
            views = ChunkReader(self.url, (VIEW_LOGITS,))
            shape, dtype = views.row_layout(VIEW_LOGITS)
            return Chunks(views, functools.partial(_view_rows, views, self.view),
                          [(shape[1:], dtype)])
        if self.kind == ENSEMBLE_KIND:
            ids = ChunkReader(self.url, ())
            members = ensemble.EnsembleTargets(LogitStore.open(self.url), rule=self.rule,
                                               temperature=self.temperature,
                                               view=self.view or None)
            return Chunks(ids, members.read_chunk,
                          [((ids.meta.num_classes,), np.dtype(np.float32))])
        if self.kind == SPARSE_KIND:
            return _sparse_units(self.url, self.positions)
        raise StoreError(f"unknown stream unit kind {self.kind!r}")


class Chunks:
    """A unit reader over `read(index) -> (sample ids (R,), *arrays (R, ...))`, a chunk read
    and checked by the store kind's reader; `ids` reads the sample ids alone."""

    def __init__(self, ids: ChunkReader, read: Callable[[int], tuple[np.ndarray, ...]],
                 layouts: Layouts) -> None:
        self.meta: StoreMeta = ids.meta
        self.url = ids.url
        self.layouts = layouts
        self.read = read
        self._ids = ids

    @property
    def capacity(self) -> int:
        return self.meta.chunk_rows

    @property
    def num_chunks(self) -> int:
        return self._ids.num_chunks

    def unit_ids(self, index: int) -> np.ndarray:
        return self._ids.unit_ids(index)

    def read_all(self) -> tuple[np.ndarray, ...]:
        """Every unit's arrays, concatenated in store order (sample ids first)."""
        parts = [self.read(index) for index in range(self.num_chunks)]
        return tuple(np.concatenate(arrays) for arrays in zip(*parts))

    def read_into(self, index: int, ids: np.ndarray, *outs: np.ndarray) -> int:
        got = self.read(index)
        rows = len(got[0])
        for out, values in zip((ids, *outs), got):
            out[:rows] = values
        return rows


def _replay_units(spec: UnitSpec) -> ChunkReader | Chunks:
    """Units (sample ids, every view's values (R, V, C), their parameters (R, V, P)): one
    teacher's float16 logits, or an ensemble's float32 log-probs at T, each view combined."""
    if spec.kind == LOGITS_KIND:
        return ChunkReader(spec.url, (VIEW_LOGITS, VIEW_PARAMS))
    params = ChunkReader(spec.url, (VIEW_PARAMS,))
    members = ensemble.EnsembleTargets(LogitStore.open(spec.url), rule=spec.rule or "arithmetic",
                                       temperature=spec.temperature, view=ensemble.ALL_VIEWS)

    def read(index: int) -> tuple[np.ndarray, ...]:
        ids, log_probs = members.read_chunk(index)  # (R,), (R, V, C)
        return ids, log_probs, params.read_arrays(index)[1]

    shape, dtype = params.row_layout(VIEW_PARAMS)  # (V, P)
    return Chunks(params, read, [((shape[0], params.meta.num_classes), np.dtype(np.float32)),
                                 (shape, dtype)])


def _view_rows(views: ChunkReader, view: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    ids, logits = views.read_arrays(index)  # (R,), (R, V, C)
    return ids, logits[:, view]


def _sparse_rows(store: SparseStore, index: int) -> tuple[np.ndarray, ...]:
    """(sample ids, ids, logits, [counts], lse, tail, [positions]) of chunk `index`, checked."""
    sample_ids, positions, rows = store.read_chunk(index)
    counts = () if rows.counts is None else (rows.counts,)
    where = () if positions is None else (positions,)
    return (sample_ids, rows.ids, rows.logits, *counts, rows.lse, rows.tail, *where)


def _sparse_units(url: str, positions: int | None) -> Chunks | Sequences:
    store = SparseStore.open(url)
    k, temps = store.spec.k, len(store.spec.temperatures)
    layouts: Layouts = [((k,), np.dtype(np.int64)), ((k,), np.dtype(np.float16))]
    if store.meta.kind == "sampled":
        layouts.append(((k,), np.dtype(np.int64)))
    layouts += [((), np.dtype(np.float32)), ((temps,), np.dtype(np.float32))]
    if store.spec.position:
        layouts.append(((), np.dtype(np.int64)))
    rows = Chunks(ChunkReader(url, ()), functools.partial(_sparse_rows, store), layouts)
    if not store.spec.position:
        return rows
    if positions is None:
        raise StoreMismatchError(f"store {url!r} has per-position rows; stream it with a "
                                 "dataset of sequences (e.g. softtargets.datasets."
                                 "TokenSequences), whose labels give the sequence length")
    return Sequences(rows, positions)


class Sequences:
    """Per-position rows streamed as whole sequences of L positions.

    Unit u holds the sequences whose position-0 row lies in chunk u, so a sequence that
    continues into the next chunk is read with it (chunk_rows a multiple of L avoids that
    extra read). Row r must be position r % L of its sequence, sequences whole and in position
    order, as stage 1 writes them; anything else is refused naming the rows (SoftTargets reads
    any row order).
    """

    def __init__(self, rows: Chunks, length: int) -> None:
        self.rows, self.length = rows, int(length)
        self.meta, self.url = rows.meta, rows.url
        if self.length < 1 or self.meta.n % self.length:
            raise StoreMismatchError(f"store {self.url!r} has {self.meta.n} per-position rows, "
                                     f"not whole sequences of {self.length} positions (the "
                                     "dataset's sequence length); use the store written for "
                                     "this dataset")
        self.layouts = [((self.length, *shape), dtype) for shape, dtype in rows.layouts[:-1]]
        self._positions = ChunkReader(self.url, (POSITION,))

    @property
    def capacity(self) -> int:
        return math.ceil(self.meta.chunk_rows / self.length)

    def _span(self, index: int) -> tuple[int, int]:
        """Sequence slots [a, b) whose position-0 row lies in chunk `index`."""
        size, n = self.meta.chunk_rows, self.meta.n
        first = index * size
        return -(-first // self.length), -(-min(n, first + size) // self.length)

    def unit_ids(self, index: int) -> np.ndarray:
        ids, positions = self._positions.read_arrays(index)  # checked, (R,) and (R,)
        start = index * self.meta.chunk_rows
        self._check(start, ids, positions, index=index)
        a, b = self._span(index)
        return ids[np.arange(a, b) * self.length - start]

    def read_into(self, index: int, ids: np.ndarray, *outs: np.ndarray) -> int:
        a, b = self._span(index)
        if a == b:
            return 0
        lo, hi, size = a * self.length, b * self.length, self.meta.chunk_rows
        parts = []
        for chunk in range(lo // size, (hi - 1) // size + 1):  # chunk `index`, maybe the next
            got = self.rows.read(chunk)
            start = chunk * size
            parts.append([v[max(lo, start) - start:min(hi, start + len(got[0])) - start]
                          for v in got])
        rows = [np.concatenate(p) for p in zip(*parts)]  # (S*L, ...) each; positions last
        self._check(lo, rows[0], rows[-1], index=index)
        count = b - a
        ids[:count] = rows[0][::self.length]
        for out, values in zip(outs, rows[1:-1]):
            out[:count] = values.reshape(count, self.length, *values.shape[1:])
        return count

    def _check(self, start: int, ids: np.ndarray, positions: np.ndarray, *, index: int) -> None:
        """Refuse rows (from row `start`) that are not position r % L of one sequence."""
        where = (start + np.arange(len(ids))) % self.length  # (R,) the position row r must hold
        bad = positions != where
        bad[1:] |= (where[1:] != 0) & (ids[1:] != ids[:-1])  # a sequence changes mid-way
        if bad.any():
            j = int(np.argmax(bad))
            raise StoreError(
                f"store {self.url!r}: row {start + j} (chunk {index}) holds position "
                f"{positions[j]} of sequence {ids[j]}; streaming needs row r to hold position "
                f"r % {self.length} of one sequence: whole sequences, positions 0..L-1 in order "
                "(as stage 1 writes them). Read this store with SoftTargets instead")


def scan(reader: ChunkReader | Chunks | Sequences, *, keep: np.ndarray | None,
         dataset_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Read every unit's sample ids once: (kept (units,) int64, the items of each unit that
    `keep` (dataset_n,) bool selects, all when None; seen (dataset_n,) bool, the sample ids the
    store holds). Refuses a sample id stored twice. Memory: 1 byte per sample id."""
    units = math.ceil(reader.meta.n / reader.meta.chunk_rows)
    seen = np.zeros(dataset_n, dtype=bool)
    kept = np.zeros(units, dtype=np.int64)
    for index in range(units):
        ids = reader.unit_ids(index)
        twice = seen[ids] | _repeats(ids)
        if twice.any():
            raise StoreError(f"store {reader.url!r}: sample id {ids[np.argmax(twice)]} has more "
                             f"than one row (again in chunk {index}); the store is damaged")
        seen[ids] = True
        kept[index] = len(ids) if keep is None else int(keep[ids].sum())
    return kept, seen


def _repeats(ids: np.ndarray) -> np.ndarray:
    """(R,) bool: True where an id repeats an earlier one of `ids`."""
    out = np.ones(len(ids), dtype=bool)
    out[np.unique(ids, return_index=True)[1]] = False
    return out
