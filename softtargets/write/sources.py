"""What a LogitWriter writes about: a softtargets dataset, or classes, a row count and an
identity given by hand; and where each appended sample goes. numpy only."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from softtargets.datasets.base import BaseDataset
from softtargets.errors import AppendError, ConfigError
from softtargets.write.rows import RowMap


@dataclasses.dataclass(frozen=True)
class Source:
    """The data of a store: its row map, classes, identity, and the dataset when there is one
    (its input digests are recorded)."""

    rows: RowMap
    class_names: tuple[str, ...]
    identity: dict[str, Any]
    dataset: BaseDataset | None = None

    def dataset_rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Dataset row (B,) of each sample id (B,); an unknown id is refused in one line."""
        keys, n = self.rows.keys, self.rows.samples
        if keys is None:
            bad = (ids < 0) | (ids >= n)
            if bad.any():
                raise AppendError(f"LogitWriter.append: sample id {int(ids[bad][0])} is not one "
                                  f"of the dataset's ids 0..{n - 1}")
            return ids
        order = np.argsort(keys)
        at = np.clip(np.searchsorted(keys[order], ids), 0, n - 1)
        bad = keys[order][at] != ids
        if bad.any():
            raise AppendError(f"LogitWriter.append: sample id {int(ids[bad][0])} is not one of "
                              "the dataset's sample ids")
        return order[at]

    def store_rows(self, ids: np.ndarray) -> np.ndarray:
        """Store rows (B * L,) of samples `ids` (B,): L consecutive rows each, in position
        order."""
        first = self.dataset_rows_of(ids) * self.rows.per_sample
        return (first[:, None] + np.arange(self.rows.per_sample)).reshape(-1)

    def sample_ids_of(self, store_rows: np.ndarray) -> np.ndarray:
        """The sample id of each store row."""
        sample = store_rows // self.rows.per_sample
        return sample if self.rows.keys is None else self.rows.keys[sample]


def _positions(positions: bool | int, dataset_positions: int | None) -> int | None:
    """L (rows per sample), or None for one row per sample."""
    if positions is False or positions is None:
        return None
    if positions is True:
        if not dataset_positions:
            raise ConfigError("positions=True takes L from the dataset's `positions` (sequences "
                              "of L tokens), but this data has one label per sample; pass "
                              "positions=L or drop positions")
        return int(dataset_positions)
    if isinstance(positions, bool) or not isinstance(positions, (int, np.integer)) \
            or positions < 1:
        raise ConfigError(f"positions must be True, False or a positive number of positions "
                          f"per sample, got {positions!r}")
    if dataset_positions and positions != dataset_positions:
        raise ConfigError(f"positions={positions} but the dataset's samples have "
                          f"{dataset_positions} positions; pass positions=True")
    return int(positions)


def _from_dataset(dataset: Any, positions: bool | int) -> Source:
    if not isinstance(dataset, BaseDataset):
        raise ConfigError(f"dataset must be a softtargets dataset (softtargets.datasets), got "
                          f"{type(dataset).__name__}; wrap yours with softtargets.datasets."
                          "wrap(dataset, num_classes=C)")
    ids = dataset.sample_ids
    n = len(dataset)
    keys = None if np.array_equal(ids, np.arange(n)) else np.asarray(ids, np.int64)
    if keys is not None and keys.max(initial=0) >= n:
        raise ConfigError(f"dataset {dataset.name}: sample id {int(keys.max())} is not below the "
                          f"dataset's {n} rows; a store's sample ids are in [0, n): use ids "
                          "0..n-1")
    rows = RowMap(samples=n, positions=_positions(positions, dataset.positions), keys=keys)
    return Source(rows, tuple(dataset.class_names), dataset.identity(), dataset)


def source_of(dataset: Any, *, num_classes: int | None, class_names: Sequence[str] | None,
              n: int | None, identity: dict[str, Any] | None, positions: bool | int,
              dataset_id: str | None = None) -> Source:
    """The Source of a LogitWriter's arguments: a dataset, or the classes, n and an identity;
    `dataset_id` is added to the identity."""
    source = _source(dataset, num_classes=num_classes, class_names=class_names, n=n,
                     identity=identity, positions=positions)
    if dataset_id is None:
        return source
    if not isinstance(dataset_id, str) or not dataset_id:
        raise ConfigError(f"dataset_id must be a non-empty string, got {dataset_id!r}")
    known = source.identity.get("dataset_id")
    if known is not None and known != dataset_id:
        raise ConfigError(f"dataset_id={dataset_id!r} but the dataset's own is {known!r}; drop "
                          "one of them")
    return dataclasses.replace(source, identity={**source.identity, "dataset_id": dataset_id})


def _source(dataset: Any, *, num_classes: int | None, class_names: Sequence[str] | None,
            n: int | None, identity: dict[str, Any] | None, positions: bool | int) -> Source:
    if dataset is not None:
        given = [k for k, v in (("num_classes", num_classes), ("class_names", class_names),
                                ("n", n), ("dataset_identity", identity)) if v is not None]
        if given:
            raise ConfigError(f"pass either dataset or {given[0]} (the dataset gives its "
                              "classes, size and identity), not both")
        return _from_dataset(dataset, positions)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"without a dataset, n (the number of samples) must be a positive "
                          f"integer, got {n!r}")
    names = _class_names(num_classes, class_names)
    ident = _identity(identity, int(n))
    rows = RowMap(samples=int(n), positions=_positions(positions, None))
    return Source(rows, names, ident)


def _class_names(num_classes: int | None, class_names: Sequence[str] | None) -> tuple[str, ...]:
    if class_names is not None:
        names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"{len(names)} class_names for num_classes={num_classes}; give "
                              "one name per class")
        if not names:
            raise ConfigError("class_names is empty; a store needs at least one class")
        return names
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ConfigError(f"without a dataset, num_classes (or class_names) must be given as a "
                          f"positive integer, got {num_classes!r}")
    return tuple(str(i) for i in range(int(num_classes)))


def _identity(identity: dict[str, Any] | None, n: int) -> dict[str, Any]:
    """The store's dataset identity: the user's dict (name, split, ...) with n."""
    if identity is None:
        return {"name": "unnamed", "split": "train", "n": n}
    if not isinstance(identity, dict):
        raise ConfigError(f"dataset_identity must be a dict such as {{'name': 'my-data', "
                          f"'split': 'train'}}, got {identity!r}")
    if identity.get("n", n) != n:
        raise ConfigError(f"dataset_identity says n={identity['n']!r} but n={n}; they must "
                          "agree")
    return {"name": "unnamed", "split": "train", **identity, "n": n}
