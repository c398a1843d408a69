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
import shutil
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from softtargets.codecs import (COMPRESSORS, FP16_MAX, TARGET_CHUNK_BYTES,  # noqa: F401 re-exported
                                codec_chain, compressor_codecs, default_chunk_rows, to_float16)
from softtargets.errors import (IncompleteStoreError, SparseStoreError, StoreError,
                                StoreExistsError, StoreMismatchError)
from softtargets.remote import is_remote, local_path, open_group, remove_remote_store

FORMAT_NAME = "softtargets.logits"
FORMAT_VERSION = 1
# Issue 3: version 2 marks a store whose `logits` are valid at one temperature only (an ensemble's
# arithmetic mean written with --store-combined-only); v1 readers refuse it, this reader reads it.
MAX_READ_VERSION = 2
ATTR_KEY = "softtargets"
LOGITS = "logits"
SAMPLE_ID = "sample_id"


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
        known["class_names"] = tuple(known["class_names"])
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})


def software_versions() -> dict[str, str]:
    """Versions of the libraries that define the bytes of a store."""
    from softtargets import __version__
    return {"softtargets": __version__, "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _prepare_destination(url: str, overwrite: bool) -> None:
    """Refuse an existing path unless overwrite; never delete something that is not a Zarr store."""
    if is_remote(url):
        remove_remote_store(url, overwrite=overwrite)  # issue 4: s3:// etc.
        return
    path = Path(local_path(url))
    if not path.exists():
        return
    if not overwrite:
        raise StoreExistsError(f"store path {str(path)!r} already exists; pass --overwrite to "
                               "replace it or choose another path")
    if path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").exists():
        raise StoreExistsError(f"{str(path)!r} exists and is not a Zarr store; refusing to delete "
                               "it even with --overwrite")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


# --- issue 6: building blocks of other array layouts (sparse_store.py) ---

def create_group(url: str, meta: StoreMeta) -> zarr.Group:
    """A new group at `url` whose attributes hold `meta` (incomplete); the caller adds arrays."""
    try:
        return open_group(url, mode="w-", attributes={ATTR_KEY: meta.to_json()})
    except (FileExistsError, zarr.errors.ContainsGroupError,
            zarr.errors.ContainsArrayError) as e:
        raise StoreExistsError(f"store {url!r} already exists; pass --overwrite") from e


def add_row_array(group: zarr.Group, name: str, *, n: int, row_shape: tuple[int, ...],
                  chunk_rows: int, dtype: str, codecs: list[Any], fill_value: Any,
                  dimension_names: tuple[str, ...], shard_rows: int | None = None) -> zarr.Array:
    """An (n, *row_shape) array chunked by `chunk_rows` rows (sharded by `shard_rows` rows when
    set, like `logits`), every chunk written explicitly."""
    return group.create_array(name, shape=(n, *row_shape), chunks=(chunk_rows, *row_shape),
                              shards=(shard_rows, *row_shape) if shard_rows else None,
                              dtype=dtype, compressors=codecs, fill_value=fill_value,
                              dimension_names=list(dimension_names),
                              config={"write_empty_chunks": True})


class StoreWriter:
    """Writes a v1 store chunk by chunk and marks it complete last.

    Use `create`, then `write_chunk` for every chunk (any order, any process for disjoint chunks),
    then `finalize`. A writer that raises or is killed leaves `complete: false`: readers refuse it.
    """

    def __init__(self, group: zarr.Group, meta: StoreMeta) -> None:
        self.group = group
        self.meta = meta
        self.logits = group[LOGITS]
        self.sample_id = group[SAMPLE_ID]
        self.written: set[int] = set()

    @classmethod
    def create(cls, url: str, *, n: int, class_names: tuple[str, ...] | list[str],
               dataset: dict[str, Any], teacher: dict[str, Any], config: dict[str, Any],
               chunk_rows: int | None = None, compressor: str = "zstd",
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
        meta = StoreMeta(format=FORMAT_NAME, version=FORMAT_VERSION, kind="dense", n=n,
                         num_classes=num_classes, class_names=tuple(class_names),
                         dtype="float16", chunk_rows=rows, compressor=compressor,
                         codecs=codec_chain(codecs), dataset=dataset, teacher=teacher, config=config,
                         created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         created_by=software_versions(), complete=False,
                         extra={**(extra or {}), **({"shard_rows": shard_rows} if shard_rows
                                                    else {})})
        try:
            group = open_group(url, mode="w-", attributes={ATTR_KEY: meta.to_json()})
        except (FileExistsError, zarr.errors.ContainsGroupError,
                zarr.errors.ContainsArrayError) as e:
            raise StoreExistsError(f"store {url!r} already exists; pass --overwrite") from e
        # write_empty_chunks: every chunk exists on disk, so a deleted one is detectable; the NaN / -1
        # fill values make a chunk that was never written fail the reader's checks.
        array_config = {"write_empty_chunks": True}
        group.create_array(LOGITS, shape=(n, num_classes), chunks=(rows, num_classes),
                           shards=(shard_rows, num_classes) if shard_rows else None,
                           dtype="float16", compressors=codecs, fill_value=float("nan"),
                           dimension_names=["row", "class"], config=array_config)
        group.create_array(SAMPLE_ID, shape=(n,), chunks=(rows,),
                           shards=(shard_rows,) if shard_rows else None, dtype="int64",
                           compressors=compressor_codecs(compressor), fill_value=-1,
                           dimension_names=["row"], config=array_config)
        if shard_rows:  # issue 4: record the real chain, the sharding codec wrapping the v1 one
            chain = json.loads(json.dumps(group[LOGITS].metadata.to_dict()["codecs"]))
            meta = dataclasses.replace(meta, codecs=chain)
            group.attrs.update({ATTR_KEY: meta.to_json()})
        return cls(group, meta)

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.meta.n / self.meta.chunk_rows)

    def chunk_slice(self, index: int) -> slice:
        return chunk_slice(self.meta, index)

    def write_chunk(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray) -> None:
        """Write whole chunk `index`: sample_ids (rows,) and logits (rows, C), validated first."""
        self._write_rows(self.chunk_slice(index), f"chunk {index}", sample_ids=sample_ids,
                         logits=logits)
        self.written.add(index)

    def _write_rows(self, sl: slice, what: str, *, sample_ids: np.ndarray,
                    logits: np.ndarray) -> None:
        rows = sl.stop - sl.start
        sample_ids = np.asarray(sample_ids)
        if logits.shape != (rows, self.meta.num_classes) or sample_ids.shape != (rows,):
            raise StoreError(f"{what} needs logits ({rows}, {self.meta.num_classes}) and "
                             f"sample_ids ({rows},), got {logits.shape} and {sample_ids.shape}")
        if (sample_ids < 0).any() or (sample_ids >= self.meta.dataset["n"]).any():
            raise StoreError(f"{what}: sample ids must be in [0, {self.meta.dataset['n']})")
        half = to_float16(logits, first_row=sl.start)
        self.logits[sl] = half
        self.sample_id[sl] = sample_ids.astype(np.int64)

    # --- issue 4: write units (whole shards, or chunks when unsharded) and reopening ---

    @classmethod
    def open(cls, url: str) -> StoreWriter:
        """Reopen an incomplete store to add chunks (resume, or a parallel writer's rank > 0)."""
        meta, _ = read_meta(url)
        if meta.complete:
            raise StoreError(f"store {url!r} is already complete; nothing to write")
        return cls(open_group(url, mode="r+"), meta)

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

    def write_unit(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray) -> None:
        """Write whole unit `index` (one shard object, or one chunk when unsharded)."""
        self._write_rows(self.unit_slice(index), f"write unit {index}", sample_ids=sample_ids,
                         logits=logits)
        self.mark_written(index)

    def mark_written(self, index: int) -> None:
        """Record unit `index` as present (written here, or verified on disk)."""
        self.written.update(self.unit_chunks(index))

    def finalize(self) -> StoreMeta:
        """Mark the store complete; refuses while any chunk is unwritten."""
        self.meta = mark_complete(self.group, self.meta, written=self.written,
                                  num_chunks=self.num_chunks)
        return self.meta


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

    @classmethod
    def open(cls, url: str, *, allow_incomplete: bool = False) -> LogitStore:
        """Open the store at `url`; refuses other formats, newer versions and incomplete stores."""
        meta, group = read_meta(url)
        if meta.kind != "dense":  # issue 6: sparse stores have no dense `logits` array
            raise SparseStoreError(
                f"store {url!r} is a sparse {meta.kind!r} store (kind {meta.kind!r}, no dense "
                "'logits' array); this reader reads only kind 'dense'. Open it with "
                "softtargets.sparse_store.SparseStore (the student command accepts it)")
        if not meta.complete and not allow_incomplete:
            raise IncompleteStoreError(
                f"store {url!r} is incomplete (complete: false): its writer crashed or is still "
                "running; rerun stage 1 (teacher-logits) to produce it")
        for name, shape in ((LOGITS, (meta.n, meta.num_classes)), (SAMPLE_ID, (meta.n,))):
            if name not in group:
                raise StoreError(f"store {url!r} lacks the array {name!r}; it is damaged")
            if tuple(group[name].shape) != shape:
                raise StoreError(f"store {url!r}: array {name!r} has shape {group[name].shape}, "
                                 f"metadata says {shape}; the store is truncated or damaged")
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


def check_dataset(meta: StoreMeta, url: str, identity: dict[str, Any]) -> None:
    """Refuse to pair a store (dense or sparse) with data other than the data it was computed on."""
    mine = meta.dataset
    for key in ("name", "split", "val_rows", "n", "fingerprint"):
        if _identity_value(mine, key) != _identity_value(identity, key):
            fix = (f"pass the store's --val-rows {_identity_value(mine, key)} or rewrite it with "
                   f"teacher-logits --val-rows {_identity_value(identity, key)}"
                   if key == "val_rows" else
                   "recompute the store on this data or pass the data it was made from")
            raise StoreMismatchError(f"store {url!r} was computed on {_describe(mine)} but is used "
                                     f"with {_describe(identity)}: {key} differs; {fix}")


def _identity_value(identity: dict[str, Any], key: str) -> Any:
    # stores written before validation splits existed have no val_rows: none were held out
    return int(identity.get(key) or 0) if key == "val_rows" else identity.get(key)


def _describe(identity: dict[str, Any]) -> str:
    return (f"{identity.get('name')}/{identity.get('split')} (n={identity.get('n')}, "
            f"val_rows={_identity_value(identity, 'val_rows')}, "
            f"fingerprint {identity.get('fingerprint')})")


def read_meta(url: str) -> tuple[StoreMeta, zarr.Group]:
    """The metadata and group of a store, complete or not."""
    if not is_remote(url) and not Path(local_path(url)).exists():
        raise StoreError(f"no store at {url!r}; run stage 1 (softtargets teacher-logits) first")
    try:
        group = open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreError(f"{url!r} is not a Zarr v3 group: {e}") from e
    raw = group.attrs.get(ATTR_KEY)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise StoreError(f"{url!r} is a Zarr group but not a softtargets logit store "
                         f"(attributes[{ATTR_KEY!r}].format != {FORMAT_NAME!r})")
    if not isinstance(raw.get("version"), int) or raw["version"] > MAX_READ_VERSION:
        raise StoreError(f"store {url!r} has format version {raw.get('version')!r}; this reader "
                         f"supports up to {MAX_READ_VERSION}: upgrade softtargets")
    return StoreMeta.from_json(raw), group
