"""`softtargets verify`: prove a store is intact and is what it claims. numpy and zarr only.

Checks, chunk by chunk: the storage object exists, both arrays decode (crc32c), sample ids are in
range, logits are finite (and so are the ensemble and views arrays, where a store has them); then
that sample_id covers the dataset exactly once, and optionally that
the store's recorded dataset identity matches a dataset on disk (fingerprint recomputed). Every
problem names the chunk and the rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from softtargets.config import DataConfig
from softtargets.data import load_split
from softtargets.errors import SparseStoreError
from softtargets.store import LOGITS, SAMPLE_ID, StoreMeta, chunk_slice, read_meta, unit_rows

MAX_LISTED = 10  # ids/rows listed per problem; the count is always given


@dataclasses.dataclass(frozen=True)
class Problem:
    """One failed check. `chunk`/`rows` locate it when it concerns rows of the store."""

    kind: str  # incomplete, metadata, missing_object, decode, sample_id, non_finite, duplicate,
    #            missing_ids, dataset
    message: str
    chunk: int | None = None
    rows: tuple[int, int] | None = None  # first and last row of the chunk
    bad_rows: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rows"] = list(self.rows) if self.rows else None
        d["bad_rows"] = list(self.bad_rows)
        return d


@dataclasses.dataclass
class VerifyReport:
    """What verify checked and what failed."""

    url: str
    n: int = 0
    num_classes: int = 0
    chunks: int = 0
    chunks_ok: int = 0
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset_checked: str | None = None  # the dataset the fingerprint was recomputed from
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, message: str, **where: Any) -> None:
        self.problems.append(Problem(kind, message, **where))

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "n": self.n, "num_classes": self.num_classes,
                "chunks": self.chunks, "chunks_ok": self.chunks_ok, "dataset": self.dataset,
                "dataset_checked": self.dataset_checked,
                "problems": [p.to_json() for p in self.problems]}

    def text(self) -> str:
        head = f"verify: {self.url}: " + ("OK" if self.ok else f"FAILED ({len(self.problems)} "
                                           f"problem{'s' if len(self.problems) > 1 else ''})")
        d = self.dataset
        lines = [head, f"  {self.chunks_ok}/{self.chunks} chunks decode with valid ids and "
                       f"finite values ({self.n} rows x {self.num_classes} classes); dataset "
                       f"{d.get('name')}/{d.get('split')} n={d.get('n')}"]
        if self.dataset_checked:
            lines.append(f"  fingerprint checked against {self.dataset_checked}")
        lines += [f"  {p.kind}: {p.message}" for p in self.problems]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for the error message: the count and the first problem."""
        first = self.problems[0].message if self.problems else ""
        return (f"store {self.url!r} failed verification with {len(self.problems)} problem(s); "
                f"first: {first}")


def _listed(values: np.ndarray) -> str:
    vals = values[:MAX_LISTED].tolist()
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return f"{vals}{more}"


def object_key(array: zarr.Array, meta: StoreMeta, row: int) -> str:
    """Store key of the object (chunk, or shard when sharded) holding `row`."""
    coords = (row // unit_rows(meta),) + (0,) * (array.ndim - 1)
    return f"{array.path}/{array.metadata.encode_chunk_key(coords)}"


def object_exists(array: zarr.Array, key: str) -> bool:
    return bool(sync(array.store.exists(key)))


class UnitReader:
    """Reads each storage object (shard, or chunk) once; a damaged one is reread chunk by chunk.

    One request per shard instead of one per inner chunk matters on object storage.
    """

    def __init__(self, group: zarr.Group, meta: StoreMeta) -> None:
        self.group, self.meta = group, meta
        self.rows = unit_rows(meta)
        self.cache: dict[str, tuple[int, int, np.ndarray | None]] = {}  # name -> unit, start, data

    def read(self, name: str, sl: slice) -> np.ndarray:
        """Rows `sl` (inside one unit) of array `name`; raises if their chunk does not decode."""
        array = self.group[name]
        unit = sl.start // self.rows
        if name not in self.cache or self.cache[name][0] != unit:
            usl = slice(unit * self.rows, min(self.meta.n, (unit + 1) * self.rows))
            try:
                self.cache[name] = (unit, usl.start, np.asarray(array[usl]))
            except Exception:  # some chunk of the unit is damaged: find it chunk by chunk
                self.cache[name] = (unit, usl.start, None)
        _unit, start, data = self.cache[name]
        if data is None:
            return np.asarray(array[sl])
        return data[sl.start - start:sl.stop - start]


def _check_chunk(report: VerifyReport, meta: StoreMeta, group: zarr.Group, index: int,
                 seen: dict[str, bool], reader: UnitReader) -> np.ndarray | None:
    """Check chunk `index`; its sample ids (rows,) when they decode, else None."""
    sl = chunk_slice(meta, index)
    where = {"chunk": index, "rows": (sl.start, sl.stop - 1)}
    label = f"chunk {index} (rows {sl.start}..{sl.stop - 1})"
    values: dict[str, np.ndarray] = {}
    for name in (SAMPLE_ID, LOGITS):
        array = group[name]
        key = object_key(array, meta, sl.start)
        if key not in seen:
            seen[key] = object_exists(array, key)
        if not seen[key]:
            report.add("missing_object", f"{label}: {name} object {key!r} is missing (deleted, "
                       "or never written by a crashed writer)", **where)
            continue
        try:
            values[name] = reader.read(name, sl)
        except Exception as e:  # crc32c mismatch or a codec error: the bytes are damaged
            report.add("decode", f"{label}: {name} cannot be decoded, the stored bytes are "
                       f"damaged ({type(e).__name__}: {str(e)[:120]})", **where)
    ok = len(values) == 2
    ids = values.get(SAMPLE_ID)
    if ids is not None:
        bad = np.flatnonzero((ids < 0) | (ids >= meta.dataset.get("n", meta.n)))
        if bad.size:
            ok = False
            report.add("sample_id", f"{label}: {bad.size} row(s) have sample ids outside "
                       f"[0, {meta.dataset.get('n')}) (-1 = never written): rows "
                       f"{_listed(bad + sl.start)}", bad_rows=tuple((bad + sl.start)[:MAX_LISTED]
                                                                    .tolist()), **where)
    logits = values.get(LOGITS)
    if logits is not None:
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
        if bad.size:
            ok = False
            report.add("non_finite", f"{label}: {bad.size} row(s) hold NaN/Inf logits: rows "
                       f"{_listed(bad + sl.start)}", bad_rows=tuple((bad + sl.start)[:MAX_LISTED]
                                                                    .tolist()), **where)
    report.chunks_ok += ok
    return ids


# Row arrays beside logits: (name, axis of the rows, whether every value must be finite; False:
# the first value of each row, as NaN marks an unused view parameter). docs/FORMAT.md.
ROW_ARRAYS = (("member_logits", 1, True), ("view_logits", 0, True), ("view_params", 0, False),
              ("member_view_logits", 1, True))


def _check_row_arrays(report: VerifyReport, meta: StoreMeta, group: zarr.Group) -> None:
    """Ensemble and views arrays, chunk by chunk: they decode and hold no never-written rows."""
    for name, axis, all_finite in ROW_ARRAYS:
        if name not in group:
            continue
        array = group[name]
        for index in range(report.chunks):
            sl = chunk_slice(meta, index)
            where = {"chunk": index, "rows": (sl.start, sl.stop - 1)}
            label = f"chunk {index} (rows {sl.start}..{sl.stop - 1})"
            try:
                data = np.asarray(array[sl] if axis == 0 else array[:, sl])
            except Exception as e:  # crc32c mismatch or a codec error
                report.add("decode", f"{label}: {name} cannot be decoded, the stored bytes are "
                           f"damaged ({type(e).__name__}: {str(e)[:120]})", **where)
                continue
            flat = np.moveaxis(data, axis, 0).reshape(sl.stop - sl.start, -1)  # (R, ...)
            good = np.isfinite(flat).all(axis=1) if all_finite else np.isfinite(flat[:, 0])
            bad = np.flatnonzero(~good)
            if bad.size:
                report.add("non_finite", f"{label}: {name}: {bad.size} row(s) hold NaN/Inf "
                           f"(never written, deleted or damaged): rows {_listed(bad + sl.start)}",
                           bad_rows=tuple((bad + sl.start)[:MAX_LISTED].tolist()), **where)


def _check_coverage(report: VerifyReport, meta: StoreMeta, ids: np.ndarray, rows: np.ndarray,
                    *, allow_subset: bool) -> None:
    """sample_id must cover [0, dataset.n) exactly once (a subset when allowed)."""
    total = int(meta.dataset.get("n", meta.n))
    valid = (ids >= 0) & (ids < total)
    counts = np.bincount(ids[valid], minlength=total)
    dup = np.flatnonzero(counts > 1)
    if dup.size:
        where = rows[valid][np.isin(ids[valid], dup)]
        report.add("duplicate", f"{dup.size} sample id(s) occur more than once: ids "
                   f"{_listed(dup)} at rows {_listed(where)}",
                   bad_rows=tuple(where[:MAX_LISTED].tolist()))
    missing = np.flatnonzero(counts == 0)
    if missing.size and not allow_subset:
        report.add("missing_ids", f"{missing.size} of {total} dataset rows have no logits: "
                   f"sample ids {_listed(missing)}")


def dataset_identity(meta: StoreMeta, *, dataset: str, data_dir: str, split: str | None,
                     limit: int | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Recompute the identity of a dataset on disk; split/limit default to the store's."""
    cfg = DataConfig(dataset=dataset, split=split or meta.dataset.get("split", "train"),
                     data_dir=data_dir, limit=limit if limit is not None
                     else meta.dataset.get("limit"),
                     val_rows=int(meta.dataset.get("val_rows") or 0))
    s = load_split(cfg)
    return s.identity(), tuple(s.class_names)


def check_identity(report: VerifyReport, meta: StoreMeta, identity: dict[str, Any],
                   class_names: tuple[str, ...] | None = None) -> None:
    """The store's recorded dataset must be the given one (fingerprint recomputed from its data)."""
    mine = meta.dataset
    report.dataset_checked = f"{identity['name']}/{identity['split']} n={identity['n']}"
    keys = ("name", "split", "n", "limit", "fingerprint")
    diff = [k for k in keys if mine.get(k) != identity.get(k)]
    if diff:
        report.add("dataset", f"store claims {mine.get('name')}/{mine.get('split')} "
                   f"n={mine.get('n')} limit={mine.get('limit')} fingerprint "
                   f"{mine.get('fingerprint')}, but the given dataset is "
                   f"{identity['name']}/{identity['split']} n={identity['n']} "
                   f"limit={identity.get('limit')} fingerprint {identity['fingerprint']} "
                   f"({', '.join(diff)} differ): the store was not computed on this dataset or "
                   "its attributes were edited")
    if class_names is not None and tuple(meta.class_names) != tuple(class_names):
        report.add("dataset", f"store classes {list(meta.class_names)} differ from the "
                   f"dataset's {list(class_names)}")


def verify_store(url: str, *, identity: dict[str, Any] | None = None,
                 class_names: tuple[str, ...] | None = None,
                 allow_subset: bool = False) -> VerifyReport:
    """Check every chunk of the store at `url`; never raises for damage, reports it."""
    meta, group = read_meta(url)
    if meta.kind != "dense":  # issue 6: not damage, another layout
        raise SparseStoreError(f"store {url!r} is a sparse {meta.kind!r} store; verify checks "
                               "dense stores only. SparseStore.open(url).read_all() checks every "
                               "chunk of a sparse store (checksums, ids, counts, finiteness)")
    report = VerifyReport(url=url, n=meta.n, num_classes=meta.num_classes, dataset=meta.dataset)
    if not meta.complete:
        report.add("incomplete", "complete is not true: the writer crashed or is still running; "
                   "rerun teacher-logits with --resume")
    for name, shape in ((LOGITS, (meta.n, meta.num_classes)), (SAMPLE_ID, (meta.n,))):
        if name not in group:
            report.add("metadata", f"array {name!r} is missing")
        elif tuple(group[name].shape) != shape:
            report.add("metadata", f"array {name!r} has shape {tuple(group[name].shape)}, "
                       f"metadata says {shape}")
    if identity is not None:
        check_identity(report, meta, identity, class_names)
    if any(p.kind == "metadata" for p in report.problems):
        return report
    report.chunks = -(-meta.n // meta.chunk_rows)
    ids = np.full(meta.n, -1, dtype=np.int64)  # (N,)
    seen: dict[str, bool] = {}
    reader = UnitReader(group, meta)
    for index in range(report.chunks):
        chunk_ids = _check_chunk(report, meta, group, index, seen, reader)
        if chunk_ids is not None:
            ids[chunk_slice(meta, index)] = chunk_ids
    _check_coverage(report, meta, ids, np.arange(meta.n), allow_subset=allow_subset)
    _check_row_arrays(report, meta, group)
    return report
