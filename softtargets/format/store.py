"""The logit store format (v1): a Zarr v3 group of teacher logits. numpy and zarr only, never torch.

Layout (docs/FORMAT.md is the normative description):
    <store>/zarr.json            group; attributes["softtargets"] holds the metadata, `complete` last
    <store>/logits               float16 (N, C), raw teacher logits, chunked by rows
    <store>/sample_id            int64 (N,), dataset index of each row, same row chunking
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from softtargets.format.codecs import (COMPRESSORS, DENSE_COMPRESSOR, FP16_MAX,  # noqa: F401 re-exported
                                TARGET_CHUNK_BYTES, codec_chain, compressor_codecs,
                                default_chunk_rows, to_float16)
from softtargets.format.digests import META as DIGESTS_META
from softtargets.format.digests import META_KEY as DIGESTS_KEY
from softtargets.format.digests import DigestCheck, DigestWriter, add_row_array  # noqa: F401 re-exported
from softtargets.format.identity import check_dataset
from softtargets.errors import (IncompleteStoreError, SparseStoreError, StoreError,
                                StoreExistsError)
from softtargets.format.meta_check import check_meta, open_store_group
from softtargets.format.remote import is_remote, local_path, open_group
from softtargets.format.schema import (ATTR_KEY, FORMAT_NAME, FORMAT_VERSION,  # noqa: F401 re-exported
                                LOGITS, MAX_READ_VERSION, SAMPLE_ID, STORE_ARRAYS)


@dataclasses.dataclass(frozen=True)
class StoreMeta:
    """What attributes["softtargets"] of a store says. Unknown keys are kept in `extra`."""

    format: str
    version: int
    kind: str
    n: int
    num_classes: int
    class_names: tuple[str, ...]
    dtype: str
    chunk_rows: int
    compressor: str
    codecs: list[dict[str, Any]]
    dataset: dict[str, Any]
    teacher: dict[str, Any]
    config: dict[str, Any]
    created_at: str
    created_by: dict[str, str]
    complete: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        extra = d.pop("extra")
        return {**extra, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoreMeta:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = sorted(names - set(d) - {"complete"})
        if missing:
            raise StoreError(f"store metadata lacks keys {missing}; it was not written by a "
                             "softtargets v1 writer or was edited")
        known = {k: v for k, v in d.items() if k in names}
        if isinstance(known["class_names"], list):  # anything else is refused by check_meta
            known["class_names"] = tuple(known["class_names"])
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})


def software_versions() -> dict[str, str]:
    """Versions of the libraries that define the bytes of a store."""
    from softtargets import __version__
    return {"softtargets": __version__, "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _prepare_destination(url: str, overwrite: bool) -> None:
    """Refuse an existing path unless overwrite; delete only a softtargets store (destination.py)."""
    from softtargets.format.destination import prepare_destination  # it imports this module
    prepare_destination(url, overwrite)


# --- building blocks of the other array layouts (sparse_store.py) ---

def create_group(url: str, meta: StoreMeta) -> zarr.Group:
    """A new group at `url` whose attributes hold `meta` (incomplete); the caller adds arrays."""
    try:
        return open_group(url, mode="w-", attributes={ATTR_KEY: meta.to_json()})
    except (FileExistsError, zarr.errors.ContainsGroupError,
            zarr.errors.ContainsArrayError) as e:
        raise StoreExistsError(f"store {url!r} already exists; pass --overwrite") from e


class RowWriter:
    """Unit geometry and bookkeeping shared by the store writers of every kind.

    A write unit is one storage object of every array: a shard when sharded, else a chunk.
    Subclasses create the arrays and implement `write_unit`; a writer that raises or is killed
    leaves `complete: false`, which readers refuse.
    """

    def __init__(self, group: zarr.Group, meta: StoreMeta) -> None:
        self.group = group
        self.meta = meta
        self.written: set[int] = set()  # chunk indices
        self.digests = DigestWriter(group, dataset=meta.dataset, chunk_rows=meta.chunk_rows)

    @classmethod
    def open(cls, url: str) -> Any:
        """Reopen an incomplete store to add units (resume, or a parallel writer's rank > 0)."""
        meta, _ = read_meta(url)
        if meta.complete:
            raise StoreError(f"store {url!r} is already complete; nothing to write")
        return cls(open_group(url, mode="r+"), meta)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.meta.n / self.meta.chunk_rows)

    def chunk_slice(self, index: int) -> slice:
        return chunk_slice(self.meta, index)

    @property
    def unit_rows(self) -> int:
        """Rows one writer writes at once: a shard when sharded, else a chunk."""
        return unit_rows(self.meta)

    @property
    def num_units(self) -> int:
        return math.ceil(self.meta.n / self.unit_rows)

    def unit_slice(self, index: int) -> slice:
        if not 0 <= index < self.num_units:
            raise StoreError(f"write unit {index} out of range [0, {self.num_units})")
        start = index * self.unit_rows
        return slice(start, min(self.meta.n, start + self.unit_rows))

    def unit_chunks(self, index: int) -> range:
        """Chunk indices inside write unit `index`."""
        sl = self.unit_slice(index)
        return range(sl.start // self.meta.chunk_rows,
                     math.ceil(sl.stop / self.meta.chunk_rows))

    def write_unit(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray,
                   positions: np.ndarray | None = None) -> None:
        """Write whole unit `index` from dense values (rows, C), sample_id last."""
        raise NotImplementedError

    def mark_written(self, index: int) -> None:
        """Record unit `index` as present (written here, or verified on disk)."""
        self.written.update(self.unit_chunks(index))

    def check_ids(self, what: str, sample_ids: np.ndarray, rows: int) -> np.ndarray:
        """sample_ids (rows,) as int64, each in [0, dataset n)."""
        sample_ids = np.asarray(sample_ids)
        if sample_ids.shape != (rows,):
            raise StoreError(f"{what} needs sample_ids ({rows},), got {sample_ids.shape}")
        if (sample_ids < 0).any() or (sample_ids >= self.meta.dataset["n"]).any():
            raise StoreError(f"{what}: sample ids must be in [0, {self.meta.dataset['n']})")
        return sample_ids.astype(np.int64)

    def finalize(self) -> StoreMeta:
        """Mark the store complete; refuses while any chunk is unwritten."""
        self.meta = mark_complete(self.group, self.meta, written=self.written,
                                  num_chunks=self.num_chunks)
        return self.meta


class StoreWriter(RowWriter):
    """Writes a dense v1 store unit by unit and marks it complete last.

    Use `create`, then `write_chunk` (or `write_unit`) for every chunk (any order, any process
    for disjoint units), then `finalize`.
    """

    def __init__(self, group: zarr.Group, meta: StoreMeta) -> None:
        super().__init__(group, meta)
        self.logits = group[LOGITS]
        self.sample_id = group[SAMPLE_ID]

    @classmethod
    def create(cls, url: str, *, n: int, class_names: tuple[str, ...] | list[str],
               dataset: dict[str, Any], teacher: dict[str, Any], config: dict[str, Any],
               chunk_rows: int | None = None, compressor: str = DENSE_COMPRESSOR,
               overwrite: bool = False, shard_rows: int | None = None,
               extra: dict[str, Any] | None = None) -> StoreWriter:
        """Create an empty, incomplete store at `url` (a path, file:// or fsspec URL).

        shard_rows: when set, both arrays use the sharding codec with shards of that many rows
        (a multiple of chunk_rows); writers then write whole shards only (`write_unit`).
        """
        num_classes = len(class_names)
        if n <= 0 or num_classes <= 0:
            raise StoreError(f"a store needs n > 0 rows and C > 0 classes, got n={n}, C={num_classes}")
        rows = chunk_rows or default_chunk_rows(n, num_classes)
        codecs = compressor_codecs(compressor)
        check_shard_rows(shard_rows, rows)
        _prepare_destination(url, overwrite)
        meta = new_meta(kind="dense", n=n, class_names=class_names, chunk_rows=rows,
                        compressor=compressor, codecs=codec_chain(codecs), dataset=dataset,
                        teacher=teacher, config=config, shard_rows=shard_rows, extra=extra)
        group = create_group(url, meta)
        # every chunk is written explicitly, so a deleted one is detectable; the NaN / -1 fill
        # values make a chunk that was never written fail the reader's checks
        add_row_array(group, LOGITS, n=n, row_shape=(num_classes,), chunk_rows=rows,
                      dtype="float16", codecs=codecs, fill_value=float("nan"),
                      dimension_names=("row", "class"), shard_rows=shard_rows)
        add_row_array(group, SAMPLE_ID, n=n, row_shape=(), chunk_rows=rows, dtype="int64",
                      codecs=compressor_codecs(compressor), fill_value=-1,
                      dimension_names=("row",), shard_rows=shard_rows)
        if shard_rows:  # record the real chain, the sharding codec wrapping the v1 one
            chain = json.loads(json.dumps(group[LOGITS].metadata.to_dict()["codecs"]))
            meta = dataclasses.replace(meta, codecs=chain)
            group.attrs.update({ATTR_KEY: meta.to_json()})
        return cls(group, meta)

    def write_chunk(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray) -> None:
        """Write whole chunk `index`: sample_ids (rows,) and logits (rows, C), validated first."""
        self._write_rows(self.chunk_slice(index), f"chunk {index}", sample_ids=sample_ids,
                         logits=logits)
        self.written.add(index)

    def _write_rows(self, sl: slice, what: str, *, sample_ids: np.ndarray,
                    logits: np.ndarray) -> None:
        rows = sl.stop - sl.start
        if logits.shape != (rows, self.meta.num_classes):
            raise StoreError(f"{what} needs logits ({rows}, {self.meta.num_classes}) and "
                             f"sample_ids ({rows},), got {logits.shape} and "
                             f"{np.shape(sample_ids)}")
        sample_ids = self.check_ids(what, sample_ids, rows)
        half = to_float16(logits, first_row=sl.start)
        self.digests.write(LOGITS, sl, half)  # sample_id last: it marks the unit written
        self.digests.write(SAMPLE_ID, sl, sample_ids)

    def write_unit(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray,
                   positions: np.ndarray | None = None) -> None:
        """Write whole unit `index` (one shard object, or one chunk when unsharded)."""
        if positions is not None:
            raise StoreError("a dense store has no position array; per-position rows need "
                             "top-k or sampled targets")
        self._write_rows(self.unit_slice(index), f"write unit {index}", sample_ids=sample_ids,
                         logits=logits)
        self.mark_written(index)


def new_meta(*, kind: str, n: int, class_names: tuple[str, ...] | list[str], chunk_rows: int,
             compressor: str, codecs: list[dict[str, Any]], dataset: dict[str, Any],
             teacher: dict[str, Any], config: dict[str, Any], shard_rows: int | None = None,
             extra: dict[str, Any] | None = None) -> StoreMeta:
    """The metadata of a new, incomplete store (chunk digests declared)."""
    return StoreMeta(format=FORMAT_NAME, version=FORMAT_VERSION, kind=kind, n=n,
                     num_classes=len(class_names), class_names=tuple(class_names),
                     dtype="float16", chunk_rows=chunk_rows, compressor=compressor,
                     codecs=codecs, dataset=dataset, teacher=teacher, config=config,
                     created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     created_by=software_versions(), complete=False,
                     extra={**(extra or {}),
                            DIGESTS_KEY: {**DIGESTS_META, **(extra or {}).get(DIGESTS_KEY, {})},
                            **({"shard_rows": shard_rows} if shard_rows else {})})


def mark_complete(group: zarr.Group, meta: StoreMeta, *, written: set[int],
                  num_chunks: int) -> StoreMeta:
    """Write `complete: true` last, after checking every chunk was written; the new metadata."""
    missing = sorted(set(range(num_chunks)) - written)
    if missing:
        raise IncompleteStoreError(f"cannot finalize: chunks {missing[:10]} of "
                                   f"{num_chunks} were not written")
    meta = dataclasses.replace(meta, complete=True)
    group.attrs.update({ATTR_KEY: meta.to_json()})
    return meta


def check_shard_rows(shard_rows: int | None, chunk_rows: int) -> None:
    """Shards must hold a whole number of chunks."""
    if shard_rows is not None and (shard_rows <= 0 or shard_rows % chunk_rows):
        raise StoreError(f"shard_rows must be a positive multiple of chunk_rows ({chunk_rows}), "
                         f"got {shard_rows}; pick e.g. {chunk_rows * 32}")


def unit_rows(meta: StoreMeta) -> int:
    """Rows of one storage object: the shard when sharded (attribute shard_rows), else a chunk."""
    return int(meta.extra.get("shard_rows") or meta.chunk_rows)


def chunk_slice(meta: StoreMeta, index: int) -> slice:
    """Rows of chunk `index`."""
    count = math.ceil(meta.n / meta.chunk_rows)
    if not 0 <= index < count:
        raise StoreError(f"chunk index {index} out of range [0, {count})")
    start = index * meta.chunk_rows
    return slice(start, min(meta.n, start + meta.chunk_rows))


class LogitStore:
    """A complete v1 store opened for reading. Every read checks sample ids and finiteness."""

    def __init__(self, group: zarr.Group, meta: StoreMeta, url: str) -> None:
        self.group = group
        self.meta = meta
        self.url = url
        self.logits = group[LOGITS]
        self.sample_id = group[SAMPLE_ID]
        self.digests = DigestCheck(group, meta, url)

    @classmethod
    def open(cls, url: str, *, allow_incomplete: bool = False) -> LogitStore:
        """Open the store at `url`; refuses other formats, newer versions and incomplete stores."""
        meta, group = read_meta(url)
        if meta.kind != "dense":  # sparse stores have no dense `logits` array
            raise SparseStoreError(
                f"store {url!r} is a sparse {meta.kind!r} store (kind {meta.kind!r}, no dense "
                "'logits' array); this reader reads only kind 'dense'. Open it with "
                "softtargets.format.sparse_store.SparseStore (the student command accepts it)")
        if not meta.complete and not allow_incomplete:
            raise IncompleteStoreError(
                f"store {url!r} is incomplete (complete: false): its writer crashed or is still "
                "running; rerun stage 1 (teacher-logits) to produce it")
        return cls(group, meta, url)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.meta.n / self.meta.chunk_rows)

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ids (rows,) int64 and logits (rows, C) float16 of chunk `index`, checked."""
        sl = chunk_slice(self.meta, index)
        try:
            ids = np.asarray(self.sample_id[sl])
            logits = np.asarray(self.logits[sl])
        except Exception as e:  # zarr raises codec-specific errors on a bad checksum
            raise StoreError(f"store {self.url!r}: chunk {index} (rows {sl.start}..{sl.stop - 1}) "
                             f"cannot be decoded: {e}") from e
        bad_ids = (ids < 0) | (ids >= self.meta.dataset["n"])
        bad_vals = ~np.isfinite(logits).all(axis=1)
        if bad_ids.any() or bad_vals.any():
            rows = (np.flatnonzero(bad_ids | bad_vals)[:5] + sl.start).tolist()
            raise StoreError(f"store {self.url!r}: chunk {index} has missing or invalid rows "
                             f"{rows} (sample_id out of range or non-finite logits); "
                             "the chunk was never written or is damaged")
        self.digests.check_rows(SAMPLE_ID, sl.start, ids)
        self.digests.check_rows(LOGITS, sl.start, logits)
        return ids, logits

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """All sample ids (N,) and logits (N, C), chunk by chunk; refuses duplicate ids."""
        parts = [self.read_chunk(i) for i in range(self.num_chunks)]
        ids = np.concatenate([p[0] for p in parts])
        logits = np.concatenate([p[1] for p in parts])
        if np.unique(ids).size != ids.size:
            raise StoreError(f"store {self.url!r}: sample_id has duplicates; the store is damaged")
        return ids, logits

    def check_dataset(self, identity: dict[str, Any]) -> None:
        """Refuse to pair this store with data other than the data it was computed on."""
        check_dataset(self.meta, self.url, identity)


def read_meta(url: str) -> tuple[StoreMeta, zarr.Group]:
    """The metadata and group of a store, complete or not, after the format's metadata checks
    (meta_check.check_meta: keys, versions, array shapes, dtypes, chunking, crc32c)."""
    raw, group = open_store_group(url)
    meta = StoreMeta.from_json(raw)  # names missing keys first
    check_meta(raw, group, url)
    return meta, group
