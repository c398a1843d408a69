"""CIFAR-10 and CIFAR-100 in their python (pickle) format, from a local folder.

CIFAR-10 (`cifar-10-batches-py`): `data_batch_1`..`data_batch_5`, `test_batch` and
`batches.meta` (`label_names`). CIFAR-100 (`cifar-100-python`): `train`, `test` and `meta`
(`fine_label_names`); the fine labels are used. Each batch holds `data`, uint8 (N, 3072) with
the 1024 red, then green, then blue values of each 32x32 image, and its labels as a list.
"""

from __future__ import annotations

import pickle
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.datasets.base import ArrayDataset
from softtargets.datasets.digest import fingerprint
from softtargets.errors import DatasetError, DatasetNotFoundError

FOLDERS = ("cifar-10-batches-py", "cifar-100-python")  # the archives' folder names
LAYOUTS = {  # variant: (train files, test files, meta file, labels key, class names key)
    "cifar10": (tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                "batches.meta", "labels", "label_names"),
    "cifar100": (("train",), ("test",), "meta", "fine_labels", "fine_label_names"),
}
# The pickles hold dicts of lists, bytes and numpy arrays; nothing else may be built while
# loading them, so a file from elsewhere cannot run code.
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
           ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load(path: Path) -> dict[str, Any]:
    """A CIFAR pickle (Python 2 or 3) as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DatasetError(f"{path} is not a CIFAR python-format file ({e}); fetch it again") \
            from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} is not a CIFAR python-format file (holds a "
                           f"{type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(d: dict[str, Any], key: str, path: Path) -> Any:
    if key not in d:
        raise DatasetError(f"{path} has no {key!r} entry (has {sorted(d)}); is it a CIFAR "
                           "python-format file of the other variant?")
    return d[key]


def find_variant(path: Path) -> tuple[str, Path]:
    """('cifar10' | 'cifar100', folder) for a CIFAR folder or the folder that holds it."""
    for folder in (path, *(path / f for f in FOLDERS)):
        for variant, (train, test, meta, _, _) in LAYOUTS.items():
            if all((folder / f).is_file() for f in (*train, *test, meta)):
                return variant, folder
    raise DatasetNotFoundError(
        f"{path}: not a CIFAR python-format folder; expected data_batch_1..5, test_batch and "
        "batches.meta (CIFAR-10) or train, test and meta (CIFAR-100) in it or in "
        f"{' or '.join(FOLDERS)} below it")


class CIFAR(ArrayDataset):
    """CIFAR-10 or CIFAR-100 (detected from the files): inputs uint8 (3, 32, 32), labels
    int64; identity with an xxh3-128 fingerprint of every row (the data is in memory)."""

    def __init__(self, path: str | Path, *, train: bool = True, name: str | None = None,
                 dataset_id: str | None = None) -> None:
        variant, folder = find_variant(Path(path))
        train_files, test_files, meta, labels_key, names_key = LAYOUTS[variant]
        split = "train" if train else "test"
        self._set_common(name=name or variant, split=split, dataset_id=dataset_id)
        self.variant, self.source = variant, str(folder)
        names = _field(_load(folder / meta), names_key, folder / meta)
        self._class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        xs, ys = [], []
        for f in train_files if train else test_files:
            x, y = _batch(folder / f, labels_key)
            xs.append(x)
            ys.append(y)
        self._x = np.concatenate(xs)  # (N, 3, 32, 32) uint8
        self._y = np.concatenate(ys)  # (N,)

    @cached_property
    def fingerprint(self) -> str:
        """Input digest of every row ("xxh3-128:<hex>")."""
        return fingerprint(self)

    def _identity(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint}


def _batch(path: Path, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and raw labels (N,) of one batch file."""
    d = _load(path)
    data = np.asarray(_field(d, "data", path))
    labels = np.asarray(_field(d, labels_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 "
                           "(N, 3072); fetch the file again")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {data.shape[0]} images but {labels.shape} labels; fetch "
                           "the file again")
    return data.reshape(-1, 3, 32, 32), labels
