"""The member axis of a LogitWriter: every member's raw logits in `member_logits` (M, N, C),
the v1 `logits` their mean (docs/FORMAT.md, "Ensembles"). numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np

from softtargets.format.ensemble import ENSEMBLE_KEY, MEMBER_LOGITS, ensemble_info, summary_identity
from softtargets.errors import ConfigError
from softtargets.write.session import RowArray
from softtargets.write.targets import Dense, Targets

COMMON_KEYS = ("torch", "device", "precision")  # copied from the members to the summary


def check_members(members: Any, targets: Targets, positions: int | None) -> int | None:
    """M, or None without a member axis; refuses what an ensemble store cannot hold."""
    if members is None:
        return None
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ConfigError(f"members must be a positive number of ensemble members, got "
                          f"{members!r}")
    if not isinstance(targets, Dense) or positions:
        raise ConfigError("an ensemble store keeps every member's dense logits: members= needs "
                          "Dense() targets and one row per sample; for sparse targets of an "
                          "ensemble, store the top-k of its combined log-probs (softtargets."
                          "sparse.to_topk, computed_from='log_probs')")
    return members


def member_identities(teacher: Any, members: int) -> list[dict[str, Any]]:
    """One identity dict per member (each may be empty), numbered."""
    given = [{} for _ in range(members)] if teacher is None else teacher
    if not isinstance(given, (list, tuple)) or len(given) != members or \
            not all(isinstance(t, dict) for t in given):
        raise ConfigError(f"with members={members}, teacher must be a list of {members} dicts "
                          f"(one per member), got {teacher!r}")
    return [{"member": m, **t, "mc_pass": t.get("mc_pass"), "mc_seed": t.get("mc_seed")}
            for m, t in enumerate(given)]


def member_layout(teacher: Any, members: int, *, n: int, num_classes: int,
                  chunk_rows: int) -> tuple[dict[str, Any], tuple[RowArray, ...],
                                            dict[str, Any]]:
    """(the store's teacher key, the member array, the ensemble attributes) of M members."""
    identities = member_identities(teacher, members)
    summary = {**summary_identity(identities),
               **{k: identities[0][k] for k in COMMON_KEYS if k in identities[0]}}
    array = RowArray(MEMBER_LOGITS, (num_classes,), "float16", ("member", "row", "class"),
                     members=members)
    info = ensemble_info(identities, n=n, num_classes=num_classes, chunk_rows=chunk_rows)
    return summary, (array,), {ENSEMBLE_KEY: info}


def mean_of_members(values: np.ndarray) -> np.ndarray:
    """The v1 `logits` (rows, C) float64: the mean of the stored float16 member logits
    (rows, M, C), the geometric-mean target at every T."""
    return values.astype(np.float64).mean(axis=1)
