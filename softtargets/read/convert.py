"""From streamed numpy rows to what StreamingDistillDataset yields: the dataset rows of sample
ids, the inputs and labels of a batch, and the batch target of each store kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from softtargets.format import sparse as sp
from softtargets.datasets.base import BaseDataset, as_numpy
from softtargets.read.distill import SparseTargets, map_tensors
from softtargets.errors import DatasetError
from softtargets.read.batch import DenseTarget, PositionTargets, Target
from softtargets.read.units import ENSEMBLE_KIND, SPARSE_KIND, UnitSpec


class RowIndex:
    """Dataset rows of sample ids: row i has sample id ids[i] (0..N-1 needs no memory)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.identity = bool(np.array_equal(ids, np.arange(len(ids))))
        self.size = len(ids)
        if not self.identity:
            self.order = np.argsort(ids, kind="stable")  # (N,)
            self.sorted = ids[self.order]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Rows (B,) of sample ids (B,) the dataset has."""
        if self.identity:
            return ids
        return self.order[np.searchsorted(self.sorted, ids)]

    def checked(self, ids: np.ndarray, *, name: str) -> np.ndarray:
        """Rows (B,) of sample ids (B,) of mixed views' partners, refusing ids the dataset
        lacks."""
        ids = np.asarray(ids, dtype=np.int64)
        known = np.arange(self.size) if self.identity else self.sorted
        bad = ids[~np.isin(ids, known)]
        if bad.size:
            raise DatasetError(f"mixed views' partner sample ids {bad[:5].tolist()} are not in "
                               f"dataset {name}; replay the store with the dataset it was "
                               "written from")
        return self(ids)

    def subset(self, chosen: np.ndarray, *, name: str) -> np.ndarray:
        """`chosen` (S,) as int64 sample ids, refusing ids the dataset does not have."""
        if chosen.ndim != 1 or (chosen.size and chosen.dtype.kind not in "iu"):
            raise DatasetError(f"sample_ids must be a 1-d sequence of integer sample ids of "
                               f"dataset {name}, got shape {chosen.shape} and dtype "
                               f"{chosen.dtype}")
        chosen = chosen.astype(np.int64)
        known = np.arange(self.size) if self.identity else self.sorted
        bad = chosen[~np.isin(chosen, known)]
        if bad.size:
            raise DatasetError(f"sample_ids {bad[:5].tolist()} are not sample ids of dataset "
                               f"{name}; choose among its {self.size} sample ids")
        return np.unique(chosen)


def fetch(dataset: Any, rows: np.ndarray) -> tuple[Any, Any]:
    """(inputs (B, ...), labels (B,) or (B, L)) of dataset rows (B,): one `take` of a
    softtargets dataset, else one `dataset[i]` per row collated as torch's default_collate."""
    if isinstance(dataset, BaseDataset):
        x, y = dataset.take(rows)
        return np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.int64)
    items = []
    for row in rows.tolist():
        item = dataset[row]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DatasetError(f"row {row} of {type(dataset).__name__} is a "
                               f"{type(item).__name__}, not an (input, label) pair")
        items.append((item[0], item[1]))
    return default_collate(items)


def sequence_length(dataset: Any) -> int | None:
    """L of a dataset of sequences: its `positions`, else its first label's length."""
    length = getattr(dataset, "positions", None)
    if length is None and len(dataset):
        item = dataset[0]
        label = as_numpy(item[1]) if isinstance(item, (tuple, list)) and len(item) > 1 else None
        length = label.shape[0] if label is not None and label.ndim == 1 else None
    return length


def make_target(units: UnitSpec, convert: Callable[[sp.SparseRows], SparseTargets] | None,
                arrays: list[np.ndarray]) -> Target:
    """The batch target of a streamed batch's arrays (leading B) of `units`' kind."""
    if units.kind != SPARSE_KIND:  # raw logits (B, C) float16, or log-probs (B, C) at T
        values = torch.from_numpy(arrays[0])
        if units.kind == ENSEMBLE_KIND:
            return DenseTarget(units.temperature, log_probs=values)
        return DenseTarget(units.temperature, logits=values)
    lead = arrays[0].shape[:-1]  # (B,), or (B, L) for sequences
    flat = [a.reshape(-1, *a.shape[len(lead):]) for a in arrays]  # (B * L, ...)
    counts = flat[2] if len(flat) == 5 else None  # ids, logits, [counts], lse, tail
    rows = sp.SparseRows(ids=flat[0], logits=flat[1], counts=counts, lse=flat[-2],
                         tail=flat[-1])
    targets = convert(rows)  # type: ignore[misc]
    if len(lead) == 1:
        return targets
    return PositionTargets(map_tensors(targets, lambda t: t.reshape(*lead, *t.shape[1:])))
