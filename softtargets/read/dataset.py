"""DistillDataset: the user's map-style dataset with each sample's soft target.

    data = DistillDataset(dataset, SoftTargets("teacher-logits.zarr", temperature=4.0))
    loader = DataLoader(data, batch_size=64, shuffle=True, num_workers=2,
                        collate_fn=DistillDataset.collate)
    for x, y, target in loader:
        loss = distillation_loss(student(x), target, y, temperature=4.0, alpha=0.9)

A torch `Dataset`: works with any sampler (DistributedSampler included) and with DataLoader
workers under fork and spawn (the targets pickle as their store URL and options).

Input digests: when the store records them (written from a softtargets dataset) and `dataset`
is a softtargets dataset, each row chunk is checked the first time one of its rows is read in a
process: the chunk's rows are read from `dataset` once more and their input digest compared, so
a student whose data differs from the rows the teacher saw is refused naming the chunk, without
a pass over the data before training. Each process (DataLoader worker) checks the chunks it
reads once (persistent_workers=True keeps that across epochs); `check_inputs()` checks every
chunk at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from softtargets.datasets.base import BaseDataset, as_numpy
from softtargets.format.digests import INPUTS_KEY, InputCheck
from softtargets.format.digests import META_KEY as DIGESTS_KEY
from softtargets.errors import ConfigError, DatasetError, StoreMismatchError
from softtargets.read.batch import Collated, Target, collate
from softtargets.read.convert import RowIndex, fetch
from softtargets.read.targets import SoftTargets
from softtargets.format.identity import check_dataset
from softtargets.format.store import StoreMeta, read_meta


class DistillDataset(Dataset):
    """Row i of `dataset` as (input, label, target): the user's sample and its soft target.

    dataset: anything from softtargets.datasets, or any map-style dataset (`len`, `ds[i] ->
    (input, label)`) whose row i has sample id i. sample_ids: only these sample ids of the
    dataset, in increasing order (default: all; item i is then the sample of the i-th of
    them). Refused in one line: a store computed on other data (when the dataset has an
    `identity()`), of another class count, or without a target for one of the sample ids.

    Targets of a views store read with view="replay": row i's input is rebuilt as the view
    sample i draws this epoch (read.replay; images (H, W) or (C, H, W) as stage 1 took them,
    float32) and its target is that view's. The view depends on (seed, epoch, sample id):
    call `set_epoch(epoch)` before each epoch (DataLoader workers receive the dataset anew
    each epoch; not with persistent_workers=True). Mixed views: the partner's input is read
    from `dataset` by its sample id, and the label is a lam-weighted (C,) float32 vector.
    """

    collate = staticmethod(collate)  # a Collated batch passes through unchanged

    def __init__(self, dataset: Any, targets: SoftTargets, *, sample_ids: Any = None,
                 seed: int = 0) -> None:
        if not isinstance(targets, SoftTargets):
            raise ConfigError(f"DistillDataset takes SoftTargets, got {type(targets).__name__}; "
                              "pass SoftTargets(store, temperature=...)")
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise DatasetError(f"DistillDataset needs a map-style dataset (__len__ and "
                               f"__getitem__), got {type(dataset).__name__}")
        self.dataset, self.targets = dataset, targets
        ids = sample_ids_of(dataset)
        self._rows: np.ndarray | None = None  # dataset row of each item; None: item i is row i
        if sample_ids is not None:
            index = RowIndex(ids)
            ids = index.subset(as_numpy(sample_ids), name=dataset_name(dataset))
            self._rows = index(ids)
        self.sample_ids = ids
        _check_pairing(dataset, targets, self.sample_ids)
        self.inputs = InputChecks(dataset, targets.url, targets.meta)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        self.replay, self.seed, self.epoch = targets.replay, int(seed), 0
        self._row_index: RowIndex | None = None  # mixed views: partners' rows, made when used

    def set_epoch(self, epoch: int) -> None:
        """Replay the views of epoch `epoch` next (views stores read with view="replay")."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
        self.epoch = int(epoch)

    def check_inputs(self, index: int | None = None) -> None:
        """Check the input digests of the chunks holding row `index` (None: every chunk) not
        checked yet in this process; refuses a difference naming the chunk."""
        self.inputs.check(None if index is None else np.array([index]))

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[Any, Any, Target]:
        row = index if self._rows is None else int(self._rows[index])
        if self.inputs.active:
            self.inputs.check(np.array([int(row) % len(self.dataset)]))
        item = self.dataset[row]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DatasetError(f"row {index} of {type(self.dataset).__name__} is a "
                               f"{type(item).__name__}, not an (input, label) pair")
        sample_id = int(self.sample_ids[index])
        target = self.targets[sample_id]
        if self.replay is None:
            return item[0], item[1], target
        v = int(self.replay.choose(np.array([sample_id]), seed=self.seed, epoch=self.epoch)[0])
        params = self.targets.view_params([sample_id])[:, v]  # (1, P)
        x, y = self.replay.rebuild(as_numpy(item[0])[None], np.array([item[1]]), params,
                                   fetch=self._partners)  # the view's input
        return x[0], (y[0] if self.replay.mix is not None else item[1]), target[v]

    def _partners(self, sample_ids: np.ndarray) -> tuple[Any, Any]:
        """(inputs, labels) of mixed views' partners by sample id (any row of the dataset,
        also outside a transfer subset)."""
        if self._row_index is None:
            self._row_index = RowIndex(sample_ids_of(self.dataset))
        return fetch(self.dataset, self._row_index.checked(sample_ids,
                                                           name=dataset_name(self.dataset)))

    def batch(self, indices: Any) -> tuple[Any, Any, Target]:
        """Items `indices` (B,) as one batch, as `collate` of the items gives it (inputs (B, ...),
        labels, a batch target), read at once: one `take` of a softtargets dataset and one
        gather of the targets instead of B items."""
        indices = np.asarray(indices, dtype=np.int64)
        rows = indices if self._rows is None else self._rows[indices]
        self.inputs.check(rows)
        x, y = fetch(self.dataset, rows)
        ids = self.sample_ids[indices]
        target = self.targets.batch(ids)
        if self.replay is None:
            return torch.as_tensor(x), torch.as_tensor(y), target
        views = self.replay.choose(ids, seed=self.seed, epoch=self.epoch)  # (B,)
        params = self.targets.view_params(ids)[np.arange(len(ids)), views]  # (B, P)
        x, y = self.replay.rebuild(as_numpy(x), as_numpy(y), params, fetch=self._partners)
        pick = (torch.arange(len(ids)), torch.as_tensor(views, dtype=torch.int64))
        return torch.as_tensor(x), torch.as_tensor(y), target[pick]  # (B, V, C) -> (B, C)

    def __getitems__(self, indices: Sequence[int]) -> Collated:
        """Rows `indices` at once (a DataLoader's fetcher calls this for each batch): one `take`
        of the dataset and one gather of the targets instead of one lookup and one stack per
        row, which cost ~25x the decode of the same rows. Returns the items as a sequence
        that DistillDataset.collate turns into the batch without a per-row step. A subclass
        that overrides __getitem__ gets its rows one by one, through it."""
        if type(self).__getitem__ is not DistillDataset.__getitem__:  # a subclass's own rows
            return [self[int(i)] for i in indices]  # type: ignore[return-value]
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)  # (B,)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            bad = rows[(rows < -len(self)) | (rows >= len(self))][:5].tolist()
            raise IndexError(f"rows {bad} are outside DistillDataset of {len(self)} rows")
        return Collated(*self.batch(rows % max(1, len(self))))


class InputChecks:
    """A store's input digests checked against the student's data, each row chunk once per
    process, when its rows are first read (no pass over the data before training).

    Active for a softtargets dataset and a store that records input digests. Pickled without
    its state: a DataLoader worker opens the store and checks the chunks it reads itself.
    """

    def __init__(self, dataset: Any, url: str, meta: Any) -> None:
        digests = meta.extra.get(DIGESTS_KEY) or {}
        self.active = isinstance(dataset, BaseDataset) and bool(digests.get(INPUTS_KEY))
        self.dataset, self.url = dataset, url
        self._check: InputCheck | None = None
        self._checked: set[int] = set()  # chunks checked in this process
        self._done = False  # every chunk checked: later reads skip the lookup

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_check": None, "_checked": set(), "_done": False}

    def _opened(self) -> InputCheck:
        if self._check is None:
            meta, group = read_meta(self.url)
            self._check = InputCheck(group, meta, self.url)
        return self._check

    def check(self, rows: np.ndarray | None) -> None:
        """Check the chunks holding dataset rows `rows` (None: every chunk) not checked yet."""
        if not self.active or self._done:
            return
        check = self._opened()
        if rows is None:
            chunks: Any = range(check.num_chunks)
        else:
            chunks = self._chunks_of(check, np.asarray(rows, dtype=np.int64))
        for chunk in chunks:
            if chunk not in self._checked:
                check.check(chunk, self.dataset)
                self._checked.add(chunk)
        self._done = len(self._checked) == check.num_chunks


    def _chunks_of(self, check: InputCheck, rows: np.ndarray) -> list[int]:
        """Row chunks holding the store rows of dataset rows `rows` (B,), not checked yet;
        vectorised: per row in Python it cost the stream ~13% of its time."""
        first = rows * check.per_sample  # (B,) first store row of each dataset row
        last = np.minimum(check.n, first + check.per_sample) - 1
        lo, hi = first // check.chunk_rows, last // check.chunk_rows  # (B,) chunk indices
        if not (hi - lo).any():  # every row inside one chunk (one row per sample)
            chunks = np.unique(lo)
        else:
            chunks = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in
                                               np.unique(np.stack([lo, hi], 1), axis=0)]))
        return [int(c) for c in chunks if int(c) not in self._checked]


def sample_ids_of(dataset: Any) -> np.ndarray:
    """int64 (N,): the dataset's own sample ids, or 0..N-1."""
    ids = getattr(dataset, "sample_ids", None)
    if ids is None:
        return np.arange(len(dataset), dtype=np.int64)
    ids = as_numpy(ids)
    if ids.shape != (len(dataset),) or ids.dtype.kind not in "iu":
        raise DatasetError(f"{type(dataset).__name__}.sample_ids must be {len(dataset)} integers, "
                           f"got shape {ids.shape} and dtype {ids.dtype}")
    return ids.astype(np.int64)


def _check_pairing(dataset: Any, targets: SoftTargets, ids: np.ndarray) -> None:
    """Refuse a store of other data, classes or sequence length, or missing some sample id."""
    check_pairing(dataset, targets.url, targets.meta, positions=targets.positions)
    refuse_missing(dataset, targets.url, ids, np.setdiff1d(ids, targets.sample_ids))


def check_pairing(dataset: Any, url: str, meta: StoreMeta, *, positions: int | None) -> None:
    """Refuse a store (its metadata; `positions` its sequence length or None) computed on
    other data, of another class count or class names, or of other rows per sample."""
    name = dataset_name(dataset)
    identity = getattr(dataset, "identity", None)
    if callable(identity):
        check_dataset(meta, url, identity())
    classes = getattr(dataset, "num_classes", None)
    if classes is not None and classes != meta.num_classes:
        raise StoreMismatchError(f"store {url!r} has {meta.num_classes} classes but "
                                 f"dataset {name} has {classes}; use the store computed on it")
    names = getattr(dataset, "class_names", None)
    if names is not None and tuple(names) != tuple(meta.class_names):
        raise StoreMismatchError(f"store {url!r} has classes "
                                 f"{_short(meta.class_names)} but dataset {name} has "
                                 f"{_short(names)}; use the store computed on it")
    mine = getattr(dataset, "positions", positions)  # plain datasets: unknown
    if mine != positions:
        have, want = _rows(positions, "target"), _rows(mine, "label")
        raise StoreMismatchError(f"store {url!r} has {have} but dataset {name} has "
                                 f"{want}; use a store written for this dataset")


def refuse_missing(dataset: Any, url: str, ids: np.ndarray, missing: np.ndarray) -> None:
    """Refuse a store without a target for `missing`, some of the dataset's sample ids `ids`."""
    if missing.size:
        raise StoreMismatchError(f"store {url!r} has no target for {missing.size} of the "
                                 f"{len(ids)} sample ids of dataset {dataset_name(dataset)} "
                                 f"(first: {missing[:5].tolist()}); use the store computed on "
                                 "all of this dataset's rows")


def dataset_name(dataset: Any) -> str:
    return str(getattr(dataset, "name", type(dataset).__name__))


def _rows(positions: int | None, what: str) -> str:
    return f"{what}s of {positions} positions per sample" if positions else \
        f"one {what} per sample"


def _short(names: Any) -> str:
    names = list(names)
    return str(names) if len(names) <= 6 else f"[{', '.join(map(repr, names[:3]))}, ... "\
        f"{len(names)} in all]"
