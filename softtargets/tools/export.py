"""export_topk: a top-k store's rows as top-k log-prob records (docs/LM.md). numpy only.

    count = export_topk("teacher.zarr", "records.jsonl")          # or records.npz

Each record is one sample: per position its k token ids and their exact log-probabilities at
a stored temperature (docs/FORMAT.md, "Sparse stores"). Chunks are read, checked and digested
one at a time; a per-position store must hold each sequence whole, row r at position r % L.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.atomic import replacing
from softtargets.errors import ForeignDataError, SparseStoreError, StoreError, StoreExistsError
from softtargets.format import records as rec
from softtargets.format import sparse as sp
from softtargets.format.sparse_store import SparseStore

WRITERS = {".jsonl": rec.write_jsonl, ".npz": rec.write_npz}


def _positions(s: SparseStore) -> int | None:
    """L of a per-position store (its rows per sample), None for one row per sample."""
    if not s.spec.position:
        return None
    ident = s.meta.dataset
    L = ident.get("seq_len") or (s.meta.n // ident["n"] if s.meta.n % ident["n"] == 0 else None)
    if not isinstance(L, int) or L < 1 or s.meta.n % L:
        raise SparseStoreError(f"store {s.url!r}: cannot tell its positions per sequence from "
                               f"{s.meta.n} rows and dataset {ident}; export needs whole "
                               "sequences")
    return L


def _destination(out: Path, overwrite: bool) -> None:
    if out.suffix not in WRITERS:
        raise StoreError(f"records file {str(out)!r} must end in .jsonl or .npz")
    if not out.exists():
        return
    if not overwrite:
        raise StoreExistsError(f"{str(out)!r} exists; pass overwrite=True (--overwrite) to "
                               "replace it")
    if not out.is_file() or not rec.is_records_file(out):
        raise ForeignDataError(f"{str(out)!r} is not a records file softtargets wrote; it is "
                               "never replaced: choose another path")


def _sequences(s: SparseStore, L: int | None, temperature: float,
               dataset: Any) -> Iterator[rec.RecordBatch]:
    """Record batches of whole sequences, chunk by chunk (a sequence may span chunks)."""
    per = L or 1
    carry: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (ids, tokens, logprobs)
    first, row = 0, 0
    for i in range(s.num_chunks):
        sample_ids, positions, rows = s.read_chunk(i)
        lp = sp.listed_log_probs(rows, temperatures=s.spec.temperatures,
                                 temperature=temperature)  # (R, k) float64
        if positions is not None:
            want = (np.arange(row, row + len(sample_ids)) % per)
            bad = np.flatnonzero(positions != want)
            if len(bad):
                r = int(bad[0])
                raise SparseStoreError(f"store {s.url!r}: row {row + r} holds position "
                                       f"{positions[r]}, export needs row r at position r % {per} "
                                       "(whole sequences in position order)")
        row += len(sample_ids)
        carry.append((sample_ids, rows.ids, lp))
        ids, tok, lps = (np.concatenate([c[j] for c in carry]) for j in range(3))
        whole = len(ids) - len(ids) % per
        carry = [(ids[whole:], tok[whole:], lps[whole:])]
        if whole:
            yield _batch(s, first, ids[:whole], tok[:whole], lps[:whole], per, dataset)
            first += whole // per


def _batch(s: SparseStore, first: int, ids: np.ndarray, tok: np.ndarray, lp: np.ndarray,
           per: int, dataset: Any) -> rec.RecordBatch:
    B, k = len(ids) // per, tok.shape[1]
    seq = ids.reshape(B, per)
    split = np.flatnonzero((seq != seq[:, :1]).any(axis=1))
    if len(split):
        r = (first + int(split[0])) * per
        raise SparseStoreError(f"store {s.url!r}: rows {r}..{r + per - 1} belong to several "
                               "samples; export needs each sequence's rows together")
    inputs = None
    if dataset is not None:
        order = np.argsort(dataset.sample_ids)
        where = order[np.searchsorted(dataset.sample_ids[order], seq[:, 0])]
        inputs = dataset.take(where)[0].reshape(B, per).astype(np.int64)
    return rec.RecordBatch(first=first, sample_ids=seq[:, 0].astype(np.int64),
                           token_ids=tok.reshape(B, per, k), logprobs=lp.reshape(B, per, k),
                           input_ids=inputs)


def export_topk(store: str, out: str | Path, *, temperature: float = 1.0,
                dataset: Any = None, overwrite: bool = False) -> int:
    """Write the rows of top-k store `store` as records to `out` (.jsonl or .npz); the number
    of records. Log-probs are the exact log p_T of the listed tokens at `temperature` (one the
    store holds the tail mass at). `dataset`: the store's data (checked against its identity);
    its input tokens are written as `input_ids`. `overwrite` replaces only a records file."""
    s = SparseStore.open(str(store))
    if s.meta.kind != "topk":
        raise SparseStoreError(f"store {str(store)!r} is a {s.meta.kind!r} store; records hold "
                               "top-k rows: export a 'topk' store")
    sp.temperature_index(s.spec.temperatures, temperature, purpose="exported log-probs")
    if dataset is not None:
        s.check_dataset(dataset.identity())
    L = _positions(s)
    out = Path(out)
    _destination(out, overwrite)
    header = rec.RecordsHeader(temperature=float(temperature), k=s.spec.k,
                               vocab_size=s.meta.num_classes, positions=L,
                               records=s.meta.n // (L or 1),
                               source={"store": str(store), "teacher": s.meta.teacher,
                                       "dataset": s.meta.dataset})
    with replacing(out) as partial:  # a crash leaves no half-written records file at `out`
        return WRITERS[out.suffix](partial, header, _sequences(s, L, temperature, dataset))
