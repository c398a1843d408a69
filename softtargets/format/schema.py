"""What a store of each kind holds: its metadata keys and row arrays. No torch, no I/O.

docs/FORMAT.md is the normative description; this module is its machine-readable part, used by
every reader (meta_check.check_meta, at open) and by verify (one row rule per array). Adding an
array to the format means adding one ArraySpec in `row_arrays`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from softtargets.format.codecs import COMPRESSORS

FORMAT_NAME = "softtargets.logits"
FORMAT_VERSION = 1
# Version 2 marks a store whose `logits` are valid at one temperature only (an ensemble's
# arithmetic mean written with --store-combined-only); v1 readers refuse it, this reader reads it.
COMBINED_ONLY_VERSION = 2
MAX_READ_VERSION = 2
ATTR_KEY = "softtargets"

DENSE = "dense"
SPARSE_KINDS = ("topk", "sampled")
KINDS = (DENSE, *SPARSE_KINDS)
SPARSE_COMPRESSORS = ("bitshuffle", "zstd", "blosc", "none")
UINTS = ("uint8", "uint16", "uint32", "uint64")

LOGITS, SAMPLE_ID = "logits", "sample_id"
MEMBER_LOGITS = "member_logits"  # ensembles: (M, N, C), chunks (1, R, C)
VIEW_LOGITS, VIEW_PARAMS = "view_logits", "view_params"  # views: (N, V, C), (N, V, P)
MEMBER_VIEW_LOGITS = "member_view_logits"  # ensembles with views: (M, N, V, C)
POSITION, LSE, TAIL = "position", "lse", "tail_mass"  # sparse stores
ENSEMBLE_KEY, COMBINED_KEY, VIEWS_KEY, SPARSE_KEY = "ensemble", "combined", "views", "sparse"
# Every data array the format defines (dense, ensembles, views, sparse); each has its digests in
# the group `digests/<name>`. `--overwrite` deletes only these, their digests and the group's
# zarr.json (destination.py): add new arrays here.
STORE_ARRAYS = (LOGITS, SAMPLE_ID, MEMBER_LOGITS, MEMBER_VIEW_LOGITS, VIEW_LOGITS, VIEW_PARAMS,
                POSITION, "topk_ids", "topk_logits", "sampled_ids", "sampled_logits",
                "sampled_counts", LSE, TAIL)
RULES = ("arithmetic", "geometric")


def sparse_names(kind: str) -> tuple[str, str, str | None]:
    """(ids, values, counts or None) array names of a sparse kind."""
    if kind == "topk":
        return "topk_ids", "topk_logits", None
    return "sampled_ids", "sampled_logits", "sampled_counts"


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One row array of a store: its expected shape, dtype and the row rule verify applies.

    rule names a check in verify_rules.RULES (e.g. "finite": every value of a row is finite).
    row_axis is 1 for member arrays (M, N, ...), whose chunks hold one member.
    """

    name: str
    shape: tuple[int, ...]
    dims: str  # where the shape comes from, for messages: "(n, num_classes)"
    dtype: str
    rule: str
    row_axis: int = 0

    def grid(self, rows: int) -> tuple[int, ...]:
        """Chunk (or shard) shape holding `rows` rows: whole rows, one member at a time."""
        return (1,) * self.row_axis + (rows,) + self.shape[self.row_axis + 1:]

    @property
    def members(self) -> int:
        """Storage objects per row chunk (M for member arrays, else 1)."""
        return self.shape[0] if self.row_axis else 1


def row_arrays(meta: Mapping[str, Any]) -> list[ArraySpec]:
    """The arrays a store with this (key-checked) metadata holds, sample_id first."""
    n, c = meta["n"], meta["num_classes"]
    if meta["kind"] in SPARSE_KINDS:
        return _sparse_arrays(meta, n, c)
    out = [ArraySpec(SAMPLE_ID, (n,), "(n,)", "int64", "sample_id"),
           ArraySpec(LOGITS, (n, c), "(n, num_classes)", meta["dtype"], "finite")]
    ens, views = meta.get(ENSEMBLE_KEY), meta.get(VIEWS_KEY)
    m = len(ens["members"]) if isinstance(ens, dict) else 0
    if m:
        out.append(ArraySpec(MEMBER_LOGITS, (m, n, c), "(members, n, num_classes)",
                             meta["dtype"], "finite", row_axis=1))
    if isinstance(views, dict):
        v, p = views["views"], len(views["param_names"])
        if m:
            out.append(ArraySpec(MEMBER_VIEW_LOGITS, (m, n, v, c),
                                 "(members, n, views, num_classes)", meta["dtype"], "finite",
                                 row_axis=1))
        else:
            out.append(ArraySpec(VIEW_LOGITS, (n, v, c), "(n, views, num_classes)",
                                 meta["dtype"], "finite"))
        # NaN marks an unused parameter (a user augmentation on the clean view 0)
        out.append(ArraySpec(VIEW_PARAMS, (n, v, p), "(n, views, len(param_names))", "float32",
                             "first_finite"))
    return out


def _sparse_arrays(meta: Mapping[str, Any], n: int, c: int) -> list[ArraySpec]:
    spec = meta[SPARSE_KEY]
    k, kind = spec["k"], meta["kind"]
    ids, values, counts = sparse_names(kind)
    out = [ArraySpec(SAMPLE_ID, (n,), "(n,)", "int64", "sample_id")]
    if spec.get("position"):
        out.append(ArraySpec(POSITION, (n,), "(n,)", "int64", "position"))
    out += [ArraySpec(ids, (n, k), "(n, sparse.k)", spec["id_dtype"], f"{kind}_ids"),
            ArraySpec(values, (n, k), "(n, sparse.k)", meta["dtype"], f"{kind}_values")]
    if counts:
        out.append(ArraySpec(counts, (n, k), "(n, sparse.k)", spec["count_dtype"], "counts"))
    out += [ArraySpec(LSE, (n,), "(n,)", "float32", "lse"),
            ArraySpec(TAIL, (n, len(spec["temperatures"])), "(n, len(sparse.temperatures))",
                      "float32", "tail")]
    return out


# --- metadata keys -------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A value as it is written in zarr.json (so "1", 1, 1.0 and true differ), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool and float are not ints here


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _positive_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v > 0


class _Problems(list):
    """Collects one line per violated key."""

    def key(self, name: str, value: Any, expected: str) -> None:
        self.append(f"metadata key {name!r} is {shown(value)}, expected {expected}")


def key_problems(d: Mapping[str, Any]) -> list[str]:
    """Every violated key rule of attributes["softtargets"] (format, version range and the
    presence of keys are checked before), one line each; [] when the keys are valid."""
    p = _Problems()
    if d.get("kind") not in KINDS:
        p.key("kind", d.get("kind"), f"one of {list(KINDS)}")
    if type(d.get("complete", False)) is not bool:
        p.key("complete", d.get("complete"), "true or false (a JSON boolean)")
    for name in ("n", "num_classes", "chunk_rows"):
        if not _positive_int(d.get(name)):
            p.key(name, d.get(name), "a positive integer")
    names = d.get("class_names")
    if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
        p.key("class_names", names, "a list of strings")
    elif _positive_int(d.get("num_classes")) and len(names) != d["num_classes"]:
        p.append(f"metadata key 'class_names' has {len(names)} names, expected num_classes = "
                 f"{d['num_classes']}")
    if d.get("dtype") != "float16":
        p.key("dtype", d.get("dtype"), '"float16"')
    if d.get("compressor") not in COMPRESSORS:
        p.key("compressor", d.get("compressor"), f"one of {list(COMPRESSORS)}")
    dataset = d.get("dataset")
    if not isinstance(dataset, dict) or not _positive_int(dataset.get("n")):
        p.key("dataset", dataset, "an object whose n is a positive integer")
    for name in ("teacher", "config", "created_by"):
        if not isinstance(d.get(name), dict):
            p.key(name, d.get(name), "an object")
    _shard_problems(d, p)
    _version_problems(d, p)
    if d.get("kind") in SPARSE_KINDS:
        _sparse_problems(d, p)
    else:
        _dense_extras_problems(d, p)
    return list(p)


def _shard_problems(d: Mapping[str, Any], p: _Problems) -> None:
    shard = d.get("shard_rows")
    if shard is None:
        return
    if d.get("kind") in SPARSE_KINDS:
        p.key("shard_rows", shard, "no shard_rows: sparse stores are not sharded")
    elif not _positive_int(shard) or (_positive_int(d.get("chunk_rows"))
                                      and shard % d["chunk_rows"]):
        p.key("shard_rows", shard, f"a positive multiple of chunk_rows ({shown(d.get('chunk_rows'))})")


def combined_only_arithmetic(d: Mapping[str, Any]) -> bool:
    """Whether the store holds only an arithmetic combination at one T (format version 2)."""
    comb = d.get(COMBINED_KEY)
    return (d.get("kind") == DENSE and isinstance(comb, dict) and comb.get("rule") == "arithmetic"
            and comb.get("temperature") is not None)


def _version_problems(d: Mapping[str, Any], p: _Problems) -> None:
    version = d.get("version")
    want = COMBINED_ONLY_VERSION if combined_only_arithmetic(d) else FORMAT_VERSION
    if not _is_int(version):
        p.key("version", version, f"the integer {want}")
    elif version != want:
        why = {2: ": an arithmetic combined-only ensemble store (key 'combined' with rule "
                  "arithmetic and a temperature) has version 2"}.get(want, "")
        if version == COMBINED_ONLY_VERSION and not why:
            why = ": version 2 is only for an arithmetic combined-only ensemble store"
        p.key("version", version, f"{want}{why}")


def _dense_extras_problems(d: Mapping[str, Any], p: _Problems) -> None:
    ens, comb, views = d.get(ENSEMBLE_KEY), d.get(COMBINED_KEY), d.get(VIEWS_KEY)
    if ens is not None and not (isinstance(ens, dict) and isinstance(ens.get("members"), list)
                                and ens["members"]):
        p.key(ENSEMBLE_KEY, ens, "an object with a non-empty members list")
    if comb is not None and not (isinstance(comb, dict) and comb.get("rule") in RULES and (
            comb.get("temperature") is None or _positive_number(comb.get("temperature")))):
        p.key(COMBINED_KEY, comb, f"an object with rule in {list(RULES)} and a temperature that "
              "is null or > 0")
    if views is not None and not (isinstance(views, dict) and _positive_int(views.get("views"))
                                  and isinstance(views.get("param_names"), list)
                                  and views["param_names"]):
        p.key(VIEWS_KEY, views, "an object with views a positive integer and a non-empty "
              "param_names list")


def _sparse_problems(d: Mapping[str, Any], p: _Problems) -> None:
    spec, kind = d.get(SPARSE_KEY), d.get("kind")
    if not isinstance(spec, dict):
        p.key(SPARSE_KEY, spec, f"an object describing the {kind} store (a {kind!r} store "
              "needs it)")
        return
    if spec.get("kind") != kind:
        p.key("sparse.kind", spec.get("kind"), f"{shown(kind)}, the top-level kind")
    c = d.get("num_classes")
    if not _positive_int(spec.get("k")) or (_positive_int(c) and spec["k"] > c):
        p.key("sparse.k", spec.get("k"), f"a positive integer <= num_classes ({shown(c)})")
    temps = spec.get("temperatures")
    if not isinstance(temps, list) or not temps or not all(_positive_number(t) for t in temps) \
            or 1 not in temps:
        p.key("sparse.temperatures", temps, "a list of numbers > 0 that contains 1")
    if type(spec.get("position", False)) is not bool:
        p.key("sparse.position", spec.get("position"), "true or false")
    if spec.get("id_dtype") not in UINTS:
        p.key("sparse.id_dtype", spec.get("id_dtype"), f"one of {list(UINTS)}")
    if kind == "sampled":
        _sampled_problems(spec, c, p)


def _sampled_problems(spec: Mapping[str, Any], c: Any, p: _Problems) -> None:
    draws = spec.get("draws")
    if not _positive_int(draws):
        p.key("sparse.draws", draws, "a positive integer")
    elif _positive_int(c) and _positive_int(spec.get("k")) and spec["k"] != min(draws, c):
        p.key("sparse.k", spec["k"], f"min(draws, num_classes) = {min(draws, c)}")
    if spec.get("count_dtype") not in UINTS:
        p.key("sparse.count_dtype", spec.get("count_dtype"), f"one of {list(UINTS)}")
    temps = spec.get("temperatures")
    if isinstance(temps, list) and spec.get("sample_temperature") not in temps:
        p.key("sparse.sample_temperature", spec.get("sample_temperature"),
              f"one of sparse.temperatures {shown(temps)}")
