"""The IDX datasets (Fashion-MNIST, MNIST, KMNIST) of softtargets.datasets.idx_files as softtargets datasets."""

from __future__ import annotations

from typing import Any

import numpy as np

from softtargets.config import DataConfig
from softtargets.datasets.idx_files import Split, load_split
from softtargets.datasets.base import BaseDataset, check_labels


class IDXDataset(BaseDataset):
    """A split of a named IDX dataset: inputs uint8 (H, W) images as in the files, labels
    int64. Its identity is the split's own (name, split, n, limit and the whole-split sha256
    fingerprint), so stores written before this adapter keep matching."""

    def __init__(self, name: str = "fashion-mnist", *, split: str = "train",
                 data_dir: str = "data", limit: int | None = None,
                 dataset_id: str | None = None) -> None:
        self._init(load_split(DataConfig(dataset=name, split=split, data_dir=data_dir,
                                         limit=limit)), dataset_id)

    @classmethod
    def from_split(cls, split: Split, *, dataset_id: str | None = None) -> IDXDataset:
        """The adapter of an already loaded Split (no second read of the files)."""
        self = cls.__new__(cls)
        self._init(split, dataset_id)
        return self

    def _init(self, split: Split, dataset_id: str | None) -> None:
        self._set_common(name=split.name, split=split.split, dataset_id=dataset_id)
        self.data = split
        self._class_names = split.class_names

    def __len__(self) -> int:
        return len(self.data)

    def _inputs(self, start: int, stop: int) -> np.ndarray:
        return self.data.images[start:stop]  # (R, H, W) uint8

    def _labels(self, start: int, stop: int) -> np.ndarray:
        return self.data.labels[start:stop]  # (R,) uint8

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(images (B, H, W) uint8, labels (B,) int64) of rows (B,), indexed directly."""
        rows = np.asarray(rows, dtype=np.int64)
        labels = check_labels(self.data.labels[rows], self.num_classes, name=self.name)
        return self.data.images[rows], labels

    def identity(self) -> dict[str, Any]:
        """Split.identity() (with `dataset_id` when given)."""
        ident = self.data.identity()
        if self.dataset_id is not None:
            ident["dataset_id"] = self.dataset_id
        return ident
