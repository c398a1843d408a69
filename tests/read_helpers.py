"""Small stores for the read API tests, written with the format's own writers."""

from __future__ import annotations

import numpy as np

from softtargets.format import sparse_store as ss
from softtargets.format.store import StoreWriter


def identity(n: int, name: str = "synthetic") -> dict:
    """A dataset identity for stores of synthetic values (no data behind them)."""
    return {"name": name, "split": "train", "n": n, "fingerprint": None}


def write_dense(url, *, ids: np.ndarray, logits: np.ndarray, dataset: dict,
                class_names=None, chunk_rows: int = 4) -> None:
    """A complete dense store whose row r holds sample id ids[r] with logits[r] (C,)."""
    names = class_names or [str(c) for c in range(logits.shape[1])]
    w = StoreWriter.create(str(url), n=len(ids), class_names=names, dataset=dataset,
                           teacher={"arch": "test"}, config={}, chunk_rows=chunk_rows)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=ids[sl], logits=logits[sl])
    w.finalize()


def write_positions(url, *, keys: np.ndarray, logits: np.ndarray, dataset: dict, k: int = 3,
                    temperatures=(2.0,), chunk_rows: int = 5) -> None:
    """A complete per-position top-k store: row r is (sequence keys[r, 0], position
    keys[r, 1]) with dense values logits[r] (C,) converted to top-k."""
    spec = ss.make_spec(kind="topk", k=k, num_classes=logits.shape[1],
                        temperatures=temperatures, position=True)
    w = ss.SparseWriter.create(str(url), spec=spec, n=len(keys), chunk_rows=chunk_rows,
                               class_names=[str(c) for c in range(logits.shape[1])],
                               dataset=dataset, teacher={"arch": "test"}, config={})
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=keys[sl, 0], positions=keys[sl, 1], logits=logits[sl])
    w.finalize()
