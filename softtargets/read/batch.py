"""Target batch types of the read API and the collate function that stacks them.

A target is one sample's (no batch axis) or a batch's (leading B). Three types, all frozen
dataclasses of torch tensors with `.to(device)`:

* `DenseTarget`: the full distribution over C classes at temperature T, as the store's raw
  logits (one teacher) or as log-probabilities (an ensemble's combination at T).
* `distill.SparseTargets`: top-k or sampled targets at T (one row per sample).
* `PositionTargets`: per-position sparse targets of sequences, leading (B, L).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch.utils.data import default_collate

from softtargets.read.distill import SparseTargets, map_tensors
from softtargets.errors import ConfigError
from softtargets.read.ship import ship


@dataclasses.dataclass(frozen=True)
class DenseTarget:
    """The teacher distribution over all C classes at `temperature`.

    Exactly one of: logits (B, C) float16, the store's raw teacher logits (the target is
    softmax(logits / T)); log_probs (B, C) float32, log p at T (ensembles combined at T).
    """

    temperature: float
    logits: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.logits is None) == (self.log_probs is None):
            raise ConfigError("a DenseTarget holds either logits or log_probs, exactly one")

    def __getitem__(self, idx: Any) -> DenseTarget:
        return map_tensors(self, lambda t: t[idx])

    def to(self, device: torch.device | str) -> DenseTarget:
        """The same target on `device`."""
        return map_tensors(self, lambda t: t.to(device))


@dataclasses.dataclass(frozen=True)
class PositionTargets:
    """Sparse targets of every position of sequences: `sparse` has fields of leading shape
    (B, L) (ids (B, L, K), tail (B, L), ...), or (L, ...) for one sequence; position p of
    sequence b is the teacher's prediction of the token after input position p."""

    sparse: SparseTargets

    @property
    def kind(self) -> str:
        return self.sparse.kind

    @property
    def temperature(self) -> float | None:
        return self.sparse.temperature

    def __getitem__(self, idx: Any) -> PositionTargets:
        return map_tensors(self, lambda t: t[idx])

    def to(self, device: torch.device | str) -> PositionTargets:
        """The same targets on `device`."""
        return map_tensors(self, lambda t: t.to(device))

    def flat(self) -> SparseTargets:
        """The (B * L) positions as one batch of sparse targets, sequence by sequence."""
        lead = self.sparse.ids.shape[:-1]  # (B, L)
        return map_tensors(self.sparse, lambda t: t.reshape(-1, *t.shape[len(lead):]))


Target = Union[DenseTarget, SparseTargets, PositionTargets]
TARGET_TYPES = (DenseTarget, SparseTargets, PositionTargets)


def stack_targets(targets: Sequence[Target]) -> Target:
    """One batch target from per-sample targets of one type: tensors stacked on a new axis 0."""
    first = targets[0]
    if not isinstance(first, TARGET_TYPES) or any(type(t) is not type(first) for t in targets):
        names = sorted({type(t).__name__ for t in targets})
        raise ConfigError(f"cannot stack targets of types {names}; a batch takes targets of "
                          "one SoftTargets")
    return _stack(list(targets))


def _stack(items: list[Any]) -> Any:
    changes = {}
    for field in dataclasses.fields(items[0]):
        values = [getattr(t, field.name) for t in items]
        if isinstance(values[0], torch.Tensor):
            changes[field.name] = torch.stack(values)
        elif dataclasses.is_dataclass(values[0]):
            changes[field.name] = _stack(values)
        elif any(v != values[0] for v in values):
            raise ConfigError(f"cannot stack targets with different {field.name} "
                              f"{sorted(set(map(str, values)))}; a batch takes targets of one "
                              "SoftTargets")
    return dataclasses.replace(items[0], **changes)


class Collated(Sequence):
    """A batch DistillDataset fetched at once, seen as its B items (input, label, target) by
    any collate_fn; `collate` returns `batch` directly."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, target: Target) -> None:
        self.batch = (x, y, target)

    def __len__(self) -> int:
        return len(self.batch[1])

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        x, y, target = self.batch
        return x[i], y[i], target[i]


def collate(items: Sequence[tuple[Any, Any, Target]]) -> tuple[Any, Any, Target]:
    """DataLoader collate_fn for (input, label, target) samples: (inputs (B, ...), labels (B,)
    or (B, L), a batch target). Inputs and labels are collated as torch's default does; a
    batch DistillDataset fetched at once (Collated) is returned as it is."""
    if isinstance(items, Collated):  # a DataLoader worker sends it through its ring
        return ship(items.batch)
    inputs, labels = default_collate([(_writable(x), y) for x, y, _ in items])
    return inputs, labels, stack_targets([t for _, _, t in items])


def _writable(x: Any) -> Any:
    """A read-only numpy row (e.g. of a memory-mapped split) copied: torch warns on wrapping
    non-writable arrays, and the batch is a copy anyway."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        return x.copy()
    return x
