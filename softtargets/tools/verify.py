"""`softtargets verify`: prove a store of any kind is intact and is what it claims. numpy and zarr
only.

Checks: the metadata and array layout (meta_check, the rules every reader applies at open); then,
chunk by chunk, for every row array of the store's kind (schema.row_arrays: dense, sharded,
ensemble, views, top-k, sampled, per-position), that its storage objects exist, decode (crc32c)
and pass the array's row rule (verify_rules); then that sample_id covers the dataset (exactly
once, or per sample for per-position rows), and optionally that the store's recorded dataset
identity matches a dataset on disk (fingerprint recomputed). Every problem names the chunk and
the rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from softtargets.config import DataConfig
from softtargets.datasets.idx_files import load_split
from softtargets.format.digests import DigestCheck
from softtargets.errors import StoreError
from softtargets.format.meta_check import meta_problems, open_store_group
from softtargets.format.schema import POSITION, SAMPLE_ID, row_arrays
from softtargets.format.store import StoreMeta
from softtargets.format.tokenizer import tokenizer_difference
from softtargets.tools.verify_chunks import MAX_LISTED, ChunkPass, listed
from softtargets.tools.verify_rules import context


@dataclasses.dataclass(frozen=True)
class Problem:
    """One failed check. `chunk`/`rows` locate it when it concerns rows of the store."""

    kind: str  # incomplete, metadata, missing_object, decode, a row rule's kind (sample_id,
    #            non_finite, class_id, ...: verify_rules), duplicate, missing_ids, dataset
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
    kind: str = ""
    arrays: list[str] = dataclasses.field(default_factory=list)  # the row arrays checked
    chunks: int = 0
    chunks_ok: int = 0
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset_checked: str | None = None  # the dataset the fingerprint was recomputed from
    bound: bool | None = None  # chunks bound to their places by digests (None: not checked)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, message: str, **where: Any) -> None:
        self.problems.append(Problem(kind, message, **where))

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "kind": self.kind, "n": self.n,
                "num_classes": self.num_classes, "arrays": self.arrays, "chunks": self.chunks,
                "chunks_ok": self.chunks_ok, "bound": self.bound, "dataset": self.dataset,
                "dataset_checked": self.dataset_checked,
                "problems": [p.to_json() for p in self.problems]}

    def text(self) -> str:
        head = f"verify: {self.url}: " + ("OK" if self.ok else f"FAILED ({len(self.problems)} "
                                           f"problem{'s' if len(self.problems) > 1 else ''})")
        d = self.dataset
        checked = (f"{self.chunks_ok}/{self.chunks} chunks decode and pass the row checks of "
                   f"{len(self.arrays)} arrays ({', '.join(self.arrays)})" if self.arrays else
                   "no chunk checked until the metadata problems below are fixed")
        lines = [head, f"  {checked}; {self.kind} store, {self.n} rows x {self.num_classes} "
                       f"classes; dataset {d.get('name')}/{d.get('split')} n={d.get('n')}"]
        if self.bound is not None:
            lines.append("  chunks bound to their places by digests (xxh3-128)" if self.bound else
                         "  UNBOUND: no chunk digests (written before they existed): a chunk in "
                         "the wrong place would go unnoticed")
        if self.dataset_checked:
            lines.append(f"  fingerprint checked against {self.dataset_checked}")
        lines += [f"  {p.kind}: {p.message}" for p in self.problems]
        return "\n".join(lines)

    def summary(self) -> str:
        """One line for the error message: the count and the first problem."""
        first = self.problems[0].message if self.problems else ""
        return (f"store {self.url!r} failed verification with {len(self.problems)} problem(s); "
                f"first: {first}")


def _check_coverage(report: VerifyReport, meta: StoreMeta, ids: np.ndarray,
                    positions: np.ndarray | None, *, allow_subset: bool) -> None:
    """sample_id must cover [0, dataset.n) exactly once (a subset when allowed); with positions
    (per-token rows) each (sample_id, position) pair once and each sample id at least once."""
    total = int(meta.dataset["n"])
    valid = np.flatnonzero((ids >= 0) & (ids < total))  # rows with a readable id in range
    if positions is None:
        keys = ids[valid]
        counts = np.bincount(keys, minlength=total)
        dup = np.flatnonzero(counts > 1)
        where = valid[np.isin(keys, dup)]
        what = f"{dup.size} sample id(s) occur more than once: ids {listed(dup)}"
    else:
        valid = valid[positions[valid] >= 0]
        pairs, inverse, times = np.unique(np.stack([ids[valid], positions[valid]], axis=1),
                                          axis=0, return_inverse=True, return_counts=True)
        dup = pairs[times > 1]
        where = valid[(times > 1)[inverse.reshape(-1)]]
        shown = [tuple(p) for p in dup[:MAX_LISTED].tolist()]
        more = f" and {len(dup) - MAX_LISTED} more" if len(dup) > MAX_LISTED else ""
        what = f"{len(dup)} (sample_id, position) pair(s) occur more than once: {shown}{more}"
        counts = np.bincount(ids[valid], minlength=total)
    if len(dup):
        report.add("duplicate", f"{what} at rows {listed(where)}",
                   bad_rows=tuple(where[:MAX_LISTED].tolist()))
    missing = np.flatnonzero(counts == 0)
    if missing.size and not allow_subset:
        report.add("missing_ids", f"{missing.size} of {total} dataset rows have no logits: "
                   f"sample ids {listed(missing)}")


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
    if mine.get("tokenizer") is not None or identity.get("tokenizer") is not None:
        diff = tokenizer_difference(mine.get("tokenizer") or {}, identity.get("tokenizer") or {})
        if diff is not None:
            report.add("dataset", f"store's tokenizer differs from the dataset's: {diff} "
                       "(store vs data)")
    if class_names is not None and tuple(meta.class_names) != tuple(class_names):
        report.add("dataset", f"store classes {list(meta.class_names)} differ from the "
                   f"dataset's {list(class_names)}")


def verify_store(url: str, *, identity: dict[str, Any] | None = None,
                 class_names: tuple[str, ...] | None = None,
                 allow_subset: bool = False) -> VerifyReport:
    """Check the metadata and every chunk of every array of the store at `url`, of any kind;
    never raises for damage, reports it (raises only when `url` is no softtargets store)."""
    raw, group = open_store_group(url)
    meta = StoreMeta.from_json(raw)
    report = VerifyReport(url=url, n=meta.n, num_classes=meta.num_classes, kind=meta.kind,
                          dataset=meta.dataset if isinstance(meta.dataset, dict) else {})
    if raw.get("complete", False) is False:  # a non-boolean is a metadata problem below
        report.add("incomplete", "complete is not true: the writer crashed or is still running; "
                   "rerun teacher-logits with --resume")
    for line in meta_problems(raw, group, require_arrays=True):
        report.add("metadata", line)
    if any(p.kind == "metadata" for p in report.problems):
        return report  # the layout is not what the metadata says: chunks cannot be located
    if identity is not None:
        check_identity(report, meta, identity, class_names)
    specs = row_arrays(raw)
    report.arrays = [s.name for s in specs]
    ctx = context(raw)
    try:
        digests = DigestCheck(group, meta, url)
    except StoreError as e:  # declared but stripped: check everything else all the same
        report.add("digest", str(e))
        digests = DigestCheck(group, dataclasses.replace(meta, extra={}), url)
    report.bound = digests.bound
    columns = ChunkPass(report, meta, group, specs, ctx, digests).run()
    _check_coverage(report, meta, columns[SAMPLE_ID], columns.get(POSITION),
                    allow_subset=allow_subset)
    return report
