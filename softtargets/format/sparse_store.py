"""Sparse logit stores (kind "topk" / "sampled"): the v1 group format with sparse arrays.

numpy and zarr only, never torch. docs/FORMAT.md ("Sparse stores") is the normative description:
    sample_id (N,) int64            dataset row of each store row (as in dense stores)
    position  (N,) int64            optional: position of the row in its sequence (per-token rows)
    topk_ids / sampled_ids (N, K)   class ids, smallest unsigned type holding C - 1
    topk_logits / sampled_logits    (N, K) float16 values of those classes
    sampled_counts (N, K)           sampled only: draws of each id (0 = padding), sum = draws
    lse (N,) float32                logsumexp of all C values at T = 1
    tail_mass (N, M) float32        mass of the unlisted classes at each of the M temperatures
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from softtargets.format import sparse as sp
from softtargets.format.codecs import balanced_rows
from softtargets.format.digests import DigestCheck
from softtargets.errors import (ConfigError, IncompleteStoreError, SparseStoreError, StoreError)
from softtargets.format.schema import LSE, POSITION, SPARSE_KINDS, TAIL, sparse_names
from softtargets.format.identity import check_dataset
from softtargets.format.store import (SAMPLE_ID, TARGET_CHUNK_BYTES, RowWriter, StoreMeta,
                               _prepare_destination, add_row_array, chunk_slice,
                               codec_chain, compressor_codecs, create_group, new_meta, read_meta)

KINDS = SPARSE_KINDS
ID_COMPRESSORS = ("bitshuffle", "zstd", "none")
# Defaults measured by scripts/bench_sparse.py (C = 32,000, K = 32, README "Sparse stores"):
# ids: zstd; bitshuffle is no smaller for top-k ids (41.0 vs 40.9 B/row) and 30% larger for the
# sorted sampled ids (30.5 vs 23.4). Values: byte-shuffled blosc packs the rank-sorted top-k logits
# 17% smaller than zstd (43.6 vs 52.4 B/row); for sampled logits zstd is as small (27.1 vs 28.3).
DEFAULT_CODECS = {"topk": ("zstd", "blosc"), "sampled": ("zstd", "zstd")}  # (ids, values)
# sample_id, position, lse, tail_mass: zstd (scripts/bench_codecs.py: the sparse arrays keep
# 0.16-0.68 of their bytes compressed; int64 ids and positions far less)
SPARSE_COMPRESSOR = "zstd"

FP16_EXP = np.uint16(0x7C00)  # float16 exponent bits all ones: Inf or NaN


def id_codecs(name: str, itemsize: int) -> list[Any]:
    """Codecs of integer arrays (ids, counts): blosc-zstd bitshuffle by default, or as floats."""
    if name == "bitshuffle":
        return [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=itemsize),
                Crc32cCodec()]
    if name in ("zstd", "none"):
        return compressor_codecs(name)
    raise StoreError(f"unknown id compressor {name!r}; allowed: {list(ID_COMPRESSORS)}")


def array_names(kind: str) -> tuple[str, str, str | None]:
    """(ids, logits, counts or None) array names of a kind."""
    if kind in KINDS:
        return sparse_names(kind)
    raise ConfigError(f"sparse kind must be one of {list(KINDS)}, got {kind!r}")


@dataclasses.dataclass(frozen=True)
class SparseSpec:
    """What a sparse store holds; written to attributes["softtargets"]["sparse"]."""

    kind: str
    k: int  # row width: top-k K, or min(draws, C) for sampled
    temperatures: tuple[float, ...]
    computed_from: str = "logits"
    source: str = "teacher"
    draws: int | None = None
    seed: int | None = None
    sample_temperature: float | None = None
    position: bool = False
    id_dtype: str = "uint16"
    count_dtype: str | None = None
    id_compressor: str = "zstd"
    value_compressor: str = "zstd"

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["temperatures"] = list(self.temperatures)
        d["rng"] = ("numpy.random.default_rng([seed, sample_id, position]).random(draws), "
                    "inverse CDF") if self.kind == "sampled" else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SparseSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        known["temperatures"] = tuple(float(t) for t in known["temperatures"])
        return cls(**known)


def make_spec(*, kind: str, k: int, num_classes: int, temperatures: tuple[float, ...],
              computed_from: str = "logits", source: str = "teacher", seed: int = 0,
              sample_temperature: float = 1.0, position: bool = False,
              id_compressor: str | None = None,
              value_compressor: str | None = None) -> SparseSpec:
    """Validate options and build the spec; top-k K is capped at C (K >= C keeps every class)."""
    array_names(kind)
    if k <= 0:
        raise ConfigError(f"--topk/--sample K must be a positive number of classes, got {k}")
    if computed_from not in sp.SOURCES:
        raise ConfigError(f"computed_from must be one of {list(sp.SOURCES)}, got {computed_from!r}")
    temps = sp.check_temperatures(temperatures)
    sampled = kind == "sampled"
    if sampled:
        temps = sp.check_temperatures((*temps, sample_temperature))
    return SparseSpec(kind=kind, k=min(k, num_classes), temperatures=temps,
                      computed_from=computed_from, source=source,
                      draws=k if sampled else None, seed=seed if sampled else None,
                      sample_temperature=float(sample_temperature) if sampled else None,
                      position=position, id_dtype=sp.smallest_uint(num_classes - 1),
                      count_dtype=sp.smallest_uint(k) if sampled else None,
                      id_compressor=id_compressor or DEFAULT_CODECS[kind][0],
                      value_compressor=value_compressor or DEFAULT_CODECS[kind][1])


DENSE_CHUNK_BYTES = 256 * 1024 * 1024  # stage 1 holds a dense float32 (rows, C) chunk in memory


def default_chunk_rows(n: int, k: int, num_classes: int) -> int:
    """Rows per chunk: a float16 (rows, K) chunk of about TARGET_CHUNK_BYTES, capped so the dense
    float32 (rows, C) chunk stage 1 converts stays under DENSE_CHUNK_BYTES."""
    return balanced_rows(n, max(1, min(TARGET_CHUNK_BYTES // (2 * k),
                                       DENSE_CHUNK_BYTES // (4 * num_classes))))


class SparseWriter(RowWriter):
    """Writes a sparse store unit by unit; same protocol as store.StoreWriter.

    `write_chunk` / `write_unit` take dense (rows, C) values and convert them; `write_rows`
    takes rows already converted (e.g. top-k of an ensemble's combined distribution).
    """

    def __init__(self, group: zarr.Group, meta: StoreMeta, spec: SparseSpec | None = None) -> None:
        super().__init__(group, meta)
        self.spec = spec if spec is not None else SparseSpec.from_json(meta.extra["sparse"])

    @classmethod
    def create(cls, url: str, *, spec: SparseSpec, n: int,
               class_names: tuple[str, ...] | list[str], dataset: dict[str, Any],
               teacher: dict[str, Any], config: dict[str, Any], chunk_rows: int | None = None,
               compressor: str = SPARSE_COMPRESSOR, overwrite: bool = False,
               shard_rows: int | None = None,
               extra: dict[str, Any] | None = None) -> SparseWriter:
        """Create an empty, incomplete sparse store at `url`."""
        if n <= 0:
            raise StoreError(f"a store needs n > 0 rows, got n={n}")
        if shard_rows:
            raise StoreError(f"sparse stores are not sharded (got shard_rows={shard_rows}); "
                             "drop shard_rows: their units are chunks")
        rows = chunk_rows or default_chunk_rows(n, spec.k, len(class_names))
        floats = compressor_codecs(compressor)
        _prepare_destination(url, overwrite)
        meta = new_meta(kind=spec.kind, n=n, class_names=class_names, chunk_rows=rows,
                        compressor=compressor,
                        codecs=codec_chain(compressor_codecs(spec.value_compressor)),
                        dataset=dataset, teacher=teacher, config=config,
                        extra={**(extra or {}), "sparse": spec.to_json()})
        group = create_group(url, meta)
        ids_name, logits_name, counts_name = array_names(spec.kind)

        def add(name: str, row_shape: tuple[int, ...], dtype: str, codecs: list[Any],
                fill: Any, dims: tuple[str, ...]) -> None:
            add_row_array(group, name, n=n, row_shape=row_shape, chunk_rows=rows, dtype=dtype,
                          codecs=codecs, fill_value=fill, dimension_names=dims)

        itemsize = np.dtype(spec.id_dtype).itemsize
        add(SAMPLE_ID, (), "int64", floats, -1, ("row",))
        if spec.position:
            add(POSITION, (), "int64", floats, -1, ("row",))
        add(ids_name, (spec.k,), spec.id_dtype, id_codecs(spec.id_compressor, itemsize), 0,
            ("row", "rank"))
        add(logits_name, (spec.k,), "float16", compressor_codecs(spec.value_compressor),
            float("nan"), ("row", "rank"))
        if counts_name:
            add(counts_name, (spec.k,), spec.count_dtype,
                id_codecs(spec.id_compressor, np.dtype(spec.count_dtype).itemsize), 0,
                ("row", "rank"))
        add(LSE, (), "float32", floats, float("nan"), ("row",))
        add(TAIL, (len(spec.temperatures),), "float32", floats, float("nan"),
            ("row", "temperature"))
        return cls(group, meta, spec)

    def write_chunk(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray,
                    positions: np.ndarray | None = None) -> None:
        """Convert dense values (rows, C) of chunk `index` to the store's kind and write them."""
        self._write_values(self.chunk_slice(index), f"chunk {index}", sample_ids=sample_ids,
                           logits=logits, positions=positions)
        self.written.add(index)

    def write_unit(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray,
                   positions: np.ndarray | None = None) -> None:
        """Convert and write whole unit `index` (a chunk: sparse stores are not sharded)."""
        self._write_values(self.unit_slice(index), f"write unit {index}", sample_ids=sample_ids,
                           logits=logits, positions=positions)
        self.mark_written(index)

    def _write_values(self, sl: slice, what: str, *, sample_ids: np.ndarray,
                      logits: np.ndarray, positions: np.ndarray | None) -> None:
        if logits.shape != (sl.stop - sl.start, self.meta.num_classes):
            raise StoreError(f"{what} needs values ({sl.stop - sl.start}, "
                             f"{self.meta.num_classes}), got {logits.shape}")
        if self.spec.kind == "topk":
            rows = sp.to_topk(logits, k=self.spec.k, temperatures=self.spec.temperatures,
                              first_row=sl.start)
        else:
            rows = sp.to_sampled(logits, draws=self.spec.draws, temperatures=self.spec.temperatures,
                                 seed=self.spec.seed, sample_ids=np.asarray(sample_ids),
                                 positions=positions,
                                 sample_temperature=self.spec.sample_temperature,
                                 first_row=sl.start)
        self._write_converted(sl, what, sample_ids=sample_ids, rows=rows, positions=positions)

    def write_unit_rows(self, index: int, *, sample_ids: np.ndarray, rows: sp.SparseRows,
                        positions: np.ndarray | None = None) -> None:
        """Write whole unit `index` from rows already sparse (precomputed top-k), sample_id
        last."""
        self._write_converted(self.unit_slice(index), f"write unit {index}",
                              sample_ids=sample_ids, rows=rows, positions=positions)
        self.mark_written(index)

    def write_rows(self, index: int, *, sample_ids: np.ndarray, rows: sp.SparseRows,
                   positions: np.ndarray | None = None) -> None:
        """Write converted rows of chunk `index` (validated first)."""
        self._write_converted(self.chunk_slice(index), f"chunk {index}", sample_ids=sample_ids,
                              rows=rows, positions=positions)
        self.written.add(index)

    def _write_converted(self, sl: slice, what: str, *, sample_ids: np.ndarray,
                         rows: sp.SparseRows, positions: np.ndarray | None) -> None:
        count = sl.stop - sl.start
        if rows.ids.shape != (count, self.spec.k):
            raise StoreError(f"{what} needs sample_ids ({count},) and rows ({count}, "
                             f"{self.spec.k}), got {np.shape(sample_ids)} and {rows.ids.shape}")
        sample_ids = self.check_ids(what, sample_ids, count)
        if self.spec.position != (positions is not None):
            raise StoreError(f"store was created with position={self.spec.position}: pass "
                             f"positions {'for' if self.spec.position else 'only with'} every "
                             "chunk")
        if (rows.counts is None) != (self.spec.kind == "topk"):
            raise StoreError(f"rows of the wrong kind for a {self.spec.kind!r} store")
        ids_name, logits_name, counts_name = array_names(self.spec.kind)
        write = self.digests.write
        if positions is not None:
            write(POSITION, sl, np.asarray(positions, dtype=np.int64))
        write(ids_name, sl, rows.ids.astype(self.spec.id_dtype))
        write(logits_name, sl, rows.logits.astype(np.float16))
        if counts_name:
            write(counts_name, sl, rows.counts.astype(self.spec.count_dtype))
        write(LSE, sl, rows.lse.astype(np.float32))
        write(TAIL, sl, rows.tail.astype(np.float32))
        write(SAMPLE_ID, sl, sample_ids)  # last: it marks the unit written


class SparseStore:
    """A complete sparse store opened for reading; every read checks ids, counts, finiteness."""

    def __init__(self, group: zarr.Group, meta: StoreMeta, spec: SparseSpec, url: str) -> None:
        from softtargets.format.chunks import FastArrays  # chunks imports this module
        self.group, self.meta, self.spec, self.url = group, meta, spec, url
        self.digests = DigestCheck(group, meta, url)
        self._chunks = FastArrays(group, url)

    @classmethod
    def open(cls, url: str) -> SparseStore:
        """Open a sparse store; refuses dense and incomplete stores (read_meta checks the
        metadata and every array's shape, dtype and chunking)."""
        meta, group = read_meta(url)
        if meta.kind not in KINDS:
            raise SparseStoreError(f"store {url!r} is of kind {meta.kind!r}, not a sparse store "
                                   f"({list(KINDS)}); open it with softtargets.format.store.LogitStore")
        if not meta.complete:
            raise IncompleteStoreError(
                f"store {url!r} is incomplete (complete: false): its writer crashed or is still "
                "running; rerun stage 1 (teacher-logits) to produce it")
        spec = SparseSpec.from_json(meta.extra["sparse"])
        return cls(group, meta, spec, url)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.meta.n / self.meta.chunk_rows)

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray | None, sp.SparseRows]:
        """(sample ids (rows,), positions (rows,) or None, rows) of chunk `index`, checked."""
        sl = chunk_slice(self.meta, index)
        ids_name, logits_name, counts_name = array_names(self.meta.kind)
        names = [n for n in (SAMPLE_ID, POSITION if self.spec.position else None, ids_name,
                             logits_name, counts_name, LSE, TAIL) if n is not None]
        # plain file reads where possible: through zarr, 5-7 arrays cost ~15 ms per chunk of
        # event-loop round trips, 30x their decoding (the stream read ~50,000 rows/s)
        raw = {name: self._chunks.read(name, index, sl) for name in names}
        sample_ids, positions = raw[SAMPLE_ID], raw.get(POSITION)
        rows = sp.SparseRows(ids=raw[ids_name].astype(np.int64), logits=raw[logits_name],
                             lse=raw[LSE], tail=raw[TAIL],
                             counts=raw[counts_name].astype(np.int64) if counts_name else None)
        if not self._all_valid(sample_ids, positions, rows):
            bad = ((sample_ids < 0) | (sample_ids >= self.meta.dataset["n"])
                   | ~np.isfinite(rows.logits).all(axis=1) | ~np.isfinite(rows.lse)
                   | ~np.isfinite(rows.tail).all(axis=1)
                   | (rows.ids >= self.meta.num_classes).any(1))
            if positions is not None:
                bad |= positions < 0
            if rows.counts is not None:
                bad |= rows.counts.sum(axis=1) != self.spec.draws
            where = (np.flatnonzero(bad)[:5] + sl.start).tolist()
            raise StoreError(f"store {self.url!r}: chunk {index} has missing or invalid rows "
                             f"{where} (sample_id/position out of range, class id >= C, counts "
                             "not summing to draws, or non-finite values); the chunk was never "
                             "written or is damaged")
        for name, values in raw.items():
            self.digests.check_rows(name, sl.start, values)
        return sample_ids, positions, rows

    def _all_valid(self, sample_ids: np.ndarray, positions: np.ndarray | None,
                   rows: sp.SparseRows) -> bool:
        """The row checks of read_chunk as whole-chunk reductions (rows are located only
        when one fails): np.isfinite on float16 costs ~15x the max of masked exponent bits."""
        n = self.meta.dataset["n"]
        exponents = np.bitwise_and(rows.logits.view(np.uint16), FP16_EXP)  # all ones: Inf/NaN
        ok = (sample_ids.min(initial=0) >= 0 and sample_ids.max(initial=0) < n
              and exponents.max(initial=0) < FP16_EXP
              and rows.ids.max(initial=0) < self.meta.num_classes
              and bool(np.isfinite(rows.lse).all()) and bool(np.isfinite(rows.tail).all()))
        if ok and positions is not None:
            ok = positions.min(initial=0) >= 0
        if ok and rows.counts is not None:
            ok = bool((rows.counts.sum(axis=1) == self.spec.draws).all())
        return bool(ok)

    def read_all(self) -> tuple[np.ndarray, np.ndarray | None, sp.SparseRows]:
        """Every row; refuses duplicate (sample_id, position) pairs."""
        parts = [self.read_chunk(i) for i in range(self.num_chunks)]
        sample_ids = np.concatenate([p[0] for p in parts])
        positions = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        rows = sp.concat_rows([p[2] for p in parts])
        keys = sample_ids if positions is None else np.stack([sample_ids, positions], axis=1)
        if len(np.unique(keys, axis=0)) != len(keys):
            raise StoreError(f"store {self.url!r}: duplicate (sample_id, position) rows; the "
                             "store is damaged")
        return sample_ids, positions, rows

    def check_dataset(self, identity: dict[str, Any]) -> None:
        """Refuse to pair this store with data other than the data it was computed on."""
        check_dataset(self.meta, self.url, identity)


def open_any(url: str) -> Any:
    """LogitStore for a dense store, SparseStore for a sparse one."""
    from softtargets.format.store import LogitStore
    meta, _ = read_meta(url)
    return SparseStore.open(url) if meta.kind in KINDS else LogitStore.open(url)
