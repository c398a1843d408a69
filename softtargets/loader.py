"""Stage 2 data: join a dataset split with a logit store through sample_id.

The teacher is never in memory here: only its stored logits are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from softtargets.data import Split
from softtargets.distill import SparseTargets, sparse_targets
from softtargets.errors import StoreMismatchError
from softtargets.sparse_store import SparseStore
from softtargets.store import LogitStore

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | SparseTargets | None]


class DistillData:
    """Rows of a split with their teacher logits, in seeded shuffled batches.

    images (R, H, W) uint8, labels (R,) int64, teacher (R, C) float16 or None for hard labels only.
    R is the number of rows the store covers (all of the split, or a subset by sample_id).
    """

    def __init__(self, split: Split, store: LogitStore | SparseStore | None = None, *,
                 rows: np.ndarray | None = None, temperature: float = 1.0,
                 tail: str = "rest") -> None:
        index = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
        teacher: torch.Tensor | SparseTargets | None = None
        if isinstance(store, SparseStore):
            # sparse stores: targets already at the student's T (temperature, tail only used here)
            index, teacher = sparse_aligned(split, store, rows=rows, temperature=temperature,
                                            tail=tail)
        elif store is not None:
            teacher_by_id = aligned_logits(split, store)  # (N, C), NaN where the store has no row
            covered = ~np.isnan(teacher_by_id[:, 0])
            if rows is None:
                index = np.flatnonzero(covered)
            elif not covered[index].all():
                missing = index[~covered[index]][:5].tolist()
                raise StoreMismatchError(f"store {store.url!r} has no logits for sample ids "
                                         f"{missing}; the transfer set must be inside the store")
            teacher = torch.from_numpy(teacher_by_id[index])
        self.index = index
        self.images = torch.from_numpy(split.images[index])
        self.labels = torch.from_numpy(split.labels[index].astype(np.int64))
        self.teacher = teacher

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, *, batch_size: int, epoch: int, seed: int) -> Iterator[Batch]:
        """Shuffled batches; the order depends only on (seed, epoch)."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self), generator=g)
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            t = self.teacher[idx] if isinstance(self.teacher, SparseTargets) else (
                None if self.teacher is None else self.teacher[idx].float())
            yield self.images[idx], self.labels[idx], t


def aligned_logits(split: Split, store: LogitStore) -> np.ndarray:
    """Teacher logits indexed by dataset row, (N, C) float16, NaN where the store has no row.

    Refuses a store of another dataset, split, size or class set.
    """
    store.check_dataset(split.identity())
    if tuple(store.meta.class_names) != tuple(split.class_names):
        raise StoreMismatchError(f"store {store.url!r} has classes {list(store.meta.class_names)} "
                                 f"but {split.name} has {list(split.class_names)}")
    ids, logits = store.read_all()
    # float16 logits; float32 log-probs from an ensemble view (issue 3, ensemble.EnsembleTargets)
    out = np.full((len(split), store.meta.num_classes), np.nan, dtype=logits.dtype)
    out[ids] = logits
    return out


def sparse_aligned(split: Split, store: SparseStore, *, rows: np.ndarray | None,
                   temperature: float, tail: str) -> tuple[np.ndarray, SparseTargets]:
    """Dataset rows (R,) and their sparse targets at T, joined through sample_id."""
    store.check_dataset(split.identity())
    if tuple(store.meta.class_names) != tuple(split.class_names):
        raise StoreMismatchError(f"store {store.url!r} has classes {list(store.meta.class_names)} "
                                 f"but {split.name} has {list(split.class_names)}")
    if store.spec.position:
        raise StoreMismatchError(f"store {store.url!r} has per-position rows (sequences); an "
                                 "image student needs one row per sample")
    ids, _, stored = store.read_all()
    targets = sparse_targets(stored, kind=store.meta.kind, temperatures=store.spec.temperatures,
                             temperature=temperature, tail=tail,
                             sample_temperature=store.spec.sample_temperature)
    where = np.full(len(split), -1, np.int64)  # dataset row -> store row
    where[ids] = np.arange(len(ids))
    index = np.sort(ids) if rows is None else np.asarray(rows, dtype=np.int64)
    if (where[index] < 0).any():
        missing = index[where[index] < 0][:5].tolist()
        raise StoreMismatchError(f"store {store.url!r} has no targets for sample ids {missing}; "
                                 "the transfer set must be inside the store")
    return index, targets[torch.from_numpy(where[index])]
