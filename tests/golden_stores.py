"""Tiny stores of every kind, written from fixed logits, whose bytes are committed under
tests/fixtures/golden/ (tests/test_golden.py). Rerun only when the format changes on purpose:

    PYTHONPATH=. python tests/golden_stores.py tests/fixtures/golden
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from softtargets import LogitWriter, Sampled, TopK, Views, from_tensors

N, C, SEQ = 10, 5, 3  # rows, classes; positions per sequence of the per-position store
TEACHER = {"arch": "golden fixture", "checkpoint_sha256": "sha256:" + "1" * 64}


def dataset() -> Any:
    """Ten 2x2 inputs with fixed labels: the dataset every golden store is bound to."""
    inputs = np.arange(N * 4, dtype=np.float32).reshape(N, 2, 2)
    return from_tensors(inputs, np.arange(N) % C, num_classes=C, name="golden",
                        dataset_id="golden-v1")


def logits(*shape: int) -> np.ndarray:
    """Fixed teacher logits of `shape`, seeded."""
    return (np.random.default_rng(0).normal(0, 3, size=shape)).astype(np.float32)


def _write(store: Path, *, values: np.ndarray, batch: int = 3, **options: Any) -> None:
    with LogitWriter(str(store), teacher=options.pop("teacher", TEACHER), **options) as w:
        for a in range(0, len(values), batch):  # batches cross chunk boundaries on purpose
            w.append(np.arange(a, min(a + batch, len(values))), values[a:a + batch])


KINDS: dict[str, Callable[[Path], None]] = {
    "dense": lambda p: _write(p, values=logits(N, C), dataset=dataset(), chunk_rows=4),
    "sharded": lambda p: _write(p, values=logits(N, C), dataset=dataset(), chunk_rows=2,
                                shard_rows=4),
    "ensemble": lambda p: _write(p, values=logits(N, 3, C), dataset=dataset(), chunk_rows=4,
                                 members=3, teacher=[TEACHER] * 3),
    "topk": lambda p: _write(p, values=logits(N, C), dataset=dataset(), chunk_rows=4,
                             targets=TopK(2, temperatures=(1.0, 4.0))),
    "sampled": lambda p: _write(p, values=logits(N, C), dataset=dataset(), chunk_rows=4,
                                targets=Sampled(3, temperature=2.0, seed=7)),
    "views": lambda p: _write(p, values=logits(N, 2, C), dataset=dataset(), chunk_rows=4,
                              views=Views(count=2, augment="shift=1,flip=1", seed=3)),
    "position": lambda p: _write(p, values=logits(4, SEQ, C), n=4, num_classes=C,
                                 positions=SEQ, chunk_rows=6, targets=TopK(2)),
}


def write_all(out: Path) -> None:
    """Write every golden store under `out` (one <kind>.zarr each)."""
    for kind, write in KINDS.items():
        write(out / f"{kind}.zarr")


if __name__ == "__main__":
    write_all(Path(sys.argv[1]))
