"""Encoding of store arrays: spec codec chains, chunk sizing, the checked float16 cast.

numpy and zarr only (store.py re-exports these names for existing callers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from softtargets.errors import LogitValueError, StoreError

FP16_MAX = 65504.0
TARGET_CHUNK_BYTES = 2 * 1024 * 1024  # 1-4 MiB chunks read near raw codec speed
COMPRESSORS = ("zstd", "blosc", "none")
# The compressor of a dense store unless one is asked for, by measurement (scripts/
# bench_codecs.py, docs/SCALE.md "Codecs"): zstd keeps 0.79-0.92 of the bytes of fp16 logits and
# reads 2-4x slower than crc32c alone, which only pays off on storage slower than ~0.3 GB/s.
DENSE_COMPRESSOR = "none"


def balanced_rows(n: int, cap: int, multiple: int = 1) -> int:
    """Rows per chunk for n rows: at most `cap` (rounded down to `multiple`, at least one
    multiple), as few chunks as that allows, and the rows spread evenly over them.

    Zarr stores an edge chunk at the full chunk shape, so a last chunk of a few rows would pad
    the store with fill values (1,049 rows in chunks of 1,048: two full chunks, 2.0x raw); even
    chunks pad by fewer than `multiple` rows per chunk."""
    cap = max(multiple, cap - cap % multiple)
    chunks = -(-n // cap)
    per_chunk = -(-n // max(1, chunks))
    return max(multiple, -(-per_chunk // multiple) * multiple)


def default_chunk_rows(n: int, num_classes: int) -> int:
    """Rows per chunk so that a chunk of float16 logits is at most about TARGET_CHUNK_BYTES,
    the rows spread evenly over the chunks (balanced_rows)."""
    return balanced_rows(n, max(1, TARGET_CHUNK_BYTES // (2 * num_classes)))


def compressor_codecs(name: str) -> list[Any]:
    """Spec codecs only (portable to tensorstore/zarrs); crc32c last so every chunk is checksummed."""
    if name == "zstd":
        return [ZstdCodec(level=3), Crc32cCodec()]
    if name == "blosc":
        return [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=2), Crc32cCodec()]
    if name == "none":
        return [Crc32cCodec()]
    raise StoreError(f"unknown compressor {name!r}; allowed: {list(COMPRESSORS)}")


def codec_chain(compressors: list[Any]) -> list[dict[str, Any]]:
    """The Zarr v3 codec list (as JSON) of an array with these compressors."""
    return [{"name": "bytes", "configuration": {"endian": "little"}},
            *(c.to_dict() for c in compressors)]


def to_float16(logits: np.ndarray, *, first_row: int = 0,
               row_ids: np.ndarray | None = None) -> np.ndarray:
    """Cast logits (rows, ..., C) to float16, refusing non-finite values and values beyond
    float16's range; the error names rows first_row.., or their sample ids when `row_ids`."""
    x = np.asarray(logits)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=-1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5]
        where = (f"rows {(rows + first_row).tolist()}" if row_ids is None
                 else f"sample ids {np.asarray(row_ids)[rows].tolist()}")
        raise LogitValueError(f"teacher produced non-finite logits (NaN/Inf) at {where}; check "
                              "the teacher checkpoint and its input preprocessing")
    big = np.abs(x).max(initial=0.0)
    if big > FP16_MAX:
        row = int(np.unravel_index(np.abs(x).argmax(), x.shape)[0])
        where = f"row {row + first_row}" if row_ids is None else \
            f"sample id {np.asarray(row_ids)[row]}"
        raise LogitValueError(f"logit magnitude {float(big):.4g} at {where} overflows float16 "
                              f"(max {FP16_MAX}); the teacher's logits are out of range for the "
                              "store (subtract the per-row max or rescale the teacher)")
    return x.astype(np.float16)
