"""verify's per-chunk pass: for each row chunk, every row array of the store (schema.row_arrays)
is located (its storage objects exist), decoded (crc32c) and checked by its row rule. numpy and
zarr only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.sync import sync

from softtargets.format.digests import DigestCheck
from softtargets.errors import StoreError
from softtargets.format.schema import ArraySpec
from softtargets.format.store import StoreMeta, chunk_slice, unit_rows
from softtargets.tools.verify_rules import RULES, Context

if TYPE_CHECKING:
    from softtargets.tools.verify import VerifyReport

MAX_LISTED = 10  # ids/rows listed per problem; the count is always given


def listed(values: np.ndarray) -> str:
    vals = values[:MAX_LISTED].tolist()
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return f"{vals}{more}"


async def _keys(array: zarr.Array) -> set[str]:
    return {k async for k in array.store.list_prefix(f"{array.path}/")}


def stored_keys(array: zarr.Array) -> set[str]:
    """Keys of every object of `array` (one listing, not a request per object)."""
    return sync(_keys(array))


def object_keys(array: zarr.Array, spec: ArraySpec, meta: StoreMeta, row: int) -> list[str]:
    """Store keys of the objects (chunk, or shard when sharded) holding `row`: one per member."""
    sharded = array.shards is not None
    unit = row // (unit_rows(meta) if sharded else meta.chunk_rows)
    rest = (0,) * (array.ndim - spec.row_axis - 1)
    coords = [(*((m,) if spec.row_axis else ()), unit, *rest) for m in range(spec.members)]
    return [f"{array.path}/{array.metadata.encode_chunk_key(c)}" for c in coords]


class UnitReader:
    """Reads each storage object (shard, or chunk) once; a damaged one is reread chunk by chunk.

    One request per shard instead of one per inner chunk matters on object storage.
    """

    def __init__(self, meta: StoreMeta) -> None:
        self.meta = meta
        self.cache: dict[str, tuple[int, int, np.ndarray | None]] = {}  # name -> unit, start, data

    def read(self, array: zarr.Array, spec: ArraySpec, sl: slice) -> np.ndarray:
        """Rows `sl` of `array`, rows first; raises if their chunk does not decode."""
        rows = unit_rows(self.meta) if array.shards is not None else self.meta.chunk_rows
        unit = sl.start // rows
        name = spec.name
        if name not in self.cache or self.cache[name][0] != unit:
            usl = slice(unit * rows, min(self.meta.n, (unit + 1) * rows))
            try:
                self.cache[name] = (unit, usl.start, rows_first(array, spec, usl))
            except Exception:  # some chunk of the unit is damaged: find it chunk by chunk
                self.cache[name] = (unit, usl.start, None)
        _unit, start, data = self.cache[name]
        if data is None:
            return rows_first(array, spec, sl)
        return data[sl.start - start:sl.stop - start]


def rows_first(array: zarr.Array, spec: ArraySpec, sl: slice) -> np.ndarray:
    """Rows `sl` of `array` along its row axis, rows first."""
    data = np.asarray(array[(slice(None),) * spec.row_axis + (sl,)])
    return np.moveaxis(data, spec.row_axis, 0)  # (R, ...) e.g. member arrays (R, M, C)


class ChunkPass:
    """Checks every chunk of the given arrays; collects sample_id (and position) for coverage."""

    def __init__(self, report: VerifyReport, meta: StoreMeta, group: zarr.Group,
                 specs: list[ArraySpec], ctx: Context, digests: DigestCheck) -> None:
        self.report, self.meta, self.specs, self.ctx = report, meta, specs, ctx
        self.digests = digests
        self.arrays = {s.name: group[s.name] for s in specs}
        self.keys = {name: stored_keys(a) for name, a in self.arrays.items()}
        self.reader = UnitReader(meta)
        self.columns = {s.name: np.full(meta.n, -1, np.int64)  # (N,) for coverage
                        for s in specs if s.rule in ("sample_id", "position")}

    def run(self) -> dict[str, np.ndarray]:
        """Check every chunk; the sample ids (N,) and positions (N,) read (-1 where unread)."""
        self.report.chunks = -(-self.meta.n // self.meta.chunk_rows)
        for index in range(self.report.chunks):
            self.report.chunks_ok += self.check(index)
        self._summarise_digests()
        return self.columns

    def _summarise_digests(self) -> None:
        """Every chunk of every array off its digest is one cause, not N x arrays problems: the
        digests are bound to the `dataset` attributes, so those were edited."""
        digest = [p for p in self.report.problems if p.kind == "digest"]
        if len(digest) < 2 or len(digest) != self.report.chunks * len(self.specs):
            return
        self.report.problems = [p for p in self.report.problems if p.kind != "digest"]
        self.report.add("digest", f"no chunk of any array matches its digest ({len(digest)} "
                        "chunks): the digests are bound to the store's `dataset` attributes, "
                        "which were edited (or the whole store was rewritten by other software)")

    def check(self, index: int) -> bool:
        """Check chunk `index` of every array; whether it passed."""
        sl = chunk_slice(self.meta, index)
        where: dict[str, Any] = {"chunk": index, "rows": (sl.start, sl.stop - 1)}
        label = f"chunk {index} (rows {sl.start}..{sl.stop - 1})"
        before = len(self.report.problems)
        chunk: dict[str, np.ndarray] = {}
        for spec in self.specs:
            data = self._read(spec, sl, label, where)
            if data is not None:
                chunk[spec.name] = data
                if spec.name in self.columns:
                    self.columns[spec.name][sl] = data
        for spec in self.specs:
            if spec.name in chunk:
                flagged = len(self.report.problems)
                for kind, bad, what in RULES[spec.rule](chunk[spec.name], chunk, self.ctx):
                    self._add_rows(kind, f"{label}: {spec.name}: ", what, bad, sl, where)
                if len(self.report.problems) == flagged:  # one problem per cause: rows first
                    self._check_digest(spec, chunk[spec.name], sl, where)
        return len(self.report.problems) == before

    def _check_digest(self, spec: ArraySpec, data: np.ndarray, sl: slice,
                      where: dict[str, Any]) -> None:
        """The chunk is where its digest says (member arrays: every member's chunk)."""
        members = [None] if not spec.row_axis else list(range(spec.members))
        for m in members:
            values = data if m is None else data[:, m]  # rows first: (R, M, ...) -> (R, ...)
            try:
                problem = self.digests.mismatch(spec.name, sl.start, values, member=m)
            except StoreError as e:  # digest array missing or damaged
                problem = str(e)
            if problem is not None:
                self.report.add("digest", problem, **where)
                return

    def _read(self, spec: ArraySpec, sl: slice, label: str,
              where: dict[str, Any]) -> np.ndarray | None:
        array = self.arrays[spec.name]
        missing = [k for k in object_keys(array, spec, self.meta, sl.start)
                   if k not in self.keys[spec.name]]
        if missing:
            what = (f"object {missing[0]!r} is" if len(missing) == 1 else
                    f"objects {listed(np.array(missing))} are")
            self.report.add("missing_object", f"{label}: {spec.name} {what} missing (deleted, "
                            "or never written by a crashed writer)", **where)
            return None
        try:
            return self.reader.read(array, spec, sl)
        except Exception as e:  # crc32c mismatch or a codec error: the bytes are damaged
            self.report.add("decode", f"{label}: {spec.name} cannot be decoded, the stored bytes "
                            f"are damaged ({type(e).__name__}: {str(e)[:120]})", **where)
            return None

    def _add_rows(self, kind: str, prefix: str, what: str, bad: np.ndarray, sl: slice,
                  where: dict[str, Any]) -> None:
        rows = np.flatnonzero(bad) + sl.start
        if rows.size:
            self.report.add(kind, f"{prefix}{rows.size} row(s) {what}: rows {listed(rows)}",
                            bad_rows=tuple(rows[:MAX_LISTED].tolist()), **where)

