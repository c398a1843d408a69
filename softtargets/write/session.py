"""One stage-1 write of any kind: lease, create or resume, this rank's units, heartbeat,
finalize last.

Every store kind (the target specs of write/targets.py: dense, top-k, sampled; with extra row
arrays such as views, rows per sequence position, and input digests) is written through this
one session, so each gets the lease, `--resume`, sharding where its layout has it and torchrun
ranks:

    with WriteSession(options, n=..., class_names=..., dataset=..., teacher=..., ranks=...,
                      targets=TopK(32)) as s:
        for index in s.todo:                       # units this rank still has to write
            sl = s.writer.unit_slice(index)
            s.write(index, logits=...)             # dense values (rows, C) of the unit
    meta = s.meta                                  # complete, written by rank 0 after a barrier

An exception on any rank finalizes nothing and releases the lease; SIGKILL leaves the lease and
an incomplete store, which `--resume` takes over (see lock.py) and completes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from softtargets.format.codecs import compressor_codecs, to_float16
from softtargets.config import to_dict
from softtargets.format.destination import sweep_partial_files
from softtargets.format.digests import INPUT, INPUTS_KEY, DigestCheck, add_input_digest_array
from softtargets.format.digests import META as DIGESTS_META
from softtargets.format.digests import META_KEY as DIGESTS_KEY
from softtargets.write.distributed import Comm, Ranks, error_status, my_units, raise_status
from softtargets.errors import (ForeignDataError, IncompleteStoreError, StoreError,
                                StoreExistsError)
from softtargets.write.lock import StoreLock
from softtargets.format.schema import row_arrays
from softtargets.format.sparse import SparseRows
from softtargets.format.store import ATTR_KEY, RowWriter, StoreMeta, add_row_array, read_meta
from softtargets.write.options import (check_resumable, effective_shard_rows,
                                       session_chunk_rows, store_exists)
from softtargets.write.rows import RowMap, expected_ids, unit_ok, write_input_digests
from softtargets.write.targets import Dense, Targets, check_targets

@dataclasses.dataclass(frozen=True)
class RowArray:
    """An extra float array (n, *row_shape) written unit by unit beside `logits`, with the same
    chunk and shard grid along rows (view_logits, view_params). float16 arrays get the checked
    cast of `logits`; never-written rows read as NaN."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str  # "float16" or "float32"
    dimension_names: tuple[str, ...]
    members: int | None = None  # M: an (M, n, *row_shape) array, chunks of one member
    # written member by member (`WriteSession.write_member`) before the unit's `write`, so a
    # caller needs one member's model in memory at a time; `write` then takes no values of it
    per_member: bool = False

    def unit_shape(self, rows: int) -> tuple[int, ...]:
        """Shape of one unit's values as `write` takes them: rows first."""
        return (rows, *((self.members,) if self.members else ()), *self.row_shape)


class WriteSession:
    """The lease, the writer and this rank's share of units of one stage-1 run.

    cfg: a WriteOptions (or a LogitsConfig, which has its keys); config: what the store records
    and a resume compares (default: cfg as a dict); rows: the store rows of the dataset (default:
    row r = sample r); inputs: the softtargets dataset whose input digests are recorded per
    chunk in `digests/input` (None: not recorded).
    """

    def __init__(self, cfg: Any, *, n: int, class_names: tuple[str, ...],
                 dataset: dict[str, Any], teacher: dict[str, Any], ranks: Ranks = Ranks(),
                 device_type: str = "cpu", arrays: tuple[RowArray, ...] = (),
                 extra: dict[str, Any] | None = None, targets: Targets | None = None,
                 config: dict[str, Any] | None = None, rows: RowMap | None = None,
                 inputs: Any = None, version: int | None = None,
                 before_finalize: Callable[[], None] | None = None) -> None:
        self.targets = check_targets(targets if targets is not None else Dense())
        # the config as asked (compressor None: the kind's default); the store's `compressor`
        # key records the one used
        self.config = config if config is not None else to_dict(cfg)
        if getattr(cfg, "compressor", None) is None:
            cfg = dataclasses.replace(cfg, compressor=self.targets.default_compressor)
        self.cfg = cfg
        self.arrays = arrays  # extra row arrays beside the kind's own
        self.extra = extra or {}  # recorded in the store's attributes at creation
        self.rows = rows
        self.inputs = inputs
        self.version = version  # the store's format version, when not the kind's default
        self.before_finalize = before_finalize  # rank 0, after every unit, before `complete`
        if rows is not None and rows.n != n:  # internal invariant, not user input
            raise RuntimeError(f"write session of {n} rows given a row map of {rows.n}")
        self.spec = {"n": n, "class_names": tuple(class_names), "dataset": dataset,
                     "teacher": teacher}
        self.ranks = ranks
        self.comm = Comm(ranks, device_type=device_type)
        self.lock: StoreLock | None = None
        self.writer: RowWriter | None = None
        self.meta: StoreMeta | None = None
        self.todo: list[int] = []
        self.skipped = 0  # units found written and verified (resume)

    # -- setup --------------------------------------------------------------------------------

    def __enter__(self) -> WriteSession:
        try:
            failure: Exception | None = None
            if self.ranks.is_main:
                try:
                    self._open_main()
                except Exception as e:
                    failure = e
                    self._release()
            status, complete = self.comm.broadcast((error_status(failure), self.meta is not None
                                                    and self.meta.complete))
            if failure is not None:
                raise failure
            if status is not None:
                raise_status(status, rank=0)
            if complete:
                self.meta = self.meta or read_meta(self.cfg.store)[0]
                return self
            if not self.ranks.is_main:
                self.writer = self.targets.open_writer(self.cfg.store)
            self._plan()
        except BaseException:
            self.comm.close()
            raise
        return self

    def _open_main(self) -> None:
        cfg = self.cfg
        self.lock = StoreLock(cfg.store, break_lock=cfg.break_lock)
        self.lock.acquire()
        if cfg.resume and store_exists(cfg.store):
            meta, group = read_meta(cfg.store)
            check_resumable(meta, cfg.store, config=self.config, dataset=self.spec["dataset"],
                            teacher=self.spec["teacher"])
            if meta.complete:
                self.meta = meta
                self._release()
                return
            if self._arrays_exist(meta, group):
                sweep_partial_files(cfg.store)  # we hold the lease: no live writer owns them
                self.writer = self.targets.open_writer(cfg.store)
                return
            # killed while creating the arrays: nothing was written yet, start it again
            cfg = dataclasses.replace(cfg, overwrite=True, resume=False)
        try:
            self.writer = self._create(cfg)
        except ForeignDataError:
            raise
        except StoreExistsError as e:
            raise StoreExistsError(f"{e} (or --resume to continue an interrupted run)") from None

    def _arrays_exist(self, meta: StoreMeta, group: Any) -> bool:
        names = [s.name for s in row_arrays(meta.to_json())] + [a.name for a in self.arrays]
        if not all(name in group for name in names):
            return False
        return self.inputs is None or ("digests" in group and INPUT in group["digests"])

    def _row_factor(self, *, num_classes: int) -> int:
        """How many times the widest extra row array's row (e.g. V views' logits or
        parameters) outweighs a row of float16 logits: the default chunk rows are divided by
        it, so that a unit, held in memory while it is written, stays near the default size."""
        widest = max((int(np.prod(a.row_shape)) * np.dtype(a.dtype).itemsize
                      for a in self.arrays), default=0)
        return max(1, -(-widest // (2 * num_classes)))

    def _create(self, cfg: Any) -> RowWriter:
        n, names = self.spec["n"], self.spec["class_names"]
        per_sample = self.rows.per_sample if self.rows is not None else 1
        chunk_rows = session_chunk_rows(self.targets, cfg.chunk_rows, n=n,
                                        num_classes=len(names), per_sample=per_sample)
        factor = self._row_factor(num_classes=len(names))
        if cfg.chunk_rows is None and factor > 1:  # the default, over factor times n rows
            rows = session_chunk_rows(self.targets, None, n=n * factor, num_classes=len(names),
                                      per_sample=per_sample) // factor
            chunk_rows = min(chunk_rows, max(per_sample, rows - rows % per_sample))
        shard_rows = (effective_shard_rows(dataclasses.replace(cfg, chunk_rows=chunk_rows), n=n,
                                           num_classes=len(names))
                      if self.targets.shardable else cfg.shard_rows or None)
        extra = dict(self.extra)
        if self.inputs is not None:
            extra[DIGESTS_KEY] = {**DIGESTS_META, INPUTS_KEY: True}
        writer = self.targets.create_writer(
            cfg.store, n=n, class_names=names, dataset=self.spec["dataset"],
            teacher=self.spec["teacher"], config=self.config, chunk_rows=chunk_rows,
            compressor=cfg.compressor, overwrite=cfg.overwrite, shard_rows=shard_rows,
            extra=extra, position=self.rows is not None and self.rows.positions is not None)
        for a in self.arrays:  # member arrays are never sharded: a chunk holds one member
            add_row_array(writer.group, a.name, n=n, row_shape=a.row_shape,
                          chunk_rows=writer.meta.chunk_rows, dtype=a.dtype,
                          codecs=compressor_codecs(cfg.compressor), fill_value=float("nan"),
                          dimension_names=a.dimension_names, members=a.members,
                          shard_rows=None if a.members else shard_rows)
        if self.inputs is not None:
            add_input_digest_array(writer.group, n=n, chunk_rows=writer.meta.chunk_rows,
                                   unit_rows=writer.unit_rows)
        if self.version is not None:  # e.g. a combined-only ensemble store
            writer.meta = dataclasses.replace(writer.meta, version=self.version)
            writer.group.attrs.update({ATTR_KEY: writer.meta.to_json()})
        return writer

    def _plan(self) -> None:
        """This rank's units; on resume, skip those already written and verified."""
        writer = self._writer()
        resuming = self.cfg.resume
        for index in my_units(writer.num_units, self.ranks):
            if resuming and unit_ok(writer, index, self.rows, self.inputs):
                writer.mark_written(index)
                self.skipped += 1
            else:
                self.todo.append(index)

    def _writer(self) -> RowWriter:
        if self.writer is None:  # internal invariant, not user input
            raise RuntimeError("write session used before its store was opened")
        return self.writer

    # -- writing ------------------------------------------------------------------------------

    def write(self, index: int, *, logits: np.ndarray | None = None,
              sparse: SparseRows | None = None, sample_ids: np.ndarray | None = None,
              positions: np.ndarray | None = None,
              rows: dict[str, np.ndarray] | None = None) -> None:
        """Write whole unit `index`: dense values logits (rows, C), converted to the store's
        kind, or `sparse` rows for precomputed targets (TopKLogProbs); sample ids and positions
        (default: those of the unit's rows); `rows[name]` (rows, *row_shape) for every extra
        array. Refreshes the lease."""
        if (sparse is not None) != self.targets.precomputed or (logits is None) == (sparse is None):
            raise StoreError(f"{type(self.targets).__name__} targets take "
                             f"{'sparse' if self.targets.precomputed else 'logits'} values of "
                             "a unit, and only those")
        if self.lock is not None:
            self.lock.check()  # a writer whose lease was taken over must not write
        try:
            self._write_unit(index, sample_ids=sample_ids, logits=logits, sparse=sparse,
                             positions=positions, rows=rows or {})
        except Exception:
            if self.lock is not None:  # the new holder may have deleted the store under us:
                self.lock.check()      # say so, not what failed because of it
            raise
        if self.lock is not None:
            self.lock.heartbeat()

    def write_member(self, name: str, member: int, rows: slice, values: np.ndarray) -> None:
        """Write member `member`'s rows `rows` (chunk-aligned, inside this rank's units) of
        per-member array `name`: values (rows, *row_shape). Refreshes the lease."""
        if self.lock is not None:
            self.lock.check()
        a = next(a for a in self.arrays if a.name == name and a.per_member)
        values = np.asarray(values)
        if values.shape != (rows.stop - rows.start, *a.row_shape):
            raise StoreError(f"rows {rows.start}..{rows.stop - 1} of {name!r} (member {member}) "
                             f"need shape {(rows.stop - rows.start, *a.row_shape)}, "
                             f"got {values.shape}")
        if a.dtype == "float16":
            values = to_float16(values, first_row=rows.start)
        self._writer().digests.write(name, rows, values.astype(a.dtype, copy=False),
                                     member=member)
        if self.lock is not None:
            self.lock.heartbeat()

    def member_done(self, name: str, member: int, rows: slice) -> bool:
        """On resume, whether member `member`'s rows `rows` of `name` are written and match
        their digests (then they are kept); False for a new store."""
        if not self.cfg.resume:
            return False
        writer = self._writer()
        try:
            data = np.asarray(writer.group[name][member, rows])
            check = DigestCheck(writer.group, writer.meta, "", cache=False)
            return check.mismatch(name, rows.start, data, member=member) is None
        except Exception:  # a damaged or unfinished chunk: rewrite it
            return False

    def _write_unit(self, index: int, *, sample_ids: np.ndarray | None,
                    logits: np.ndarray | None, sparse: SparseRows | None,
                    positions: np.ndarray | None, rows: dict[str, np.ndarray]) -> None:
        writer = self._writer()
        sl = writer.unit_slice(index)
        if sample_ids is None:
            sample_ids, expected = expected_ids(self.rows, sl)
            positions = expected if positions is None else positions
        # extras first: sample_id, written last, marks the unit done
        for a in (a for a in self.arrays if not a.per_member):
            values = np.asarray(rows[a.name])
            if values.shape != a.unit_shape(sl.stop - sl.start):
                raise StoreError(f"unit {index} of {a.name!r} needs shape "
                                 f"{a.unit_shape(sl.stop - sl.start)}, got {values.shape}")
            if a.dtype == "float16":
                values = to_float16(values, first_row=sl.start)
            values = values.astype(a.dtype, copy=False)
            for m in range(a.members or 1):  # (rows, M, ...): one member's chunks at a time
                member = m if a.members else None
                writer.digests.write(a.name, sl, values if member is None else values[:, m],
                                     member=member)
        if self.inputs is not None:
            write_input_digests(writer, index, self.rows, self.inputs)
        if sparse is not None:  # precomputed rows: the kind's writer is a SparseWriter
            writer.write_unit_rows(index, sample_ids=sample_ids, rows=sparse,  # type: ignore
                                   positions=positions)
        else:
            writer.write_unit(index, sample_ids=sample_ids, logits=logits, positions=positions)

    # -- finalize -----------------------------------------------------------------------------

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if self.writer is None:  # already complete: nothing was written
                return False
            statuses = self.comm.gather(error_status(exc))
            if exc is not None:
                return False
            for rank, status in enumerate(statuses):
                if status is not None:
                    raise_status(status, rank=rank)
            failure: Exception | None = None
            if self.ranks.is_main:
                try:
                    self.meta = self._finalize()
                except Exception as e:
                    failure = e
            status = self.comm.broadcast(error_status(failure))
            if failure is not None:
                raise failure
            if status is not None:
                raise_status(status, rank=0)
            if not self.ranks.is_main:
                self.meta = read_meta(self.cfg.store)[0]
            return False
        finally:
            self._release()
            self.comm.close()

    def _finalize(self) -> StoreMeta:
        """Check units written by other ranks, then mark the store complete (rank 0 only)."""
        writer = self._writer()
        for index in range(writer.num_units):
            if set(writer.unit_chunks(index)) <= writer.written:
                continue
            # input digests are written before sample_id, which unit_ok checks: not re-read
            if not unit_ok(writer, index, self.rows):
                sl = writer.unit_slice(index)
                raise IncompleteStoreError(f"cannot finalize {self.cfg.store!r}: unit {index} "
                                           f"(rows {sl.start}..{sl.stop - 1}) is missing or "
                                           "damaged after every rank finished")
            writer.mark_written(index)
        if self.lock is not None:
            self.lock.heartbeat()  # a writer whose lease was taken over must not finalize
        if self.before_finalize is not None:
            self.before_finalize()
        return writer.finalize()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
