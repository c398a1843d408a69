"""Stage 2 data: join a dataset split with a logit store through sample_id.

The teacher is never in memory here: only its stored logits are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from softtargets.data import Split
from softtargets.errors import StoreMismatchError
from softtargets.store import LogitStore

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class DistillData:
    """Rows of a split with their teacher logits, in seeded shuffled batches.

    images (R, H, W) uint8, labels (R,) int64, teacher (R, C) float16 or None for hard labels only.
    R is the number of rows the store covers (all of the split, or a subset by sample_id).
    """

    def __init__(self, split: Split, store: LogitStore | None = None, *,
                 rows: np.ndarray | None = None) -> None:
        index = np.arange(len(split)) if rows is None else np.asarray(rows, dtype=np.int64)
        teacher = None
        if store is not None:
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
            t = None if self.teacher is None else self.teacher[idx].float()
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
