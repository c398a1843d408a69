"""Input digests: one 16-byte hash of the sample ids, inputs and labels of a run of rows.

Stage 1 records one digest per write unit as it reads the unit; stage 2 recomputes the digest of
each unit it reads from its own data and refuses a store whose rows differ, naming the unit. So
alignment needs neither the whole dataset in memory nor a pass over it before training.

Recipe (docs/DATASETS.md): xxh3-128 (seed 0, canonical big-endian digest) of

    b"softtargets.input-digest/v1\\n" + b"{R}\\n" + row_0 + ... + row_{R-1}

for R rows, where each row is the ASCII line `"{dtype} {input shape} {label shape}\\n"` (numpy's
little-endian dtype string such as `|u1` or `<f4`; shapes joined by `x`, empty for a scalar),
then the sample id as little-endian int64, the input's values in C order, little endian, and
the label(s) as little-endian int64. Every row carries its own header, so the digest does not
depend on how the rows were batched when they were read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xxhash

from softtargets.datasets.base import BaseDataset, as_numpy, row_range
from softtargets.errors import DatasetError

PREFIX = b"softtargets.input-digest/v1\n"
ALGORITHM = "xxh3-128"
DIGEST_BYTES = 16
BATCH_BYTES = 8 << 20  # rows hashed per read: bounds the memory of a unit's digest


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _little(x: np.ndarray) -> np.ndarray:
    """x, C-contiguous and little endian: the bytes the digest is of."""
    if x.dtype.hasobject:
        raise DatasetError(f"input digest: inputs of dtype {x.dtype} have no canonical bytes; "
                           "return numeric numpy arrays or tensors from the dataset")
    if x.dtype.byteorder == ">":
        x = x.astype(x.dtype.newbyteorder("<"))
    return np.ascontiguousarray(x)


def row_bytes(ids: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """uint8 (R, row size): the canonical bytes of R rows, built without a loop over rows."""
    r = len(ids)
    if inputs.shape[0] != r or labels.shape[0] != r:
        raise DatasetError(f"input digest: {r} sample ids but {inputs.shape[0]} inputs and "
                           f"{labels.shape[0]} labels")
    x = _little(inputs)
    header = f"{x.dtype.str} {_shape(x.shape[1:])} {_shape(labels.shape[1:])}\n".encode()
    head = np.frombuffer(header, np.uint8)
    per_row = math.prod(x.shape[1:])
    parts = [np.broadcast_to(head, (r, head.size)),
             np.ascontiguousarray(ids, dtype="<i8").reshape(r, 1).view(np.uint8),
             x.reshape(r, per_row).view(np.uint8),
             np.ascontiguousarray(labels, dtype="<i8").reshape(r, -1 if r else 0).view(np.uint8)]
    return np.concatenate(parts, axis=1)


class InputDigest:
    """Incremental digest of one unit of `rows` rows, fed batch by batch in row order.

    Stage 1 feeds the batches it reads anyway; the result equals unit_input_digest of the unit.
    """

    def __init__(self, rows: int) -> None:
        self._hash = xxhash.xxh3_128(PREFIX + f"{rows}\n".encode())
        self.rows = rows
        self._seen = 0

    def update(self, ids: Any, inputs: Any, labels: Any) -> None:
        """Add the next rows: ids (R,), inputs (R, ...), labels (R,) or (R, L)."""
        ids, inputs, labels = as_numpy(ids), as_numpy(inputs), as_numpy(labels)
        if self._seen + len(ids) > self.rows:
            raise DatasetError(f"input digest: got {self._seen + len(ids)} rows for a unit of "
                               f"{self.rows}")
        self._hash.update(row_bytes(ids, inputs, labels))
        self._seen += len(ids)

    def digest(self) -> bytes:
        """The 16-byte digest; every row of the unit must have been added."""
        if self._seen != self.rows:
            raise DatasetError(f"input digest: a unit of {self.rows} rows got {self._seen}")
        return self._hash.digest()


def _batch_rows(dataset: BaseDataset, start: int, stop: int) -> int:
    """Rows per read so that one read holds about BATCH_BYTES of inputs."""
    if stop <= start:
        return 1
    probe = dataset.inputs(slice(start, start + 1))
    return max(1, BATCH_BYTES // max(1, probe.nbytes))


def unit_input_digest(dataset: BaseDataset, rows: slice, *,
                      batch_rows: int | None = None) -> bytes:
    """16-byte xxh3-128 digest of the sample ids, inputs and labels of `rows` of `dataset`,
    read `batch_rows` rows at a time (the digest does not depend on it)."""
    if not isinstance(dataset, BaseDataset):
        raise DatasetError(f"input digest needs a softtargets dataset, got "
                           f"{type(dataset).__name__}; wrap it with "
                           "softtargets.datasets.wrap(dataset, num_classes=C)")
    start, stop = row_range(rows, len(dataset), name=dataset.name)
    step = batch_rows or _batch_rows(dataset, start, stop)
    if step < 1:
        raise DatasetError(f"input digest: batch_rows must be >= 1, got {batch_rows}")
    h = InputDigest(stop - start)
    for a in range(start, stop, step):
        sl = slice(a, min(stop, a + step))
        h.update(dataset.ids(sl), *dataset.read(sl))
    return h.digest()


def fingerprint(dataset: BaseDataset) -> str:
    """"xxh3-128:<hex>": the input digest of every row, for data that is already in memory."""
    return f"{ALGORITHM}:" + unit_input_digest(dataset, slice(None)).hex()
