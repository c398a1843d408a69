"""Row rules of verify: what every row of each array must satisfy. numpy only.

Each rule takes one decoded chunk of its array, rows first ((R, ...)), the chunk's other decoded
arrays (sparse rules need the counts beside the ids) and the store's numbers, and returns
findings: (problem kind, bad rows (R,) bool, what is wrong with those rows). schema.ArraySpec.rule
names the rule of an array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from softtargets.format.schema import SPARSE_KEY, sparse_names

Finding = tuple[str, np.ndarray, str]
NEVER = "(never written, deleted or damaged)"


@dataclasses.dataclass(frozen=True)
class Context:
    """The numbers the rules check against."""

    dataset_n: int
    num_classes: int
    draws: int | None = None
    counts: str | None = None  # name of the counts array of a sampled store


def context(meta: Mapping[str, Any]) -> Context:
    """The numbers of a store whose metadata (attributes["softtargets"], checked) is `meta`."""
    sparse = meta.get(SPARSE_KEY) or {}
    return Context(dataset_n=int(meta["dataset"]["n"]), num_classes=int(meta["num_classes"]),
                   draws=sparse.get("draws"),
                   counts=sparse_names(meta["kind"])[2] if meta["kind"] == "sampled" else None)


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)  # (R, everything else)


def sample_id(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    bad = (x < 0) | (x >= ctx.dataset_n)
    return [("sample_id", bad, f"have sample ids outside [0, {ctx.dataset_n}) (-1 = never "
                               "written)")]


def position(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    return [("position", x < 0, "have negative positions (-1 = never written)")]


def finite(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    return [("non_finite", ~np.isfinite(_rows(x)).all(axis=1), f"hold NaN/Inf {NEVER}")]


def first_finite(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    """view_params: NaN marks an unused parameter, but a row's first value is always set."""
    return [("non_finite", ~np.isfinite(_rows(x)[:, 0]), f"hold NaN/Inf {NEVER}")]


def _class_range(ids: np.ndarray, ctx: Context) -> Finding:
    return ("class_id", (ids >= ctx.num_classes).any(axis=1),
            f"have class ids >= num_classes ({ctx.num_classes})")


def topk_ids(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    ordered = np.sort(x.astype(np.int64), axis=1)  # (R, K)
    repeated = (np.diff(ordered, axis=1) == 0).any(axis=1)
    return [_class_range(x, ctx), ("class_id", repeated, "list a class id twice")]


def topk_values(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    v = x.astype(np.float32)
    unsorted = (np.diff(v, axis=1) > 0).any(axis=1)  # NaN compares False: reported as NaN
    return [("non_finite", ~np.isfinite(v).all(axis=1), f"hold NaN/Inf values {NEVER}"),
            ("order", unsorted, "hold values not sorted in descending order")]


def _drawn(chunk: Mapping[str, np.ndarray], ctx: Context) -> np.ndarray | None:
    """(R, K) bool: the drawn entries (count > 0), or None when the counts did not decode."""
    counts = chunk.get(ctx.counts) if ctx.counts else None
    return None if counts is None else counts > 0


def sampled_ids(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    out = [_class_range(x, ctx)]
    drawn = _drawn(chunk, ctx)
    if drawn is None:
        return out
    ids = x.astype(np.int64)
    gap = (np.diff(drawn.astype(np.int8), axis=1) > 0).any(axis=1)  # padding before a drawn id
    rising = ((np.diff(ids, axis=1) <= 0) & drawn[:, 1:]).any(axis=1)
    pad = (~drawn & (ids != 0)).any(axis=1)
    return out + [("padding", gap, "have padding (count 0) before a drawn id"),
                  ("order", rising, "hold drawn ids not strictly increasing"),
                  ("padding", pad, "have padding entries (count 0) with a nonzero id")]


def sampled_values(x: np.ndarray, chunk: Mapping[str, np.ndarray],
                   ctx: Context) -> list[Finding]:
    v = x.astype(np.float32)
    drawn = _drawn(chunk, ctx)
    if drawn is None:  # padding values are 0: every value is finite either way
        return [("non_finite", ~np.isfinite(v).all(axis=1), f"hold NaN/Inf values {NEVER}")]
    return [("non_finite", (drawn & ~np.isfinite(v)).any(axis=1),
             f"hold NaN/Inf values of drawn ids {NEVER}"),
            ("padding", (~drawn & (v != 0)).any(axis=1),
             f"have padding entries (count 0) with a value other than 0 {NEVER}")]


def counts(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    return [("counts", x.astype(np.int64).sum(axis=1) != ctx.draws,
             f"have counts not summing to draws ({ctx.draws}) {NEVER}")]


def lse(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    return [("non_finite", ~np.isfinite(x), f"hold a NaN/Inf lse {NEVER}")]


def tail(x: np.ndarray, chunk: Mapping[str, np.ndarray], ctx: Context) -> list[Finding]:
    ok = np.isfinite(x) & (x >= 0) & (x <= 1)
    return [("tail_mass", ~ok.all(axis=1), f"hold tail masses that are NaN/Inf or outside "
                                           f"[0, 1] {NEVER}")]


Rule = Callable[[np.ndarray, Mapping[str, np.ndarray], Context], list[Finding]]
RULES: dict[str, Rule] = {
    "sample_id": sample_id, "position": position, "finite": finite, "first_finite": first_finite,
    "topk_ids": topk_ids, "topk_values": topk_values, "sampled_ids": sampled_ids,
    "sampled_values": sampled_values, "counts": counts, "lse": lse, "tail": tail,
}
