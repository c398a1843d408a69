"""LogitWriter: write a store from your own inference loop, in any batch size.

    with LogitWriter("teacher.zarr", dataset=data, targets=TopK(32)) as writer:
        for rows in writer.todo_rows():              # this process's rows still to compute
            for a in range(rows.start, rows.stop, 256):
                sl = slice(a, min(rows.stop, a + 256))
                writer.append(data.ids(sl), teacher(torch.from_numpy(data.inputs(sl))))
    meta = writer.meta                               # complete: every row was appended

Rows may come in any order and any batch size: each goes to its place (row = its sample's row
in the dataset) in a buffer of its write unit, and a unit is written through the one write
session (write/session.py: lease, resume, torchrun ranks) as soon as all its rows are in. In
sample-id order, one unit is buffered at a time; in random order, up to every unit.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from softtargets.format.codecs import to_float16
from softtargets.datasets.base import as_numpy
from softtargets.write.distributed import ranks_from_env
from softtargets.errors import AppendError, ConfigError, IncompleteStoreError
from softtargets.format.records import check_topk, to_sparse_rows
from softtargets.format.sparse import SparseRows
from softtargets.format.store import StoreMeta, unit_rows
from softtargets.format.ensemble import MEMBER_LOGITS
from softtargets.write.members import check_members, mean_of_members, member_layout
from softtargets.write.options import WriteOptions, session_chunk_rows
from softtargets.write.rows import RowMap
from softtargets.write.session import RowArray, WriteSession
from softtargets.write.sources import source_of
from softtargets.write.targets import Dense, Targets, check_targets
from softtargets.write.view_rows import check_views, split_views, views_layout

MISSING_LISTED = 10  # sample ids named when close() finds rows missing


class LogitWriter:
    """A store of `targets` (Dense(), TopK(k), Sampled(k)) filled by `append`, finalized by
    `close` (or the end of a `with` block).

    The data: `dataset` (a softtargets dataset: its classes, sample ids, identity, and the input
    digest of each chunk's rows are recorded), or `num_classes`/`class_names`, `n` and an
    optional `dataset_identity` dict; `dataset_id` (a name for this version of the data) is
    added to the identity. `positions`: rows per sequence position (True: the
    dataset's L; an int L without a dataset), then `append` takes logits (B, L, C).
    `teacher`: a dict recorded as the store's teacher identity. `members`: M ensemble members
    (Dense targets): `append` takes logits (B, M, C), kept per member in `member_logits` with
    their mean as `logits`, and `teacher` is a list of M dicts. `views`: a Views option (Dense
    targets, one row per sample): `append` takes every view's logits (B, [M,] V, C), kept in
    `view_logits` (`member_view_logits`) with each view's parameters, view 0 as the row's
    logits. `resume`: keep the verified units of an interrupted store and write the rest
    (`todo_rows()`).
    """

    def __init__(self, store: str, *, dataset: Any = None, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, n: int | None = None,
                 dataset_identity: dict[str, Any] | None = None, targets: Targets = Dense(),
                 chunk_rows: int | None = None, shard_rows: int | None = None,
                 compressor: str | None = None, overwrite: bool = False, resume: bool = False,
                 break_lock: bool = False, teacher: Any = None,
                 positions: bool | int = False, dataset_id: str | None = None,
                 members: int | None = None, views: Any = None) -> None:
        self.targets = check_targets(targets)
        self.source = source_of(dataset, num_classes=num_classes, class_names=class_names, n=n,
                                identity=dataset_identity, positions=positions,
                                dataset_id=dataset_id)
        if self.source.rows.positions and not self.targets.positions_allowed:
            raise ConfigError(f"{type(self.targets).__name__}() targets have one row per sample; "
                              "rows per sequence position need TopK(k) or Sampled(k)")
        self.members = check_members(members, self.targets, self.source.rows.positions)
        self.views = check_views(views, self.targets, self.source.rows.positions)
        options = WriteOptions(store=str(store), overwrite=overwrite, resume=resume,
                               break_lock=break_lock, chunk_rows=chunk_rows,
                               shard_rows=shard_rows, compressor=compressor)
        identity, arrays, extra = self._layout(teacher, options)
        self.session = WriteSession(
            options, n=self.source.rows.n, class_names=self.source.class_names,
            dataset=self.source.identity, teacher=identity, ranks=ranks_from_env(),
            targets=self.targets, config=self._config(options), rows=self.source.rows,
            inputs=self.source.dataset, arrays=arrays, extra=extra)
        self.session.__enter__()
        self._todo = set(self.session.todo)
        meta = self.session.writer.meta if self.session.writer is not None else self.session.meta
        self._unit_rows = unit_rows(meta)  # rows of one write unit (a chunk, or a shard)
        self._done: set[int] = set()
        # unit -> (buffers of its rows by name, filled (rows,) bool)
        self._units: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        self.meta: StoreMeta | None = self.session.meta if self.session.meta is not None \
            and self.session.meta.complete else None
        self._closed = False

    def _layout(self, teacher: Any, options: WriteOptions,
                ) -> tuple[dict[str, Any], tuple[RowArray, ...], dict[str, Any]]:
        """(the store's teacher key, extra row arrays, extra attributes)."""
        identity, arrays, extra = self._member_layout(teacher, options)
        if self.views is not None:
            view_arrays, view_extra = views_layout(self.views, members=self.members,
                                                   num_classes=len(self.source.class_names))
            arrays, extra = arrays + view_arrays, {**extra, **view_extra}
        return identity, arrays, extra

    def _member_layout(self, teacher: Any, options: WriteOptions,
                       ) -> tuple[dict[str, Any], tuple[RowArray, ...], dict[str, Any]]:
        if self.members is None:
            if teacher is not None and not isinstance(teacher, dict):
                raise ConfigError(f"teacher must be a dict identifying the teacher (e.g. "
                                  f"{{'arch': 'resnet18', 'checkpoint_sha256': ...}}), got "
                                  f"{teacher!r}")
            return dict(teacher or {}), (), {}
        n, c = self.source.rows.n, len(self.source.class_names)
        rows = session_chunk_rows(self.targets, options.chunk_rows, n=n, num_classes=c,
                                  per_sample=1)
        return member_layout(teacher, self.members, n=n, num_classes=c, chunk_rows=rows)

    def _config(self, options: WriteOptions) -> dict[str, Any]:
        """What the store records as its settings (compared by a resume)."""
        out = {"writer": "LogitWriter", "targets": self.targets.to_json(),
               "positions": self.source.rows.positions, "members": self.members,
               "chunk_rows": options.chunk_rows, "shard_rows": options.shard_rows,
               "compressor": options.compressor}
        if self.views is not None:  # only then: stores without views keep their settings
            out["views"] = self.views.to_json()
        return out

    # -- what is left to do -------------------------------------------------------------------

    @property
    def rows(self) -> RowMap:
        """The store rows of the dataset's samples."""
        return self.source.rows

    def todo_units(self) -> list[tuple[int, slice]]:
        """(unit index, its dataset rows) of each unit this process still has to write."""
        return [(index, self.rows.dataset_rows(self.session.writer.unit_slice(index)))
                for index in sorted(self._todo - self._done)]

    def todo_rows(self) -> list[slice]:
        """The dataset rows whose logits this process still has to append: its units not yet
        written (all of them for a new store; those that failed verification on resume)."""
        out: list[slice] = []
        for _, rows in self.todo_units():
            if out and out[-1].stop >= rows.start:
                out[-1] = slice(out[-1].start, max(out[-1].stop, rows.stop))
            else:
                out.append(rows)
        return out

    # -- appending ----------------------------------------------------------------------------

    def append(self, sample_ids: Any, logits: Any) -> None:
        """Add the logits (B, C) (or (B, L, C) per position, (B, [M,] [V,] C) with members and
        views) of samples `sample_ids` (B,), any
        batch size, numpy or torch (detached), float; rows of units already written by another
        process or kept by a resume are ignored."""
        self._check_open()
        if self.targets.precomputed:
            raise AppendError(f"LogitWriter.append: {type(self.targets).__name__} targets take "
                              "precomputed rows: use append_topk(sample_ids, token_ids, "
                              "logprobs)")
        ids, values = self._checked(sample_ids, logits)
        self._add(ids, {"logits": values})

    def append_topk(self, sample_ids: Any, token_ids: Any, logprobs: Any) -> None:
        """Add precomputed top-k rows (TopKLogProbs targets) of samples `sample_ids` (B,):
        token_ids (B, k) integers and their normalised log-probs (B, k) at T = 1, descending;
        (B, L, k) per position. Checked as docs/LM.md says (ids in range and distinct, log-probs
        finite and descending, top-k mass at most 1 + the targets' mass_tolerance)."""
        self._check_open()
        if not self.targets.precomputed:
            raise AppendError(f"LogitWriter.append_topk: {type(self.targets).__name__} targets "
                              "convert dense logits: use append(sample_ids, logits), or "
                              "targets=TopKLogProbs(k)")
        ids, tok, lp = self._checked_topk(sample_ids, token_ids, logprobs)
        L, k = self.rows.per_sample, tok.shape[-1]
        values = check_topk(tok.reshape(len(ids), L, k), lp.reshape(len(ids), L, k),
                            vocab_size=len(self.source.class_names),
                            tolerance=self.targets.mass_tolerance,  # type: ignore[attr-defined]
                            name=lambda b: f"LogitWriter.append_topk: sample id {ids[b]}",
                            positions=bool(self.rows.positions))
        rows = to_sparse_rows(tok.reshape(-1, k), values.reshape(-1, k))  # (B * L, k)
        self._add(ids, {"ids": rows.ids, "logits": rows.logits, "lse": rows.lse,
                        "tail": rows.tail})

    def _add(self, ids: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Place the value rows (B * L, ...) of samples `ids` (B,) in their units' buffers."""
        rows = self.source.store_rows(ids)  # (B * L,) store row of each value row
        units = rows // self._unit_rows
        self._refuse_repeats(rows, units, ids)
        for index in np.unique(units).tolist():
            if index not in self._todo:
                continue  # another rank's unit, or kept by a resume
            pick = units == index
            self._place(index, rows[pick], {k: v[pick] for k, v in values.items()})

    def _checked(self, sample_ids: Any, logits: Any) -> tuple[np.ndarray, np.ndarray]:
        """(ids (B,) int64, values (B * L, C) float16), or one line saying what is wrong."""
        if getattr(logits, "requires_grad", False):
            raise AppendError("LogitWriter.append: logits require grad (they are part of an "
                              "autograd graph); compute them under torch.inference_mode() or "
                              "torch.no_grad(), or pass logits.detach()")
        values, ids = as_numpy(logits), as_numpy(sample_ids)
        if values.dtype.kind != "f":
            raise AppendError(f"LogitWriter.append: logits must be floating point, got dtype "
                              f"{values.dtype}")
        L, c, m = self.rows.positions, len(self.source.class_names), self.members
        v = self.views.count if self.views is not None else None
        want = (len(ids), *((L,) if L else ()), *((m,) if m else ()), *((v,) if v else ()), c)
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or values.shape != want:
            axes = "(B, L, C)" if L else \
                f"(B, {'M, ' if m else ''}{'V, ' if v else ''}C)"
            raise AppendError(f"LogitWriter.append: needs sample_ids (B,) integers and logits "
                              f"{axes} = {want}, got sample_ids of shape {ids.shape} dtype "
                              f"{ids.dtype} and logits of shape {values.shape}")
        ids = ids.astype(np.int64)
        per_row = np.repeat(ids, L) if L else ids
        rows = values.reshape(len(per_row), *want[1 + bool(L):])  # (B * L, [M,] C)
        return ids, to_float16(rows, row_ids=per_row)

    def _checked_topk(self, sample_ids: Any, token_ids: Any, logprobs: Any,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (B,) int64, token ids (B, [L,] k) int64, log-probs float64), or one line."""
        ids, tok, lp = (as_numpy(a) for a in (sample_ids, token_ids, logprobs))
        L, k = self.rows.positions, self.targets.k  # type: ignore[attr-defined]
        want = (len(ids), *((L,) if L else ()), k)
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or tok.shape != want \
                or lp.shape != want or tok.dtype.kind not in "iu" or lp.dtype.kind != "f":
            axes = "(B, L, k)" if L else "(B, k)"
            raise AppendError(f"LogitWriter.append_topk: needs sample_ids (B,) integers, "
                              f"token_ids {axes} = {want} integers and logprobs {want} floats, "
                              f"got {ids.shape} {ids.dtype}, {tok.shape} {tok.dtype} and "
                              f"{lp.shape} {lp.dtype}")
        return ids.astype(np.int64), tok.astype(np.int64), lp.astype(np.float64)

    def _refuse_repeats(self, rows: np.ndarray, units: np.ndarray, ids: np.ndarray) -> None:
        """A sample appended twice (in this batch, or before) is refused before any is kept."""
        per = self.rows.per_sample
        first, first_units = rows[::per], units[::per]  # one row per sample (its unit's too)
        order = np.sort(first)
        twice = order[1:][order[1:] == order[:-1]]
        seen = twice[:1].tolist()
        for unit in np.unique(first_units).tolist() if not seen else ():
            mine = first[first_units == unit]
            if unit in self._done:
                seen = mine[:1].tolist()
            elif unit in self._units:
                seen = mine[self._units[unit][1][mine - unit * self._unit_rows]][:1].tolist()
            if seen:
                break
        if seen:
            sid = ids[np.flatnonzero(first == seen[0])[0]]
            raise AppendError(f"LogitWriter.append: sample id {int(sid)} was appended more than "
                              "once; append each sample once")

    def _place(self, index: int, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Put rows into unit `index`'s buffers; write the unit once it is full."""
        sl = self.session.writer.unit_slice(index)
        if index not in self._units:
            count = sl.stop - sl.start
            self._units[index] = ({k: np.empty((count, *v.shape[1:]), v.dtype)
                                   for k, v in values.items()}, np.zeros(count, bool))
        bufs, filled = self._units[index]
        for name, v in values.items():
            bufs[name][rows - sl.start] = v
        filled[rows - sl.start] = True
        if filled.all():
            del self._units[index]
            if self.targets.precomputed:  # (rows, k) top-k rows as given
                self.session.write(index, sparse=SparseRows(**bufs))
                self._done.add(index)
                return
            logits, rows = bufs["logits"], {}
            if self.views is not None:  # (rows, [M,] V, C): every view, view 0 as the row's
                ids = self.source.sample_ids_of(np.arange(sl.start, sl.stop))
                logits, rows = split_views(self.views, logits, ids, members=self.members)
            if self.members:  # (rows, M, C): the members, and their mean as the v1 logits
                rows[MEMBER_LOGITS] = logits
                logits = mean_of_members(logits)
            self.session.write(index, logits=logits, rows=rows)
            self._done.add(index)

    # -- closing ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise AppendError("LogitWriter is closed; open a new one (resume=True continues an "
                              "incomplete store)")

    def missing_ids(self) -> np.ndarray:
        """Sample ids (int64, sorted) this process was to append but has not."""
        rows = []
        for index in sorted(self._todo - self._done):
            sl = self.session.writer.unit_slice(index)
            unit = np.arange(sl.start, sl.stop)
            rows.append(unit[~self._units[index][1]] if index in self._units else unit)
        if not rows:
            return np.zeros(0, np.int64)
        return np.unique(self.source.sample_ids_of(np.concatenate(rows)))

    def close(self) -> StoreMeta:
        """Finalize: every row must have been appended (on every rank); the store is marked
        complete last. Rows missing leave it incomplete (resumable) and are named."""
        if self._closed:
            if self.meta is None:
                raise IncompleteStoreError("LogitWriter was closed without completing the store")
            return self.meta
        self._closed = True
        missing = self.missing_ids()
        failure = None
        if missing.size:
            shown = ", ".join(map(str, missing[:MISSING_LISTED].tolist()))
            more = ", ..." if missing.size > MISSING_LISTED else ""
            failure = IncompleteStoreError(
                f"LogitWriter.close: {missing.size} sample(s) were never appended (sample ids "
                f"{shown}{more}); the store is left incomplete: append every row (resume=True "
                "continues it)")
        self._units.clear()
        if failure is not None:
            self.session.__exit__(type(failure), failure, None)  # releases, finalizes nothing
            raise failure
        self.session.__exit__(None, None, None)
        self.meta = self.session.meta
        return self.meta

    def abort(self, error: BaseException | None = None) -> None:
        """Stop without finalizing: the lease is released, the store stays incomplete."""
        if not self._closed:
            self._closed = True
            self._units.clear()
            error = error or IncompleteStoreError("LogitWriter aborted")
            self.session.__exit__(type(error), error, None)

    def __enter__(self) -> LogitWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            self.abort(exc)
            return False
        self.close()
        return False
