"""Chunk digests: every row chunk of every array bound to its array, position and content.

crc32c catches a damaged chunk but not a whole, valid chunk in the wrong place (two chunk files
swapped, a chunk duplicated, chunks copied from a store of another split). So writers also store,
for chunk i of array X, the xxh3-128 hash of a header naming the store's dataset identity, X,
the member, i and its rows, followed by the chunk's stored bytes; readers recompute it for every
chunk they decode. The digests of X live in `digests/X`, shape (*lead, num_chunks, 16) uint8 (lead: the
member axis of member arrays), chunked so that one write unit (a chunk, or a shard) of X has one
digest object written by the same writer right after the data. numpy, zarr, hashlib and xxhash only.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from typing import Any

import numpy as np
import xxhash
import zarr

from softtargets.format.codecs import compressor_codecs
from softtargets.errors import StoreError, StoreMismatchError

DIGESTS = "digests"  # subgroup holding one digest array per data array
# xxh3-128 runs at ~37 GB/s here against ~1.5 GB/s for sha256: hashing every decoded chunk then
# costs stage 2 a few percent instead of ~40% of raw decode. The digests bind chunks to their
# places against accidents and mix-ups; like any unsigned manifest, not against a forger.
ALGORITHM = "xxh3-128"
DIGEST_BYTES = 16
PREFIX = b"softtargets.digest/v1\n"
META_KEY = "digests"  # attributes["softtargets"]["digests"]: {"algorithm", "group", "version"}
META = {"algorithm": ALGORITHM, "group": DIGESTS, "version": 1}
# held while a DigestCheck fills its cache (rare: once per array and reader); a module lock keeps
# the checks picklable
_FILLING = threading.Lock()


def store_key(dataset: dict[str, Any]) -> str:
    """Binds digests to the data a store was computed on: chunks (and their digests) copied from
    a store of another split or dataset do not verify here."""
    text = json.dumps(dataset, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_digest(key: str, name: str, *, member: int | None, chunk: int, start: int,
                 block: np.ndarray) -> bytes:
    """xxh3-128 (canonical, big-endian bytes) of the prefix, the header line and the chunk's
    values (rows, ...) as stored (little endian)."""
    block = np.ascontiguousarray(block)
    if block.dtype.byteorder == ">":
        block = block.astype(block.dtype.newbyteorder("<"))
    shape = "x".join(str(s) for s in block.shape)
    lead = "-" if member is None else str(member)
    header = f"{key} {name} {lead} {chunk} {start} {start + len(block)} {block.dtype.str} {shape}\n"
    h = xxhash.xxh3_128(PREFIX)
    h.update(header.encode())
    h.update(block.reshape(-1).view(np.uint8))
    return h.digest()


def add_digest_array(group: zarr.Group, name: str, *, lead: tuple[int, ...], n: int,
                     chunk_rows: int, unit_rows: int) -> zarr.Array:
    """`digests/<name>` for a row array `name` of n rows (and leading axes `lead`)."""
    num_chunks = math.ceil(n / chunk_rows)
    per_unit = max(1, unit_rows // chunk_rows)
    sub = group.require_group(DIGESTS)
    dims = ["member"] * len(lead) + ["chunk", "digest"]
    return sub.create_array(name, shape=(*lead, num_chunks, DIGEST_BYTES),
                            chunks=(*(1,) * len(lead), per_unit, DIGEST_BYTES), dtype="uint8",
                            compressors=compressor_codecs("none"), fill_value=0,
                            dimension_names=dims, config={"write_empty_chunks": True})


def add_row_array(group: zarr.Group, name: str, *, n: int, row_shape: tuple[int, ...],
                  chunk_rows: int, dtype: str, codecs: list[Any], fill_value: Any,
                  dimension_names: tuple[str, ...], shard_rows: int | None = None,
                  members: int | None = None) -> zarr.Array:
    """The one way to create a data array: (n, *row_shape), or (members, n, *row_shape) with
    chunks of one member, chunked by `chunk_rows` rows (sharded by `shard_rows` rows when set),
    every chunk written explicitly, with its digest array `digests/<name>` beside it."""
    lead = (members,) if members is not None else ()
    ones = (1,) * len(lead)
    array = group.create_array(name, shape=(*lead, n, *row_shape),
                               chunks=(*ones, chunk_rows, *row_shape),
                               shards=(*ones, shard_rows, *row_shape) if shard_rows else None,
                               dtype=dtype, compressors=codecs, fill_value=fill_value,
                               dimension_names=list(dimension_names),
                               config={"write_empty_chunks": True})
    add_digest_array(group, name, lead=lead, n=n, chunk_rows=chunk_rows,
                     unit_rows=shard_rows or chunk_rows)
    return array


def _digest_arrays(group: zarr.Group) -> zarr.Group | None:
    try:
        sub = group[DIGESTS]
    except KeyError:
        return None
    return sub if isinstance(sub, zarr.Group) else None


def _read_whole(array: zarr.Array) -> np.ndarray:
    """All digests of one digest array, its chunk files read directly where they are local."""
    # imported here: chunks.py imports the stores, which import this module
    from softtargets.format.chunks import read_whole
    return read_whole(array)


class DigestWriter:
    """Writes rows of a store's arrays, then the digests of the chunks they fill."""

    def __init__(self, group: zarr.Group, *, dataset: dict[str, Any], chunk_rows: int) -> None:
        self.group = group
        self.key = store_key(dataset)
        self.chunk_rows = chunk_rows
        self.sub = _digest_arrays(group)
        self._arrays: dict[str, Any] = {}
        self._targets: dict[str, Any] = {}

    def _array(self, name: str) -> Any:
        if name not in self._arrays:  # group[name] reads metadata every time
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def _digests(self, name: str) -> Any:
        """The digest array of `name`, or None in an unbound store; looked up once per name
        (each lookup reads metadata from the store)."""
        if name not in self._targets:
            found = self.sub is not None and name in self.sub
            self._targets[name] = self.sub[name] if found else None
        return self._targets[name]

    def write(self, name: str, sl: slice, values: np.ndarray, *, member: int | None = None) -> None:
        """Write rows `sl` (chunk-aligned start) of `name` (of member `member`), then digests.

        `values` must already have the array's dtype: the digest is of the stored bytes.
        """
        array = self._array(name)
        if member is None:
            array[sl] = values
        else:
            array[member:member + 1, sl] = values[None]
        target = self._digests(name)
        if target is None:  # a store from before digests: unbound
            return
        digests = digest_rows(self.key, name, member=member, start=sl.start, values=values,
                              chunk_rows=self.chunk_rows)  # (chunks, 16)
        first = sl.start // self.chunk_rows
        if member is None:
            target[first:first + len(digests)] = digests
        else:
            target[member:member + 1, first:first + len(digests)] = digests[None]


def digest_rows(key: str, name: str, *, member: int | None, start: int, values: np.ndarray,
                chunk_rows: int) -> np.ndarray:
    """Digests (chunks, 16) of the row chunks in `values`, whose first row is row `start`."""
    if start % chunk_rows:
        raise StoreError(f"rows of {name!r} must start at a chunk boundary ({chunk_rows} rows), "
                         f"got row {start}")
    out = np.empty((math.ceil(len(values) / chunk_rows), DIGEST_BYTES), dtype=np.uint8)
    for j in range(len(out)):
        block = values[j * chunk_rows:(j + 1) * chunk_rows]
        chunk = start // chunk_rows + j
        out[j] = np.frombuffer(chunk_digest(key, name, member=member, chunk=chunk,
                                            start=chunk * chunk_rows, block=block), np.uint8)
    return out


class DigestCheck:
    """Checks decoded chunks against their stored digests; a no-op for unbound stores.

    cache=True reads each digest array once (readers of a finished store); False reads the
    digests of each check afresh (a writer checking units that other processes may still write).
    """

    def __init__(self, group: zarr.Group, meta: Any, url: str, *, cache: bool = True) -> None:
        self.url = url
        self.chunk_rows = int(meta.chunk_rows)
        self.n = int(meta.n)
        self.key = store_key(meta.dataset)
        self.sub = _digest_arrays(group)
        self.cache = cache
        if meta.extra.get(META_KEY) is not None and self.sub is None:
            raise StoreError(f"store {url!r}: its metadata declares chunk digests but the "
                             f"'{DIGESTS}' group is missing; the store was damaged or stripped")
        self._cache: dict[str, np.ndarray] = {}

    @property
    def bound(self) -> bool:
        """Whether this store's chunks are bound to their positions by digests."""
        return self.sub is not None

    def _stored(self, name: str, member: int | None, first: int, count: int) -> np.ndarray:
        """Stored digests (count, 16) of chunks first.. of `name` (of member `member`)."""
        stored = self._cache.get(name)  # readers decode every chunk: no store lookup per check
        if stored is None:
            if not self.cache:
                return self._read(name, member, first, count)
            with _FILLING:  # decode threads share the reader: the first reads, the others wait
                stored = self._cache.get(name)
                if stored is None:
                    stored = self._cache[name] = self._read(name, member, first, count)
        stored = stored if member is None else stored[member]
        return stored[first:first + count]

    def _read(self, name: str, member: int | None, first: int, count: int) -> np.ndarray:
        """All digests of `name` (cache=True), else those of chunks first.. of one member."""
        if self.sub is None or name not in self.sub:
            raise StoreError(f"store {self.url!r}: array {name!r} has no digests "
                             f"('{DIGESTS}/{name}' is missing); the store was damaged or "
                             "stripped")
        try:
            array = self.sub[name]
            if self.cache:
                return _read_whole(array)
            stored = np.asarray(array[first:first + count] if member is None
                                else array[member:member + 1, first:first + count])
            return stored if member is None else stored[0]
        except Exception as e:  # a damaged digest object fails its crc32c
            raise StoreError(f"store {self.url!r}: the digests of {name!r} cannot be "
                             f"decoded: {e}") from e

    def check_rows(self, name: str, start: int, values: np.ndarray, *,
                   member: int | None = None) -> None:
        """Check every chunk of `values` (rows, ...), whose first row is `start`; raises."""
        problem = self.mismatch(name, start, values, member=member)
        if problem is not None:
            raise StoreError(f"store {self.url!r}: {problem}")

    def mismatch(self, name: str, start: int, values: np.ndarray, *,
                 member: int | None = None) -> str | None:
        """What is wrong with the first chunk of `values` whose digest differs, or None."""
        if self.sub is None:
            return None
        got = digest_rows(self.key, name, member=member, start=start, values=values,
                          chunk_rows=self.chunk_rows)
        first = start // self.chunk_rows
        want = self._stored(name, member, first, len(got))
        bad = np.flatnonzero((got != want).any(axis=1))
        if not bad.size:
            return None
        chunk = first + int(bad[0])
        a = chunk * self.chunk_rows
        b = min(self.n, a + self.chunk_rows) - 1
        who = f"{name!r}" if member is None else f"{name!r} (member {member})"
        if not want[bad[0]].any():
            return (f"chunk {chunk} (rows {a}..{b}) of {who} has no digest: its write unit was "
                    "never finished or the digest was deleted; rerun stage 1 with --resume")
        return (f"chunk {chunk} (rows {a}..{b}) of {who} does not match its digest: the chunk "
                "was moved, swapped or duplicated, copied from another store, or edited; "
                "restore the store or rerun stage 1")


# --- input digests: each row chunk bound to the dataset rows it was computed from ------------

INPUT = "input"  # digests/input: (num_chunks, 16), the input digest of each chunk's dataset rows
INPUTS_KEY = "inputs"  # attributes["softtargets"]["digests"]["inputs"]: true when it exists


def add_input_digest_array(group: zarr.Group, *, n: int, chunk_rows: int,
                           unit_rows: int) -> zarr.Array:
    """`digests/input` of a store of n rows: one input digest per row chunk, chunked per write
    unit like the other digest arrays (the unit's writer writes it)."""
    return add_digest_array(group, INPUT, lead=(), n=n, chunk_rows=chunk_rows,
                            unit_rows=unit_rows)


def input_rows(chunk: int, *, chunk_rows: int, n: int, per_sample: int = 1) -> slice:
    """The dataset rows of row chunk `chunk`: store row r holds dataset row r // per_sample
    (per_sample = L for rows of L positions per sample)."""
    a = chunk * chunk_rows
    b = min(n, a + chunk_rows)
    return slice(a // per_sample, -(-b // per_sample))


def input_digests(dataset: Any, chunks: range, *, chunk_rows: int, n: int,
                  per_sample: int = 1) -> np.ndarray:
    """(len(chunks), 16) uint8: the input digest of each chunk's dataset rows."""
    from softtargets.datasets.digest import unit_input_digest
    out = np.empty((len(chunks), DIGEST_BYTES), np.uint8)
    for j, chunk in enumerate(chunks):
        rows = input_rows(chunk, chunk_rows=chunk_rows, n=n, per_sample=per_sample)
        out[j] = np.frombuffer(unit_input_digest(dataset, rows), np.uint8)
    return out


def per_sample_rows(meta: Any) -> int:
    """Store rows per dataset row: L for a per-position store (rows (sample, position)), else 1."""
    sparse = meta.extra.get("sparse") or {}
    if not sparse.get("position"):
        return 1
    samples = int(meta.dataset["n"])
    return max(1, int(meta.n) // samples)


class InputCheck:
    """Checks that a dataset holds the rows a store's teacher saw, one row chunk at a time.

    A store written from a softtargets dataset records in `digests/input` the input digest
    (softtargets.datasets.digest) of each chunk's dataset rows; `check(chunk, dataset)`
    recomputes it from `dataset` and refuses a difference, naming the chunk and its rows.
    """

    def __init__(self, group: zarr.Group, meta: Any, url: str) -> None:
        self.url = url
        self.chunk_rows, self.n = int(meta.chunk_rows), int(meta.n)
        self.num_chunks = math.ceil(self.n / self.chunk_rows)
        self.per_sample = per_sample_rows(meta)
        self.declared = bool((meta.extra.get(META_KEY) or {}).get(INPUTS_KEY))
        self._group = group
        self._stored: np.ndarray | None = None

    def stored(self) -> np.ndarray:
        """The recorded digests (num_chunks, 16), read once."""
        if self._stored is None:
            sub = _digest_arrays(self._group)
            if sub is None or INPUT not in sub:
                raise StoreError(f"store {self.url!r}: its metadata declares input digests but "
                                 f"'{DIGESTS}/{INPUT}' is missing; the store was damaged or "
                                 "stripped")
            try:
                self._stored = _read_whole(sub[INPUT])
            except Exception as e:  # a damaged digest object fails its crc32c
                raise StoreError(f"store {self.url!r}: the input digests cannot be decoded: "
                                 f"{e}") from e
        return self._stored

    def check(self, chunk: int, dataset: Any) -> None:
        """Refuse (StoreMismatchError) when `dataset`'s rows of chunk `chunk` differ from those
        the store was computed on."""
        rows = input_rows(chunk, chunk_rows=self.chunk_rows, n=self.n, per_sample=self.per_sample)
        where = f"chunk {chunk} (dataset rows {rows.start}..{rows.stop - 1})"
        if rows.stop > len(dataset):
            raise StoreMismatchError(f"store {self.url!r}: {where} lies beyond the {len(dataset)} "
                                     "rows of the student's data; pass the data the store was "
                                     "written from")
        want = self.stored()[chunk]
        if not want.any():
            raise StoreError(f"store {self.url!r}: {where} has no input digest: its write unit "
                             "was never finished or the digest was deleted; rerun stage 1")
        got = input_digests(dataset, range(chunk, chunk + 1), chunk_rows=self.chunk_rows,
                            n=self.n, per_sample=self.per_sample)[0]
        if not np.array_equal(got, want):
            raise StoreMismatchError(
                f"store {self.url!r}: {where} does not match the student's data: the student's "
                "data differs from the rows the teacher saw (inputs, labels or sample ids); pass "
                "the data the store was written from, or rewrite the store from this data")

    def check_all(self, dataset: Any) -> None:
        """Check every chunk (one pass over the dataset)."""
        for chunk in range(self.num_chunks):
            self.check(chunk, dataset)
