"""Adapters for data the user already has: arrays or tensors in memory, or any map-style dataset."""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

import numpy as np

from softtargets.datasets.base import (ArrayDataset, BaseDataset, MapDataset, as_numpy,
                                       check_labels, check_sample_ids, integer_labels, row_range)
from softtargets.datasets.digest import fingerprint
from softtargets.errors import DatasetError


def _classes(num_classes: int | None, class_names: Sequence[str] | None, *,
             name: str) -> tuple[int | None, tuple[str, ...] | None]:
    """Checked (num_classes, class_names); either may be None when the other gives it."""
    names = None if class_names is None else tuple(str(c) for c in class_names)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise DatasetError(f"{name}: num_classes must be a positive integer, got "
                               f"{num_classes!r}")
        num_classes = int(num_classes)
    if names is not None and num_classes is not None and len(names) != num_classes:
        raise DatasetError(f"{name}: {len(names)} class_names for num_classes={num_classes}; "
                           "give one name per class")
    return num_classes, names


class TensorDataset(ArrayDataset):
    """Inputs (N, ...) and labels (N,) (or (N, L) per position) held in memory."""

    def __init__(self, inputs: Any, labels: Any, *, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, name: str = "tensors",
                 split: str = "train", sample_ids: Any = None,
                 dataset_id: str | None = None) -> None:
        self._set_common(name=name, split=split, dataset_id=dataset_id)
        self._x, labels = as_numpy(inputs), as_numpy(labels)  # (N, ...), (N,) or (N, L)
        if self._x.ndim < 1 or labels.ndim < 1 or len(self._x) != len(labels):
            raise DatasetError(f"{name}: inputs of shape {self._x.shape} and labels of shape "
                               f"{labels.shape} do not have one row per sample")
        num_classes, self._class_names = _classes(num_classes, class_names, name=name)
        if num_classes is None and self._class_names is None:
            labels = integer_labels(labels, name=name)
            num_classes = int(labels.max(initial=0)) + 1  # in memory: the count is cheap
        self._num_classes = num_classes if num_classes is not None else len(self._class_names)
        self._y = check_labels(labels, self.num_classes, name=name)  # whole array, one pass
        self.positions = int(labels.shape[1]) if labels.ndim == 2 else None
        if sample_ids is not None:
            self._sample_ids = check_sample_ids(sample_ids, len(labels), name=name)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of rows (B,), indexed in memory (labels were checked up front)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._x[rows], self._y[rows]

    @cached_property
    def fingerprint(self) -> str:
        """Input digest of every row ("xxh3-128:<hex>"); in memory, so cheap."""
        return fingerprint(self)

    def _identity(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint}


def from_tensors(inputs: Any, labels: Any, *, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, name: str = "tensors",
                 split: str = "train", sample_ids: Any = None,
                 dataset_id: str | None = None) -> TensorDataset:
    """A dataset of in-memory arrays or tensors: inputs (N, ...) of any dtype, integer labels
    (N,). num_classes defaults to len(class_names), else to the largest label + 1."""
    return TensorDataset(inputs, labels, num_classes=num_classes, class_names=class_names,
                         name=name, split=split, sample_ids=sample_ids, dataset_id=dataset_id)


class WrappedDataset(BaseDataset):
    """Any map-style dataset, read row by row through its __getitem__ and batched into numpy."""

    def __init__(self, dataset: MapDataset, *, num_classes: int | None,
                 class_names: Sequence[str] | None = None, name: str | None = None,
                 split: str = "train", sample_ids: Any = None,
                 dataset_id: str | None = None) -> None:
        name = name or type(dataset).__name__
        if not isinstance(dataset, MapDataset):
            raise DatasetError(f"{name}: a dataset needs __len__ and __getitem__ returning "
                               f"(input, label); got {type(dataset).__name__}")
        self._set_common(name=name, split=split, dataset_id=dataset_id)
        num_classes, self._class_names = _classes(num_classes, class_names, name=name)
        if num_classes is None and self._class_names is None:
            raise DatasetError(f"{name}: wrap() needs num_classes (or class_names): the labels "
                               "of a user dataset are not read ahead")
        self._num_classes = num_classes if num_classes is not None else len(self._class_names)
        self.dataset = dataset
        if sample_ids is not None:
            self._sample_ids = check_sample_ids(sample_ids, len(dataset), name=name)

    def __len__(self) -> int:
        return len(self.dataset)

    def _item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DatasetError(f"{self.name}: row {i} is a {type(item).__name__}, not an "
                               "(input, label) pair")
        return as_numpy(item[0]), as_numpy(item[1])

    def _stack(self, arrays: list[np.ndarray], start: int, what: str) -> np.ndarray:
        for j, a in enumerate(arrays):
            if a.shape != arrays[0].shape or a.dtype != arrays[0].dtype:
                raise DatasetError(f"{self.name}: the {what} of row {start + j} has shape "
                                   f"{a.shape} and dtype {a.dtype}, row {start}'s "
                                   f"{arrays[0].shape} {arrays[0].dtype}; rows read together "
                                   "must match")
        if not arrays:
            return np.empty((0,), np.int64)
        return np.stack(arrays)

    def read(self, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of `rows` from one __getitem__ call per row."""
        start, stop = row_range(rows, len(self), name=self.name)
        items = [self._item(i) for i in range(start, stop)]
        x = self._stack([a for a, _ in items], start, "input")
        y = self._stack([b for _, b in items], start, "label")
        return x, check_labels(y, self.num_classes, first_row=start, name=self.name)

    def _inputs(self, start: int, stop: int) -> np.ndarray:
        return self.read(slice(start, stop))[0]

    def _labels(self, start: int, stop: int) -> np.ndarray:
        return self.read(slice(start, stop))[1]


def wrap(dataset: MapDataset, *, num_classes: int | None, class_names: Sequence[str] | None = None,
         name: str | None = None, split: str = "train", sample_ids: Any = None,
         dataset_id: str | None = None) -> WrappedDataset:
    """Any map-style dataset (`len(ds)`, `ds[i] -> (input, label)`) as a softtargets dataset."""
    return WrappedDataset(dataset, num_classes=num_classes, class_names=class_names, name=name,
                          split=split, sample_ids=sample_ids, dataset_id=dataset_id)
