"""Checked chunk reads of a store: the decode path every streaming reader goes through.

`ChunkReader` reads whole chunks of a store's row arrays beside `sample_id`. A local store whose
codecs are the v1 spec chain is read with plain file reads and numcodecs (no zarr round trips);
anything else goes through zarr. Both verify crc32c, the row checks (`check_chunk`) and the
chunk digests; a chunk that fails names the store, the array and the chunk. numpy and zarr only.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from softtargets.errors import StoreError
from softtargets.format.sparse_store import open_any
from softtargets.format.store import LOGITS, SAMPLE_ID, chunk_slice

FP16_EXP = np.uint16(0x7C00)  # all-ones exponent: Inf or NaN


class ChunkReader:
    """Reads and checks whole chunks of a store; opened inside the process that uses it.

    A local store whose codecs are the v1 spec chain (bytes, zstd or blosc, crc32c) is read with
    plain file reads and numcodecs, which avoids zarr's per-chunk event-loop round trips; anything
    else goes through zarr. Both paths verify the crc32c checksum, the sample ids and finiteness.
    """

    def __init__(self, url: str, arrays: tuple[str, ...] = (LOGITS,)) -> None:
        self.store = open_any(url)  # any complete store: dense or sparse
        self.meta = self.store.meta
        self.url = url
        self.names = arrays
        # group[name] reads metadata from the store every time: look the arrays up once
        self._arrays = {SAMPLE_ID: self.store.group[SAMPLE_ID],
                        **{name: self.store.group[name] for name in arrays}}
        self._fast = {name: _numcodecs_chain(a) for name, a in self._arrays.items()}
        self._root = _local_root(self._arrays[SAMPLE_ID])

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.meta.n / self.meta.chunk_rows)

    @property
    def capacity(self) -> int:
        return self.meta.chunk_rows

    @property
    def layouts(self) -> list[tuple[tuple[int, ...], np.dtype]]:
        return [self.row_layout(name) for name in self.names]

    def row_layout(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(row shape, dtype) of row array `name`, e.g. ((C,), float16) for logits."""
        a = self._arrays[name]
        return tuple(a.shape[1:]), np.dtype(a.dtype)  # type: ignore[attr-defined]

    def unit_ids(self, index: int) -> np.ndarray:
        """Sample ids (rows,) of chunk `index`: decoded, in range and matching their digest."""
        sl = chunk_slice(self.meta, index)
        ids = np.empty(self.meta.chunk_rows, dtype=np.int64)
        if self._root is None or self._fast[SAMPLE_ID] is None:
            ids = read_rows(self._arrays[SAMPLE_ID], self.url, SAMPLE_ID, index, sl)
        else:
            self._decode_into(SAMPLE_ID, index, ids)
        ids = ids[:sl.stop - sl.start]
        check_chunk(self.url, self.meta.dataset["n"], sl, ids, np.empty((len(ids), 0), np.float16),
                    name=SAMPLE_ID, index=index)
        self.store.digests.check_rows(SAMPLE_ID, sl.start, ids)
        return ids

    def read_arrays(self, index: int) -> tuple[np.ndarray, ...]:
        """Sample ids (rows,) and each array of `self.names` (rows, *row_shape) of chunk
        `index`, checked, in new buffers."""
        ids = np.empty(self.meta.chunk_rows, dtype=np.int64)
        outs = [np.empty((self.meta.chunk_rows, *shape), dtype=dtype)
                for shape, dtype in self.layouts]
        rows = self.read_into(index, ids, *outs)
        return (ids[:rows], *(out[:rows] for out in outs))

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ids (rows,) int64 and logits (rows, C) float16 of chunk `index`, checked."""
        return self.read_arrays(index)[:2]  # type: ignore[return-value]

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
        decode_file(self._arrays[name], self._root, self._fast[name], self.url,  # type: ignore[arg-type]
                    name, index, chunk_slice(self.meta, index), out)


class FastArrays:
    """Whole chunks of a store's row arrays by name, decoded like ChunkReader's fast path
    (plain file read, crc32c and the codec into a new buffer) when the array is local, of
    the v1 codecs and chunked by rows only; through zarr otherwise. Arrays are looked up once
    (zarr reads an array's metadata on every group lookup)."""

    def __init__(self, group: Any, url: str) -> None:
        self.group, self.url = group, url
        self._arrays: dict[str, tuple[Any, list[numcodecs.abc.Codec] | None, Path | None]] = {}

    def read(self, name: str, index: int, sl: slice) -> np.ndarray:
        """Rows `sl` of chunk `index` of array `name`; damaged bytes raise StoreError."""
        if name not in self._arrays:
            array = self.group[name]
            whole = tuple(array.chunks[1:]) == tuple(array.shape[1:]) and array.shards is None
            self._arrays[name] = (array, _numcodecs_chain(array) if whole else None,
                                  _local_root(array))
        array, chain, root = self._arrays[name]
        if chain is None or root is None:
            return read_rows(array, self.url, name, index, sl)
        out = np.empty((array.chunks[0], *array.shape[1:]), dtype=array.dtype)
        decode_file(array, root, chain, self.url, name, index, sl, out)
        return out[:sl.stop - sl.start]


def decode_file(array: Any, root: Path, chain: list[numcodecs.abc.Codec], url: str, name: str,
                index: int, sl: slice, out: np.ndarray) -> None:
    """Decode the file of chunk `index` (rows `sl`) of local `array` into `out` (the whole
    chunk); a missing or damaged chunk raises StoreError naming the store, array and rows."""
    key = array.metadata.encode_chunk_key((index,) + (0,) * (out.ndim - 1))
    path = root / array.path / key
    where = chunk_label(index, sl, name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise StoreError(f"store {url!r}: {where} is missing ({key}); the chunk was "
                         "never written or was deleted") from e
    try:
        decode_chunk(chain, raw, out)
    except Exception as e:  # a bad checksum or a truncated chunk
        raise StoreError(f"store {url!r}: {where} cannot be decoded, the stored bytes "
                         f"are damaged: {e}") from e


def decode_chunk(chain: list[numcodecs.abc.Codec], raw: bytes, out: np.ndarray) -> None:
    """Decode the stored bytes of one chunk through `chain` (the array's codecs in store order)
    into `out` (contiguous, the chunk's shape); the crc32c step checks the checksum. Raises
    (numcodecs' error, or ValueError for a wrong size) when the bytes are damaged."""
    steps = list(reversed(chain))  # decode order
    for codec in steps[:-1]:
        raw = codec.decode(raw)
    last = steps[-1] if steps else None
    if isinstance(last, (numcodecs.Zstd, numcodecs.Blosc)):
        got = last.decode(raw, out=out)  # decompresses straight into `out`
        size = np.frombuffer(got, dtype=np.uint8).size
    else:
        raw = last.decode(raw) if last is not None else raw
        size = len(memoryview(raw).cast("B"))
        out.reshape(-1).view(np.uint8)[:size] = np.frombuffer(raw, dtype=np.uint8)
    if size != out.nbytes:
        raise ValueError(f"decoded {size} bytes, expected {out.nbytes}")


def read_whole(array: Any) -> np.ndarray:
    """Every value of a small array (a digest array: (..., chunks, 16)), each chunk checked
    like any other. On a local store with the v1 codecs the chunk files are read directly:
    zarr spends ~0.2 ms of event-loop work per chunk, 50x the read of a 16-byte digest, and a
    store has one digest object per chunk. A chunk never written reads as the fill value, as
    through zarr. Raises on damaged bytes."""
    chain, root = _numcodecs_chain(array), _local_root(array)
    if root is None or chain is None or array.shards is not None:
        return np.asarray(array[...])
    dtype = np.dtype(array.dtype).newbyteorder("<")  # the bytes codec's order (little)
    shape, chunks, folder = array.shape, array.chunks, root / array.path
    out = np.full(shape, array.fill_value, dtype=dtype)
    block = np.empty(chunks, dtype=dtype)  # edge chunks are stored whole too
    grid = [range(math.ceil(s / c)) for s, c in zip(shape, chunks)]
    for coords in itertools.product(*grid):
        try:
            raw = (folder / array.metadata.encode_chunk_key(coords)).read_bytes()
        except FileNotFoundError:
            continue  # never written: the fill value
        decode_chunk(chain, raw, block)
        where = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(coords, chunks, shape))
        out[where] = block[tuple(slice(0, w.stop - w.start) for w in where)]
    return out


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
    # exponent bits all ones <=> Inf or NaN: +Inf/NaN are the int16 values >= 0x7C00, -Inf/NaN
    # the uint16 values >= 0xFC00, so two max passes (no temporary) check every value
    # (np.isfinite on float16 is ~15x slower); rows are located only when something is wrong
    if ids.min(initial=0) >= 0 and ids.max(initial=0) < dataset_n and (
            not bits.size or (bits.view(np.int16).max() < FP16_EXP
                              and bits.max() < FP16_EXP | 0x8000)):
        return
    bad_ids = (ids < 0) | (ids >= dataset_n)
    bad_vals = (np.bitwise_and(bits, FP16_EXP) == FP16_EXP).any(axis=1)
    if bad_ids.any() or bad_vals.any():
        rows = (np.flatnonzero(bad_ids | bad_vals)[:5] + sl.start).tolist()
        raise StoreError(f"store {url!r}: {where}: rows {rows} are missing or invalid "
                         "(sample_id out of range or non-finite values); the chunk was never "
                         "written, was deleted or is damaged")
