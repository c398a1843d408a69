"""Which dataset sample each store row belongs to, and whether a written unit is intact.

Store row r holds dataset row r, or, for rows of L positions per sample (a per-position store),
dataset row r // L at position r % L. Its `sample_id` is the dataset's sample id of that row
(0..N-1 unless the dataset has its own keys). numpy and zarr only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from softtargets.format.digests import INPUT, DigestCheck, input_digests
from softtargets.errors import StoreError
from softtargets.format.schema import POSITION, SAMPLE_ID, row_arrays
from softtargets.format.store import RowWriter
from softtargets.tools.verify_chunks import rows_first
from softtargets.tools.verify_rules import RULES, context


@dataclasses.dataclass(frozen=True)
class RowMap:
    """Store rows of a dataset of `samples` rows (with `positions` = L rows per sample)."""

    samples: int
    positions: int | None = None
    keys: np.ndarray | None = None  # (samples,) int64 sample ids; None: 0..samples-1

    @property
    def per_sample(self) -> int:
        return self.positions or 1

    @property
    def n(self) -> int:
        """Rows of the store."""
        return self.samples * self.per_sample

    def ids(self, rows: slice) -> tuple[np.ndarray, np.ndarray | None]:
        """sample_id (R,) int64 and position (R,) int64 (None without positions) of store
        rows `rows`."""
        r = np.arange(rows.start, rows.stop, dtype=np.int64)
        sample = r // self.per_sample
        ids = sample if self.keys is None else self.keys[sample]
        return ids, (r % self.per_sample if self.positions else None)

    def dataset_rows(self, rows: slice) -> slice:
        """The dataset rows whose samples store rows `rows` belong to."""
        L = self.per_sample
        return slice(rows.start // L, -(-rows.stop // L))


def expected_ids(rowmap: RowMap | None, rows: slice) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample ids (and positions) store rows `rows` must hold."""
    if rowmap is None:
        return np.arange(rows.start, rows.stop, dtype=np.int64), None
    return rowmap.ids(rows)


def unit_ok(writer: RowWriter, index: int, rowmap: RowMap | None = None,
            inputs: Any = None) -> bool:
    """Whether unit `index` of every array of the store decodes (crc32c), passes its array's row
    rule (verify_rules), matches its chunk digests and holds the expected sample ids (and
    positions); with `inputs` (the dataset), also its recorded input digests."""
    sl = writer.unit_slice(index)
    meta = writer.meta.to_json()
    check = DigestCheck(writer.group, writer.meta, "", cache=False)  # other ranks still write
    try:
        chunk = {}
        for spec in row_arrays(meta):
            data = rows_first(writer.group[spec.name], spec, sl)
            chunk[spec.name] = data
            members = range(spec.members) if spec.row_axis else [None]
            for m in members:
                check.check_rows(spec.name, sl.start, data if m is None else data[:, m], member=m)
    except Exception:  # a damaged, misplaced or unfinished unit: rewrite it
        return False
    ctx = context(meta)
    for spec in row_arrays(meta):
        if any(bad.any() for _, bad, _ in RULES[spec.rule](chunk[spec.name], chunk, ctx)):
            return False
    ids, positions = expected_ids(rowmap, sl)
    if not np.array_equal(chunk[SAMPLE_ID], ids):
        return False
    if positions is not None and not np.array_equal(chunk.get(POSITION), positions):
        return False
    return inputs is None or _inputs_ok(writer, index, rowmap, inputs)


def _inputs_ok(writer: RowWriter, index: int, rowmap: RowMap | None, dataset: Any) -> bool:
    """The unit's recorded input digests are those of `dataset`'s rows now (else the unit is
    recomputed from the data as it is)."""
    chunks = writer.unit_chunks(index)
    try:
        stored = np.asarray(writer.group["digests"][INPUT][chunks.start:chunks.stop])
    except Exception:
        return False
    got = input_digests(dataset, chunks, chunk_rows=writer.meta.chunk_rows, n=writer.meta.n,
                        per_sample=rowmap.per_sample if rowmap else 1)
    return bool(np.array_equal(stored, got))


def write_input_digests(writer: RowWriter, index: int, rowmap: RowMap | None,
                        dataset: Any) -> None:
    """Record the input digest of each chunk of unit `index` (before its data arrays)."""
    chunks = writer.unit_chunks(index)
    digests = input_digests(dataset, chunks, chunk_rows=writer.meta.chunk_rows, n=writer.meta.n,
                            per_sample=rowmap.per_sample if rowmap else 1)
    try:
        writer.group["digests"][INPUT][chunks.start:chunks.stop] = digests
    except KeyError:  # internal invariant: the session creates the array with the store
        raise StoreError(f"store has no 'digests/{INPUT}' array to record input digests "
                         "in") from None
