"""One stage-1 write: lease, create or resume, this rank's units, heartbeat, finalize last.

Used by teacher.write_teacher_logits:

    with WriteSession(cfg, n=..., class_names=..., dataset=..., teacher=..., ranks=...) as s:
        for index in s.todo:                       # units this rank still has to write
            sl = s.writer.unit_slice(index)
            s.write(index, sample_ids=..., logits=...)
    meta = s.meta                                  # complete, written by rank 0 after a barrier

An exception on any rank finalizes nothing and releases the lease; SIGKILL leaves the lease and
an incomplete store, which `--resume` takes over (see lock.py) and completes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np

from softtargets.config import LogitsConfig, to_dict
from softtargets.destination import sweep_partial_files
from softtargets.digests import DigestCheck
from softtargets.distributed import Comm, Ranks, error_status, my_units, raise_status
from softtargets.errors import (
    ForeignDataError,
    IncompleteStoreError,
    ResumeMismatchError,
    StoreError,
    StoreExistsError,
)
from softtargets.lock import StoreLock
from softtargets.remote import filesystem, is_remote, local_path
from softtargets.store import (
    LOGITS,
    SAMPLE_ID,
    StoreMeta,
    StoreWriter,
    add_row_array,
    compressor_codecs,
    default_chunk_rows,
    read_meta,
    to_float16,
)

# Test-only hook: seconds to sleep after each written unit, so a test can kill a run mid-way.
DELAY_ENV = "SOFTTARGETS_TEST_UNIT_DELAY"
AUTO_SHARD_MIN_CHUNKS = 256  # above this many chunks a store is sharded automatically
SHARD_BYTES = 64 * 1024 * 1024  # target size of one shard object
# Config keys that may differ between a run and its resumption (they do not change the bytes).
RESUME_IGNORED = ("overwrite", "resume", "break_lock", "store", "teacher")


def store_exists(url: str) -> bool:
    """Whether a Zarr group (zarr.json) is at `url`."""
    if not is_remote(url):
        return os.path.exists(os.path.join(local_path(url), "zarr.json"))
    fs, path = filesystem(url)
    fs.invalidate_cache()
    return bool(fs.exists(path.rstrip("/") + "/zarr.json"))


def effective_shard_rows(cfg: LogitsConfig, *, n: int, num_classes: int) -> int | None:
    """cfg.shard_rows, or automatic shards of ~SHARD_BYTES when a store has many chunks."""
    chunk_rows = cfg.chunk_rows or default_chunk_rows(n, num_classes)
    if cfg.shard_rows is not None:
        return cfg.shard_rows or None  # 0 turns sharding off
    if math.ceil(n / chunk_rows) <= AUTO_SHARD_MIN_CHUNKS:
        return None
    per_shard = max(1, SHARD_BYTES // (chunk_rows * num_classes * 2))
    return chunk_rows * per_shard


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Settings that change the bytes; keys added to LogitsConfig later take their defaults."""
    defaults = to_dict(LogitsConfig())
    out = {k: v for k, v in {**defaults, **config}.items() if k not in RESUME_IGNORED}
    if isinstance(out.get("data"), dict):
        data = {**defaults["data"], **out["data"]}
        out["data"] = {k: v for k, v in data.items() if k != "data_dir"}
    return out


def check_resumable(meta: StoreMeta, url: str, *, config: dict[str, Any],
                    dataset: dict[str, Any], teacher: dict[str, Any]) -> None:
    """Refuse to resume a store written with another teacher, dataset or settings."""
    def refuse(what: str, stored: Any, now: Any) -> None:
        raise ResumeMismatchError(
            f"cannot resume store {url!r}: its {what} is {stored!r} but this run's is {now!r}; "
            "rerun with the original teacher, dataset and settings, or pass --overwrite "
            "to start again")
    for key in ("checkpoint_sha256", "arch", "precision"):
        if meta.teacher.get(key) != teacher.get(key):
            refuse(f"teacher {key}", meta.teacher.get(key), teacher.get(key))
    for key in ("name", "split", "n", "limit", "fingerprint"):
        if meta.dataset.get(key) != dataset.get(key):
            refuse(f"dataset {key}", meta.dataset.get(key), dataset.get(key))
    stored, now = _comparable(meta.config), _comparable(config)
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            refuse(f"setting {key}", stored.get(key), now.get(key))


@dataclasses.dataclass(frozen=True)
class RowArray:
    """An extra float array (n, *row_shape) written unit by unit beside `logits`, with the same
    chunk and shard grid along rows (issue 7: view_logits, view_params). float16 arrays get the
    checked cast of `logits`; never-written rows read as NaN."""

    name: str
    row_shape: tuple[int, ...]
    dtype: str  # "float16" or "float32"
    dimension_names: tuple[str, ...]
    all_finite: bool = True  # False: only each row's first value must be finite (NaN = unused)

    def written(self, values: np.ndarray) -> bool:
        """Whether `values` (rows, *row_shape) read back is fully written (not the NaN fill)."""
        flat = values.reshape(len(values), -1)
        return bool(np.isfinite(flat if self.all_finite else flat[:, 0]).all())


def unit_ok(writer: StoreWriter, index: int, arrays: tuple[RowArray, ...] = ()) -> bool:
    """Unit `index` decodes (crc32c), holds ids start..stop-1 in order, finite logits (and
    finite values in every extra array), and every chunk matches its digest."""
    sl = writer.unit_slice(index)
    check = DigestCheck(writer.group, writer.meta, "", cache=False)  # other ranks still write
    try:
        ids = np.asarray(writer.sample_id[sl])
        logits = np.asarray(writer.logits[sl])
        extras = {a.name: np.asarray(writer.group[a.name][sl]) for a in arrays}
        for name, values in ((SAMPLE_ID, ids), (LOGITS, logits), *extras.items()):
            check.check_rows(name, sl.start, values)
    except Exception:  # a damaged, misplaced or unfinished unit: rewrite it
        return False
    return bool(np.array_equal(ids, np.arange(sl.start, sl.stop)) and np.isfinite(logits).all()
                and all(a.written(extras[a.name]) for a in arrays))


class WriteSession:
    """The lease, the writer and this rank's share of units of one stage-1 run."""

    def __init__(self, cfg: LogitsConfig, *, n: int, class_names: tuple[str, ...],
                 dataset: dict[str, Any], teacher: dict[str, Any], ranks: Ranks = Ranks(),
                 device_type: str = "cpu", arrays: tuple[RowArray, ...] = (),
                 extra: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.arrays = arrays  # extra row arrays beside logits (issue 7)
        self.extra = extra or {}  # recorded in the store's attributes at creation
        self.spec = {"n": n, "class_names": tuple(class_names), "dataset": dataset,
                     "teacher": teacher}
        self.ranks = ranks
        self.comm = Comm(ranks, device_type=device_type)
        self.lock: StoreLock | None = None
        self.writer: StoreWriter | None = None
        self.meta: StoreMeta | None = None
        self.todo: list[int] = []
        self.skipped = 0  # units found written and verified (resume)
        self.delay = float(os.environ.get(DELAY_ENV, "0") or 0)

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
                self.writer = StoreWriter.open(self.cfg.store)
            self._plan()
        except BaseException:
            self.comm.close()
            raise
        return self

    def _open_main(self) -> None:
        cfg = self.cfg
        self.lock = StoreLock(cfg.store, break_lock=cfg.break_lock)
        self.lock.acquire()
        config = to_dict(cfg)
        if cfg.resume and store_exists(cfg.store):
            meta, group = read_meta(cfg.store)
            check_resumable(meta, cfg.store, config=config, dataset=self.spec["dataset"],
                            teacher=self.spec["teacher"])
            if meta.complete:
                self.meta = meta
                self._release()
                return
            if all(name in group for name in (LOGITS, SAMPLE_ID, *(a.name for a in self.arrays))):
                sweep_partial_files(cfg.store)  # we hold the lease: no live writer owns them
                self.writer = StoreWriter.open(cfg.store)
                return
            # killed while creating the arrays: nothing was written yet, start it again
            cfg = dataclasses.replace(cfg, overwrite=True, resume=False)
        n, names = self.spec["n"], self.spec["class_names"]
        shard_rows = effective_shard_rows(cfg, n=n, num_classes=len(names))
        try:
            self.writer = StoreWriter.create(
                cfg.store, n=n, class_names=names, dataset=self.spec["dataset"],
                teacher=self.spec["teacher"], config=config, chunk_rows=cfg.chunk_rows,
                compressor=cfg.compressor, overwrite=cfg.overwrite, shard_rows=shard_rows,
                extra=self.extra)
        except ForeignDataError:
            raise
        except StoreExistsError as e:
            raise StoreExistsError(f"{e} (or --resume to continue an interrupted run)") from None
        for a in self.arrays:
            add_row_array(self.writer.group, a.name, n=n, row_shape=a.row_shape,
                          chunk_rows=self.writer.meta.chunk_rows, dtype=a.dtype,
                          codecs=compressor_codecs(cfg.compressor), fill_value=float("nan"),
                          dimension_names=a.dimension_names, shard_rows=shard_rows)

    def _plan(self) -> None:
        """This rank's units; on resume, skip those already written and verified."""
        if self.writer is None:  # internal invariant, not user input
            raise RuntimeError("write session used before its store was opened")
        resuming = self.cfg.resume
        for index in my_units(self.writer.num_units, self.ranks):
            if resuming and unit_ok(self.writer, index, self.arrays):
                self.writer.mark_written(index)
                self.skipped += 1
            else:
                self.todo.append(index)

    # -- writing ------------------------------------------------------------------------------

    def write(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray,
              rows: dict[str, np.ndarray] | None = None) -> None:
        """Write whole unit `index` (sample_ids (rows,), logits (rows, C), and `rows[name]`
        (rows, *row_shape) for every extra array); refresh the lease."""
        if self.lock is not None:
            self.lock.check()  # a writer whose lease was taken over must not write
        try:
            self._write_unit(index, sample_ids=sample_ids, logits=logits, rows=rows or {})
        except Exception:
            if self.lock is not None:  # the new holder may have deleted the store under us:
                self.lock.check()      # say so, not what failed because of it
            raise
        if self.lock is not None:
            self.lock.heartbeat()
        if self.delay:
            time.sleep(self.delay)

    def _write_unit(self, index: int, *, sample_ids: np.ndarray, logits: np.ndarray,
                    rows: dict[str, np.ndarray]) -> None:
        writer = self.writer
        if writer is None:  # internal invariant, not user input
            raise RuntimeError("write session used before its store was opened")
        sl = writer.unit_slice(index)
        for a in self.arrays:  # extras first: sample_id, written last, marks the unit done
            values = np.asarray(rows[a.name])
            if values.shape != (sl.stop - sl.start, *a.row_shape):
                raise StoreError(f"unit {index} of {a.name!r} needs shape "
                                 f"{(sl.stop - sl.start, *a.row_shape)}, got {values.shape}")
            if a.dtype == "float16":
                flat = to_float16(values.reshape(len(values), -1), first_row=sl.start)
                values = flat.reshape(values.shape)
            writer.digests.write(a.name, sl, values.astype(a.dtype))
        writer.write_unit(index, sample_ids=sample_ids, logits=logits)

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
        if self.writer is None:  # internal invariant, not user input
            raise RuntimeError("write session used before its store was opened")
        writer = self.writer
        for index in range(writer.num_units):
            if set(writer.unit_chunks(index)) <= writer.written:
                continue
            if not unit_ok(writer, index, self.arrays):
                sl = writer.unit_slice(index)
                raise IncompleteStoreError(f"cannot finalize {self.cfg.store!r}: unit {index} "
                                           f"(rows {sl.start}..{sl.stop - 1}) is missing or "
                                           "damaged after every rank finished")
            writer.mark_written(index)
        if self.lock is not None:
            self.lock.heartbeat()  # a writer whose lease was taken over must not finalize
        return writer.finalize()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

