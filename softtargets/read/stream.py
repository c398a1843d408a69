"""StreamingDistillDataset: the user's dataset with its soft targets, streamed from the store.

    data = StreamingDistillDataset(dataset, "teacher-logits.zarr", temperature=4.0,
                                   batch_size=64)
    loader = DataLoader(data, batch_size=None, num_workers=2)
    for epoch in range(epochs):
        data.set_epoch(epoch)
        for x, y, target in loader:
            loss = distillation_loss(student(x), target, y, temperature=4.0, alpha=0.9)

A torch `IterableDataset` of batches for every store kind, read unit by unit (a unit is a store
chunk, softtargets/read/units.py) in bounded memory: two groups of `buffer_chunks` units per
process, whatever the store's size. The order of an epoch is softtargets/read/order.py's: units
permuted by (seed, epoch), split across torch.distributed ranks and DataLoader workers, rows
shuffled within groups of units; every row is delivered exactly once per epoch across all
workers and ranks. `state_dict()` / `load_state_dict()` resume in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from softtargets.datasets.base import as_numpy
from softtargets.errors import ConfigError, DatasetError, SofttargetsError
from softtargets.pipeline import prefetch
from softtargets.read.batch import Target
from softtargets.read.convert import RowIndex, fetch, make_target, sequence_length
from softtargets.read.dataset import (InputChecks, check_pairing, dataset_name, refuse_missing,
                                      sample_ids_of)
from softtargets.read.load import ReadOptions, open_source
from softtargets.read.replay import REPLAY, Replay
from softtargets.read.ship import ship
from softtargets.read.units import ARRAYS_KIND, ENSEMBLE_KIND, UnitSpec, scan
from softtargets.read.order import (ChunkGauge, StreamPlan, UnitReader, resume_point,
                                worker_batches)

# what a saved position must match to continue the same order
LAYOUT = ("seed", "batch_size", "rank", "world_size", "shuffle", "drop_last", "buffer_chunks",
          "rows")


class OpenReaders(dict):
    """Unit readers opened in this process, by UnitSpec. Copies of a dataset (copy.copy, as
    a copy per epoch) share it; a pickled one arrives empty, so another
    process opens its own readers."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return OpenReaders, ()


@dataclasses.dataclass(frozen=True)
class WorkerFailure:
    """A softtargets error of a DataLoader worker, sent to the main process as an item so it
    is raised there unchanged, in one line (torch re-raises a worker's error with its traceback
    in the message). Unpacking it (`for x, y, t in loader`) raises the error."""

    error: SofttargetsError

    def __iter__(self) -> Iterator[Any]:
        raise self.error

    def __getitem__(self, index: Any) -> Any:
        raise self.error


class StreamingDistillDataset(IterableDataset):
    """Batches (input, label, target) of `dataset` with the soft targets of `store`.

    dataset: anything from softtargets.datasets, or any map-style dataset (`len`, `ds[i] ->
    (input, label)`) whose row i has sample id i. store: a store of any kind; temperature,
    rule, tail and view as for SoftTargets. Each item is one batch of `batch_size` rows (each
    DataLoader worker's last batch may be short; drop_last drops it): inputs and labels
    collated as torch does, the target a batch target of read/batch.py (DenseTarget,
    SparseTargets, PositionTargets of whole sequences). Use it with
    `DataLoader(ds, batch_size=None, num_workers=...)`, or `ds.loader(...)` to have
    `state_dict()` count the batches delivered by worker processes.

    sample_ids: stream only these sample ids of the dataset (default: all). with_ids: yield
    (sample ids, input, label, target). rank, world_size: this process's share (default: the
    initialised torch.distributed group, else the whole data). buffer_chunks: units shuffled
    together (two groups are held at once); decode_threads per process; prefetch_batches made
    ahead in a background thread of each process that iterates (leave it 0 under DataLoader
    workers: their prefetch_factor looks ahead already, and the extra thread halved the rows/s
    of 2 workers on 2 cores). view="replay" (views stores):
    each row's input is rebuilt as the view it draws this epoch (by (seed, epoch, sample id),
    read.replay), its target is that view's logits or, for an ensemble, the members'
    combination of that view at T.
    """

    def __init__(self, dataset: Any, store: str | os.PathLike[str], *, temperature: float = 1.0,
                 rule: str | None = None, tail: str = "rest", view: int | str | None = None,
                 batch_size: int = 256, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                 drop_last: bool = False, sample_ids: Any = None, with_ids: bool = False,
                 rank: int | None = None, world_size: int | None = None,
                 buffer_chunks: int = 8, decode_threads: int = 1,
                 prefetch_batches: int = 0) -> None:
        _check_options(dataset, store, batch_size=batch_size, seed=seed,
                       buffer_chunks=buffer_chunks, decode_threads=decode_threads,
                       prefetch_batches=prefetch_batches)
        self.dataset, self.url = dataset, os.fspath(store)
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.with_ids = bool(drop_last), bool(with_ids)
        self.buffer_chunks, self.decode_threads = int(buffer_chunks), int(decode_threads)
        self.prefetch_batches = int(prefetch_batches)
        self.rank, self.world_size = _rank(rank, world_size)
        source = open_source(self.url, ReadOptions(temperature=temperature, rule=rule, tail=tail,
                                                   view=view))
        self.meta, self.rule, self._convert = source.meta, source.rule, source.convert
        per_position = bool(source.meta.extra.get("sparse", {}).get("position"))
        length = sequence_length(dataset) if per_position else None
        self._units = dataclasses.replace(source.units, positions=length)
        # view replay: units of every view's values (R, V, C) and parameters (R, V, P)
        self._replay = Replay.of_store(self.url, source.meta) if view == REPLAY else None
        check_pairing(dataset, self.url, source.meta, positions=length)
        self.inputs = InputChecks(dataset, self.url, source.meta)
        self._select(sample_ids)
        self.gauge = ChunkGauge()  # units held by this process's iterations (held, peak, read)
        self._position: dict[str, Any] | None = None  # of this epoch, counted here
        self._resume: dict[str, Any] | None = None  # loaded, for the next iteration
        self.epoch = -1
        self.set_epoch(epoch)

    def _select(self, sample_ids: Any) -> None:
        """Which store rows to stream (`_keep`, `_kept`); refuses missing sample ids."""
        ids = sample_ids_of(self.dataset)  # (N,) int64
        self._rows = RowIndex(ids)
        chosen = ids if sample_ids is None else self._rows.subset(
            as_numpy(sample_ids), name=dataset_name(self.dataset))
        n = int(self.meta.dataset["n"])
        valid = (chosen >= 0) & (chosen < n)  # (S,) bool
        inside = chosen if valid.all() else chosen[valid]
        keep = np.zeros(n, dtype=bool)
        keep[inside] = True
        reader = self._units.open()
        kept, seen = scan(reader, keep=keep, dataset_n=n)
        # this process's epochs reuse the open reader: opening a store and reading its chunk
        # digests again every epoch cost the stream ~10% of its speed
        self._readers = OpenReaders({self._units: reader})
        # ids outside the store, and ids inside it that no chunk holds (no sort of all ids:
        # its temporaries stayed in the process's heap, ~60 bytes per row)
        refuse_missing(self.dataset, self.url, chosen,
                       np.union1d(chosen[~valid], inside[~seen[inside]]))
        self._kept = kept
        self._keep = None if not (seen & ~keep).any() else keep  # None: every stored row

    # --- the order of an epoch ---

    def set_epoch(self, epoch: int) -> None:
        """Stream epoch `epoch` next (its unit order and shuffle); call it before each epoch."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch must be an integer >= 0, got {epoch!r}")
        if int(epoch) != self.epoch:
            self._position = self._resume = None
        self.epoch = int(epoch)

    @property
    def num_rows(self) -> int:
        """Rows (samples) streamed per epoch, all ranks together."""
        return int(self._kept.sum())

    def num_batches(self, num_workers: int = 0) -> int:
        """Batches this rank yields per epoch under a DataLoader of `num_workers` workers."""
        return sum(self._plan(num_workers).batch_counts(self.epoch))

    def _plan(self, workers: int) -> StreamPlan:
        return StreamPlan(url=self.url, kept=self._kept, keep=self._keep, seed=self.seed,
                          batch_size=self.batch_size, buffer_chunks=self.buffer_chunks,
                          rank=self.rank, world_size=self.world_size,
                          num_workers=max(1, workers), decode_threads=self.decode_threads,
                          source=self._units, shuffle=self.shuffle, drop_last=self.drop_last)

    # --- iteration ---

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = get_worker_info()
        worker, workers = (0, 0) if info is None else (info.id, info.num_workers)
        try:
            position = self._begin(workers)
            batches = self._iterate(worker, workers, position["delivered"])
            if info is not None:
                yield from batches
                return
            self._position = position  # iterated in this process: counted for state_dict()
            for batch in batches:
                position["delivered"] += 1  # before the yield: the caller holds it now
                yield batch
        except SofttargetsError as e:
            if info is None:
                raise
            yield WorkerFailure(e)

    def _begin(self, workers: int) -> dict[str, Any]:
        """The position an iteration under `workers` DataLoader workers (0: this process)
        starts from, using up a loaded resume of this epoch; refuses one saved under another
        worker count (the order of the delivered batches depends on it)."""
        resume = self._resume if self._resume and self._resume["epoch"] == self.epoch else None
        self._resume = None
        start = 0 if resume is None else int(resume["delivered"])
        if resume is not None and start and max(1, resume["workers"] or 0) != max(1, workers):
            raise ConfigError(f"stream state was saved with {resume['workers']} DataLoader "
                              f"workers, this DataLoader runs {workers}; resume with the same "
                              "num_workers")
        return self._state(delivered=start, workers=workers)

    def _iterate(self, worker: int, workers: int, start: int) -> Iterator[tuple[Any, ...]]:
        """This worker's batches of the epoch after the first `start` batches of the rank."""
        plan = self._plan(workers)
        rotate, skip = resume_point(plan.batch_counts(self.epoch), start)
        logical = (worker + rotate) % plan.num_workers
        # a DataLoader worker opens its own reader (zarr objects do not survive a fork)
        reader = self._reader() if get_worker_info() is None else None
        source = worker_batches(plan, epoch=self.epoch, worker=logical,
                                skip_batches=skip[logical], gauge=self.gauge, reader=reader)
        yield from prefetch(self._batches(source), depth=self.prefetch_batches, name="stream")

    def _reader(self) -> UnitReader:
        """The unit reader of this process, opened once (the store was checked at __init__)."""
        if self._units not in self._readers:  # unpickled in another process
            self._readers[self._units] = self._units.open()
        return self._readers[self._units]

    def _batches(self, source: Iterator[tuple[np.ndarray, ...]]) -> Iterator[tuple[Any, ...]]:
        for ids, *arrays in source:
            rows = self._rows(ids)
            self.inputs.check(rows)  # the chunks' inputs are the rows the teacher saw
            x, y = fetch(self.dataset, rows)
            target: Target
            if self._replay is not None:  # every view's values (B, V, C), params (B, V, P)
                x, y, target = self._replay.batch(
                    ids, x, y, *arrays, seed=self.seed, epoch=self.epoch,
                    temperature=self._units.temperature,
                    log_probs=self._units.kind == ENSEMBLE_KIND, fetch=self._partners)
            else:
                target = make_target(self._units, self._convert, arrays)
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            # a DataLoader worker sends it through its shared-memory ring (read/ship.py)
            yield ship((torch.from_numpy(ids), x, y, target) if self.with_ids else (x, y, target))

    def _partners(self, sample_ids: np.ndarray) -> tuple[Any, Any]:
        """(inputs, labels) of mixed views' partners by sample id."""
        return fetch(self.dataset, self._rows.checked(sample_ids,
                                                      name=dataset_name(self.dataset)))

    def loader(self, **kwargs: Any) -> StreamLoader:
        """A DataLoader over this dataset (batch_size=None; `kwargs` as for DataLoader) that
        counts the batches it delivers, so state_dict() knows the position with workers too."""
        return StreamLoader(self, kwargs)

    # --- mid-epoch resume ---

    def _state(self, *, delivered: int, workers: int | None) -> dict[str, Any]:
        return {"epoch": self.epoch, "delivered": delivered, "workers": workers,
                "seed": self.seed, "batch_size": self.batch_size, "rank": self.rank,
                "world_size": self.world_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "buffer_chunks": self.buffer_chunks,
                "rows": self.num_rows}

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands: its number and the batches delivered so far, counted when the
        dataset is iterated in this process or through `loader()` (a plain DataLoader's worker
        processes cannot report to this object), with the settings the order depends on."""
        if self._position is None:
            return self._state(delivered=0, workers=None)
        return dict(self._position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (of state_dict()): the next iteration of its epoch delivers
        exactly the batches not delivered yet. Refuses a state of other settings."""
        lacks = sorted({"epoch", "delivered", "workers", *LAYOUT} - set(state)) \
            if isinstance(state, dict) else "everything"
        if lacks:
            raise ConfigError(f"stream state lacks {lacks}; load_state_dict takes a dict from "
                              "StreamingDistillDataset.state_dict()")
        mine = self._state(delivered=0, workers=None)
        for key in LAYOUT:
            if state[key] != mine[key]:
                raise ConfigError(f"stream state was saved with {key}={state[key]}, this dataset "
                                  f"has {key}={mine[key]}; resume with the same settings")
        self.set_epoch(state["epoch"])
        self._resume, self._position = dict(state), dict(state)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "gauge": ChunkGauge()}  # counters stay with their process


class StreamLoader:
    """Iterates a DataLoader over a StreamingDistillDataset and counts the batches delivered,
    so that the dataset's state_dict() is right with worker processes too."""

    def __init__(self, dataset: StreamingDistillDataset, kwargs: dict[str, Any]) -> None:
        if "batch_size" in kwargs:
            raise ConfigError("the dataset makes the batches (StreamingDistillDataset("
                              "batch_size=...)); drop batch_size= from loader()")
        self.dataset, self.kwargs = dataset, kwargs

    def __len__(self) -> int:
        return self.dataset.num_batches(self.kwargs.get("num_workers", 0))

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        ds = self.dataset
        workers = int(self.kwargs.get("num_workers", 0))
        loader = DataLoader(ds, batch_size=None, **self.kwargs)
        if workers == 0:  # iterated in this process: the dataset counts itself
            yield from loader
            return
        position = ds._begin(workers)  # checked here, before any worker starts
        ds._resume = {**position} if position["delivered"] else None
        batches = iter(loader)  # the workers start with a copy of the dataset and its resume
        ds._resume, ds._position = None, position
        batch = None
        try:
            for batch in batches:
                if isinstance(batch, WorkerFailure):
                    break
                position["delivered"] += 1
                yield batch
        finally:
            del batches  # the workers stop now, not when a traceback holding them is collected
        if isinstance(batch, WorkerFailure):
            raise batch.error


def _rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size): as given, else the initialised torch.distributed group's."""
    if (rank is None) != (world_size is None):
        raise ConfigError("pass rank and world_size together (or neither, to take them from "
                          "torch.distributed)")
    if rank is None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        return (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
    if not (isinstance(world_size, int) and isinstance(rank, int) and 0 <= rank < world_size):
        raise ConfigError(f"rank must be in [0, world_size), got rank={rank!r} and "
                          f"world_size={world_size!r}")
    return rank, world_size


def _check_options(dataset: Any, store: Any, **counts: int) -> None:
    if not isinstance(store, (str, os.PathLike)):
        raise ConfigError(f"StreamingDistillDataset takes a store path or URL, got "
                          f"{type(store).__name__}; pass e.g. 'teacher-logits.zarr'")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise DatasetError(f"StreamingDistillDataset needs a map-style dataset (__len__ and "
                           f"__getitem__), got {type(dataset).__name__}")
    least = {"batch_size": 1, "buffer_chunks": 1, "decode_threads": 1, "prefetch_batches": 0,
             "seed": 0}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or value < least[name]:
            raise ConfigError(f"{name} must be an integer >= {least[name]}, got {value!r}")
