"""What a dataset is to softtargets, and the base class of its own adapters.

A user's dataset is anything map-style (torch conventions): `len(ds)` rows and `ds[i] -> (input,
label)`, the input a tensor or numpy array of any dtype and shape, the label an integer class
index. softtargets' adapters add what stage 1 and stage 2 need on top: the class count and names,
the sample ids, an identity to record in a store, and whole-unit reads (`read(rows)`) that return
numpy arrays without a Python loop per row wherever the data allows it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from softtargets.errors import DatasetError, LabelError


@runtime_checkable
class MapDataset(Protocol):
    """Anything map-style: `len(ds)` rows, `ds[i]` the i-th (input, integer label)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, Any]: ...


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view (or copy) of a numpy array, torch tensor, scalar or nested list."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def integer_labels(labels: Any, *, name: str = "dataset") -> np.ndarray:
    """Labels as a numpy array of an integer dtype, or a LabelError naming the dtype."""
    labels = as_numpy(labels)
    if labels.dtype.kind not in "iu":
        raise LabelError(f"{name}: labels must be integer class indices, got dtype "
                         f"{labels.dtype}; convert them with .astype('int64')")
    return labels


def check_labels(labels: Any, num_classes: int, *, first_row: int = 0, name: str = "dataset",
                 what: str = "label",
                 fix: str = "fix the label or pass the right num_classes") -> np.ndarray:
    """Labels (rows, ...) of any integer dtype as int64, or one LabelError naming the first bad
    row (and position, for per-position labels), its label and the class count."""
    labels = integer_labels(labels, name=name)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        where = np.argwhere(bad)[0]
        row = first_row + int(where[0])
        at = f"row {row}" + (f" position {int(where[1])}" if len(where) > 1 else "")
        raise LabelError(f"{name}: {at} has {what} {labels[tuple(where)]}, outside the "
                         f"{num_classes} classes [0, {num_classes}); {fix}")
    return labels.astype(np.int64, copy=False)


def check_sample_ids(ids: Any, n: int, *, name: str = "dataset") -> np.ndarray:
    """User sample ids as a read-only int64 (n,) array: integers, distinct, non-negative."""
    ids = as_numpy(ids)
    if ids.dtype.kind not in "iu" or ids.shape != (n,):
        raise DatasetError(f"{name}: sample_ids must be {n} integers (one per row), got dtype "
                           f"{ids.dtype} and shape {ids.shape}")
    ids = ids.astype(np.int64)
    if n and ids.min() < 0:
        raise DatasetError(f"{name}: sample id {ids.min()} at row {int(ids.argmin())} is "
                           "negative; sample ids must be >= 0")
    uniq, first = np.unique(ids, return_index=True)
    if len(uniq) != n:
        dup = np.setdiff1d(np.arange(n), first)[0]
        raise DatasetError(f"{name}: sample id {ids[dup]} appears more than once (again at row "
                           f"{dup}); sample ids must be distinct")
    ids.setflags(write=False)
    return ids


def row_range(rows: slice, n: int, *, name: str = "dataset") -> tuple[int, int]:
    """(start, stop) of a contiguous slice of n rows (negative and open ends as in Python)."""
    if not isinstance(rows, slice):
        raise DatasetError(f"{name}: rows must be a slice such as slice(0, 256), got "
                           f"{type(rows).__name__}")
    start, stop, step = rows.indices(n)
    if step != 1:
        raise DatasetError(f"{name}: rows must be a contiguous slice (step 1), got step {step}")
    return start, max(start, stop)


class BaseDataset:
    """A dataset with class names, sample ids, an identity and whole-unit numpy reads.

    Subclasses set `name`, `split` and `_class_names` (or `_num_classes`) and implement
    `__len__`, `_inputs(start, stop)` and `_labels(start, stop)` (raw labels; checked here).
    `positions` is None for one label per sample, or L for rows of L positions (sequences) whose
    labels are (R, L).
    """

    name: str = "dataset"
    split: str = "train"
    positions: int | None = None
    _class_names: tuple[str, ...] | None = None
    _num_classes: int | None = None
    _sample_ids: np.ndarray | None = None
    dataset_id: str | None = None
    _label_hint: dict[str, str] = {"what": "label",
                                   "fix": "fix the label or pass the right num_classes"}

    def __len__(self) -> int:
        raise NotImplementedError

    def _inputs(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _labels(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _identity(self) -> dict[str, Any]:
        """Adapter-specific keys of identity(): what identifies the data, when cheap."""
        return {}

    @property
    def num_classes(self) -> int:
        """The number of classes C; labels are in [0, C)."""
        if self._num_classes is not None:
            return self._num_classes
        if self._class_names is None:
            raise DatasetError(f"{self.name}: {type(self).__name__} sets neither num_classes "
                               "nor class_names")
        return len(self._class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the C classes ("0".."C-1" when the data has none)."""
        if self._class_names is None:
            return tuple(str(i) for i in range(self.num_classes))
        return self._class_names

    @property
    def sample_ids(self) -> np.ndarray:
        """int64 (N,): the id of each row, 0..N-1 unless the user gave keys."""
        return self.ids(slice(None))

    def ids(self, rows: slice) -> np.ndarray:
        """int64 (R,) sample ids of `rows`."""
        start, stop = row_range(rows, len(self), name=self.name)
        if self._sample_ids is None:
            return np.arange(start, stop, dtype=np.int64)
        return self._sample_ids[start:stop]

    def inputs(self, rows: slice) -> np.ndarray:
        """Inputs (R, ...) of `rows` as one numpy array."""
        return self._inputs(*row_range(rows, len(self), name=self.name))

    def labels(self, rows: slice) -> np.ndarray:
        """int64 labels (R,) of `rows` ((R, L) for sequences), checked against num_classes."""
        start, stop = row_range(rows, len(self), name=self.name)
        return check_labels(self._labels(start, stop), self.num_classes, first_row=start,
                            name=self.name, **self._label_hint)

    def read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of `rows`: what stage 1 reads per write unit."""
        return self.inputs(rows), self.labels(rows)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of the rows (B,) int in that order, e.g. a shuffled batch: one
        `read` per run of consecutive rows. Adapters holding arrays index them directly."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise DatasetError(f"{self.name}: rows {rows.min()}..{rows.max()} out of range for "
                               f"{len(self)} rows")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        runs = np.split(ordered, np.flatnonzero(np.diff(ordered) != 1) + 1) if rows.size else []
        parts = [self.read(slice(int(run[0]), int(run[-1]) + 1)) for run in runs]
        if not parts:
            return self.read(slice(0, 0))
        back = np.empty_like(order)
        back[order] = np.arange(len(order))  # position of each requested row in `ordered`
        inputs = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return inputs[back], labels[back]

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name}: index must be an integer, got {type(index).__name__}")
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"{self.name}: row {index} out of range for {n} rows")
        x, y = self.read(slice(i, i + 1))
        return x[0], (int(y[0]) if y.ndim == 1 else y[0])

    def identity(self) -> dict[str, Any]:
        """What a store records about its data: name, split, n, what identifies the data (a
        fingerprint where cheap), and `dataset_id` when the user gave one."""
        ident = {"name": self.name, "split": self.split, "n": len(self), **self._identity()}
        if self.dataset_id is not None:
            ident["dataset_id"] = self.dataset_id
        return ident

    def _set_common(self, *, name: str, split: str, dataset_id: str | None) -> None:
        """Validate and set the fields every adapter takes from its user."""
        if dataset_id is not None and (not isinstance(dataset_id, str) or not dataset_id):
            raise DatasetError(f"{name}: dataset_id must be a non-empty string, got "
                               f"{dataset_id!r}")
        self.name, self.split, self.dataset_id = str(name), str(split), dataset_id

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"num_classes={self.num_classes})")


class ArrayDataset(BaseDataset):
    """A dataset whose inputs `_x` (N, ...) and labels `_y` (N,) are numpy arrays in memory."""

    _x: np.ndarray
    _y: np.ndarray

    def __len__(self) -> int:
        return int(self._y.shape[0])

    def _inputs(self, start: int, stop: int) -> np.ndarray:
        return self._x[start:stop]

    def _labels(self, start: int, stop: int) -> np.ndarray:
        return self._y[start:stop]
