"""Opening a store of any kind for SoftTargets: options checked at open, targets loaded later.

`open_source` opens the store with its kind's checked reader (store.LogitStore,
ensemble.EnsembleTargets, read.units for stored views, sparse_store.SparseStore) and
refuses options the store cannot serve before any data is read; `Source.load` then reads the
store chunk by chunk through that reader (crc32c, row checks, chunk digests) into a `Table`:
every target in memory, in increasing sample id order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import torch

from softtargets.format import ensemble
from softtargets.format import sparse as sp
from softtargets.read.distill import SparseTargets, map_tensors, sparse_targets
from softtargets.errors import ConfigError, StoreError
from softtargets.read.batch import DenseTarget, PositionTargets, Target
from softtargets.read.units import ENSEMBLE_KIND, LOGITS_KIND, SPARSE_KIND, UnitSpec
from softtargets.format.sparse_store import KINDS, SparseStore
from softtargets.format.store import LogitStore, StoreMeta, read_meta
from softtargets.augment.views import check_view
from softtargets.read.replay import REPLAY, views_of


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How SoftTargets reads a store (all of it is what gets pickled, with the URL)."""

    temperature: float = 1.0
    rule: str | None = None
    tail: str = "rest"
    view: int | str | None = None  # a stored view, or "replay": every view (read.replay)


@dataclasses.dataclass(frozen=True)
class Table:
    """Every target of a store: row s of `target` (leading S) belongs to sample_ids[s]."""

    sample_ids: np.ndarray  # (S,) int64, increasing
    target: Target
    positions: int | None = None  # L of per-position stores
    view_params: np.ndarray | None = None  # (S, V, P) float32 when replaying views

    def __post_init__(self) -> None:
        self.sample_ids.setflags(write=False)  # lookups rely on it staying sorted

    @functools.cached_property
    def dense_ids(self) -> bool:
        """Whether the sample ids are 0..S-1 (then row s is sample id s: no search)."""
        ids = self.sample_ids
        return bool(len(ids) == 0 or (ids[0] == 0 and ids[-1] == len(ids) - 1))


@dataclasses.dataclass(frozen=True)
class Source:
    """A store opened and checked for the options; `load` reads every target, `units` says how
    to stream them (read.units), `convert` turns sparse rows into targets at T (sparse stores)."""

    meta: StoreMeta
    rule: str | None
    load: Callable[[], Table]
    units: UnitSpec
    convert: Callable[[sp.SparseRows], SparseTargets] | None = None


def open_source(url: str, opts: ReadOptions) -> Source:
    """Open `url` for `opts`, refusing in one line what the store cannot give."""
    _check_options(opts)
    meta, _ = read_meta(url)
    if meta.kind in KINDS:
        return _sparse_source(url, opts)
    store = LogitStore.open(url)
    if opts.view == REPLAY:
        return _replay_source(url, store, opts)
    if opts.view is not None:
        check_view(url, store.meta.extra, opts.view)
    if ensemble.is_ensemble(store):
        # view 0 is what member_logits hold: read the cheaper array
        members = ensemble.open_targets(store, rule=opts.rule, temperature=opts.temperature,
                                        view=opts.view or None)
        units = UnitSpec(url, ENSEMBLE_KIND, temperature=opts.temperature, rule=members.rule,
                         view=opts.view)
        return Source(store.meta, members.rule, functools.partial(
            _dense_table, url, members.read_all, opts.temperature, log_probs=True), units)
    _refuse_rule(url, opts, "holds one teacher's logits")
    units = UnitSpec(url, LOGITS_KIND, temperature=opts.temperature, view=opts.view)
    read = (functools.partial(_read_units, units) if opts.view
            else store.read_all)  # view 0 is the store's `logits` array
    return Source(store.meta, None, functools.partial(_dense_table, url, read,
                                                      opts.temperature, log_probs=False), units)


def _check_options(opts: ReadOptions) -> None:
    if not isinstance(opts.temperature, (int, float)) or not 0 < opts.temperature < float("inf"):
        raise ConfigError(f"temperature must be a finite number > 0, got {opts.temperature!r}; "
                          "the paper uses T in [1, 20]")
    if opts.rule is not None:
        ensemble.check_rule(opts.rule)
    if opts.tail not in sp.TAIL_MODES:
        raise ConfigError(f"tail must be one of {list(sp.TAIL_MODES)}, got {opts.tail!r}")
    if opts.view is not None and opts.view != REPLAY and (
            isinstance(opts.view, bool) or not isinstance(opts.view, (int, np.integer))):
        raise ConfigError(f"view must be a view index (an integer), 'replay' or None, got "
                          f"{opts.view!r}")


def _refuse_rule(url: str, opts: ReadOptions, what: str) -> None:
    if opts.rule is not None:
        raise ConfigError(f"rule={opts.rule!r} combines an ensemble's members, but store {url!r} "
                          f"{what}; drop rule=")


def _order(url: str, ids: np.ndarray) -> np.ndarray:
    """Indices sorting `ids` (R,); refuses a sample id stored twice."""
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        raise StoreError(f"store {url!r}: sample id {ids[order][dup[0]]} has more than one row; "
                         "the store is damaged")
    return order


def _dense_table(url: str, read: Callable[[], tuple[np.ndarray, np.ndarray]],
                 temperature: float, *, log_probs: bool) -> Table:
    ids, values = read()  # (N,) and (N, C): float16 logits, or float32 log-probs at T
    order = _order(url, ids)
    tensor = torch.from_numpy(np.ascontiguousarray(values[order]))
    target = (DenseTarget(temperature, log_probs=tensor) if log_probs
              else DenseTarget(temperature, logits=tensor))
    return Table(ids[order], target)


def _replay_source(url: str, store: LogitStore, opts: ReadOptions) -> Source:
    """Every stored view of each sample (its target and parameters), to replay."""
    views_of(url, store.meta)
    rule = None
    if ensemble.is_ensemble(store):  # refuses a rule or T the store cannot give
        rule = ensemble.open_targets(store, rule=opts.rule, temperature=opts.temperature,
                                     view=ensemble.ALL_VIEWS).rule
    else:
        _refuse_rule(url, opts, "holds one teacher's views")
    units = UnitSpec(url, ENSEMBLE_KIND if rule else LOGITS_KIND, temperature=opts.temperature,
                     rule=rule, view=REPLAY)
    return Source(store.meta, rule, functools.partial(_replay_table, units), units)


def _replay_table(units: UnitSpec) -> Table:
    """Targets (S, V, C) of every view, in sample id order, and their parameters (S, V, P)."""
    ids, values, params = units.open().read_all()  # type: ignore[union-attr]
    order = _order(units.url, ids)
    tensor = torch.from_numpy(np.ascontiguousarray(values[order]))
    target = DenseTarget(units.temperature, log_probs=tensor) if units.kind == ENSEMBLE_KIND \
        else DenseTarget(units.temperature, logits=tensor)
    return Table(ids[order], target, view_params=np.ascontiguousarray(params[order]))


def _read_units(units: UnitSpec) -> tuple[np.ndarray, np.ndarray]:
    """Sample ids (N,) and values (N, ...) of every unit of a row store, in store order."""
    reader = units.open()
    parts = [reader.read(index) for index in range(reader.num_chunks)]  # type: ignore[union-attr]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _sparse_source(url: str, opts: ReadOptions) -> Source:
    store = SparseStore.open(url)
    _refuse_rule(url, opts, f"is a sparse {store.meta.kind!r} store (source "
                            f"{store.spec.source!r})")
    if opts.view is not None:
        raise ConfigError(f"store {url!r} is a sparse {store.meta.kind!r} store, which has no "
                          "augmented views; drop view=")
    convert = functools.partial(sparse_targets, kind=store.meta.kind,
                                temperatures=store.spec.temperatures,
                                temperature=opts.temperature, tail=opts.tail,
                                sample_temperature=store.spec.sample_temperature)
    convert(_empty_rows(store))  # refuses a T (or tail) the store cannot give, reading nothing
    load = _position_table if store.spec.position else _sparse_table
    return Source(store.meta, None, functools.partial(load, store, convert),
                  UnitSpec(url, SPARSE_KIND, temperature=opts.temperature), convert)


def _empty_rows(store: SparseStore) -> sp.SparseRows:
    k, m = store.spec.k, len(store.spec.temperatures)
    counts = np.zeros((0, k), np.int64) if store.meta.kind == "sampled" else None
    return sp.SparseRows(ids=np.zeros((0, k), np.int64), logits=np.zeros((0, k), np.float16),
                         lse=np.zeros(0, np.float32), tail=np.zeros((0, m), np.float32),
                         counts=counts)


def _sparse_table(store: SparseStore, convert: Callable[[sp.SparseRows], SparseTargets]) -> Table:
    ids, _, rows = store.read_all()
    order = torch.from_numpy(_order(store.url, ids))
    return Table(ids[order.numpy()], map_tensors(convert(rows), lambda t: t[order]))


def _position_table(store: SparseStore,
                    convert: Callable[[sp.SparseRows], SparseTargets]) -> Table:
    """Rows (sample_id, position) as sequences: targets (S, L, ...) with positions 0..L-1."""
    ids, positions, rows = store.read_all()  # refuses duplicate (sample_id, position) rows
    order = np.lexsort((positions, ids))
    seq_ids, counts = np.unique(ids, return_counts=True)
    length = int(counts.max())
    if (counts == length).all():  # then a sequence is whole iff its positions are 0..L-1
        grid = positions[order].reshape(len(seq_ids), length)
        bad = np.flatnonzero((grid != np.arange(length)).any(axis=1))
    else:
        bad = np.flatnonzero(counts != length)
    if bad.size:
        sid = int(seq_ids[bad[0]])
        have = np.sort(positions[ids == sid])
        raise StoreError(_gap_message(store.url, sid, have, length))
    picked = torch.from_numpy(order)
    target = map_tensors(convert(rows), lambda t: t[picked].reshape(len(seq_ids), length,
                                                                      *t.shape[1:]))
    return Table(seq_ids, PositionTargets(target), length)


def _gap_message(url: str, sid: int, have: np.ndarray, length: int) -> str:
    shown = ", ".join(map(str, have[:8].tolist())) + (", ..." if len(have) > 8 else "")
    return (f"store {url!r}: sequence {sid} (sample_id) has {len(have)} positions [{shown}], "
            f"not 0..{length - 1}; every sequence needs one row per position 0..L-1 (L = "
            f"{length}, its longest); rewrite the store with every position of every sequence")

