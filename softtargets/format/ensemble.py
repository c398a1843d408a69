"""Ensemble soft targets: combination rules and reading ensemble stores (numpy + zarr, no torch).

An ensemble store keeps every member's raw float16 logits in `member_logits` (M, N, C), so both
rules are exact at any temperature T chosen at student time:

* arithmetic: p = mean_m softmax(z_m / T)
* geometric:  p ∝ exp(mean_m log softmax(z_m / T)) = softmax(mean_m z_m / T)

The geometric identity holds because log softmax(z/T) = z/T - logsumexp(z/T): the logsumexp term
is constant over classes and vanishes on renormalisation. So the store's v1 `logits` array, which
holds mean_m z_m, is the geometric-mean target at every T for readers that only know v1.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from softtargets.errors import ConfigError, StoreError
# attributes["softtargets"]["ensemble"]: member list and layout; ["combined"]: rule and T of a
# combined-only store
from softtargets.format.schema import (COMBINED_KEY, ENSEMBLE_KEY, MEMBER_LOGITS,  # noqa: F401
                                MEMBER_VIEW_LOGITS, RULES)
from softtargets.format.chunks import read_rows
from softtargets.format.store import LogitStore, chunk_slice


MEAN_LOGITS = "mean_m member_logits[m] (the geometric-mean target at every T)"


def ensemble_info(members: list[dict[str, Any]], *, n: int, num_classes: int, chunk_rows: int,
                  default_rule: str = "arithmetic") -> dict[str, Any]:
    """attributes["softtargets"]["ensemble"] of a store keeping every member's logits."""
    return {"members": members, "array": MEMBER_LOGITS,
            "shape": [len(members), n, num_classes], "chunks": [1, chunk_rows, num_classes],
            "logits": MEAN_LOGITS, "default_rule": check_rule(default_rule)}


def summary_identity(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The v1 `teacher` key of an ensemble store: its members' architectures and a digest over
    their checkpoints (and MC-dropout passes)."""
    h = hashlib.sha256("\n".join(f"{m.get('checkpoint_sha256')}/{m.get('mc_pass')}"
                                 for m in members).encode())
    archs = sorted({str(m.get("arch")) for m in members})
    return {"arch": f"ensemble of {len(members)}: " + ", ".join(archs), "model": None,
            "checkpoint": None, "checkpoint_sha256": "sha256:" + h.hexdigest(),
            "trained_on": None, "members": len(members)}


def check_rule(rule: str) -> str:
    """Return `rule` if it is a known combination rule, else raise ConfigError."""
    if rule not in RULES:
        raise ConfigError(f"unknown combination rule {rule!r}; allowed: {list(RULES)} "
                          "(arithmetic = mean of probabilities, geometric = mean of logits)")
    return rule


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def combine_log_probs(member_logits: np.ndarray, *, rule: str, temperature: float) -> np.ndarray:
    """Log-probabilities (R, C) float64 of the combined target of members (M, R, C) at T.

    Computed in log space (logsumexp over members), so no probability underflows to 0.
    """
    check_rule(rule)
    if not temperature > 0:
        raise ConfigError(f"temperature T must be > 0, got {temperature}")
    z = np.asarray(member_logits, dtype=np.float64)
    if z.ndim != 3:
        raise ConfigError(f"member logits must have shape (M, rows, C), got {z.shape}")
    if rule == "geometric":
        return log_softmax(z.mean(axis=0) / temperature)  # (R, C)
    logp = log_softmax(z / temperature)  # (M, R, C)
    return _logsumexp(logp, axis=0) - math.log(z.shape[0])  # log mean_m p_m, (R, C)


def combine_probs(member_logits: np.ndarray, *, rule: str, temperature: float) -> np.ndarray:
    """Probabilities (R, C) float64 of the combined target; see combine_log_probs."""
    return np.exp(combine_log_probs(member_logits, rule=rule, temperature=temperature))


def is_ensemble(store: LogitStore) -> bool:
    """True when the store holds member logits or a combined-only target."""
    return ENSEMBLE_KEY in store.meta.extra or COMBINED_KEY in store.meta.extra


def members_of(store: LogitStore) -> list[dict[str, Any]]:
    """The recorded member list (arch, checkpoint sha256, ...) of an ensemble store."""
    extra = store.meta.extra
    return list((extra.get(ENSEMBLE_KEY) or extra.get(COMBINED_KEY) or {}).get("members", []))


ALL_VIEWS = "all"  # EnsembleTargets(view=ALL_VIEWS): every stored view, each combined

class EnsembleTargets:
    """A read view of an ensemble store giving the combined target at temperature T.

    Has the read interface of LogitStore (meta, url, num_chunks, read_chunk, read_all,
    check_dataset), but read_chunk returns log-probabilities (rows, C) float32 of the combined
    target at `temperature` instead of raw logits: train with a loss on target log-probs.
    view: None for the members' `member_logits` (view 0 of a views store), the index of the
    stored augmented view to combine (`member_view_logits`, views stores only), or ALL_VIEWS:
    every view combined on its own, log-probs (rows, V, C).
    """

    def __init__(self, store: LogitStore, *, rule: str, temperature: float,
                 view: int | str | None = None) -> None:
        self.store, self.meta, self.url = store, store.meta, store.url
        self.rule, self.temperature = check_rule(rule), temperature
        combined = store.meta.extra.get(COMBINED_KEY)
        self.members = None
        self.array, self.view = MEMBER_LOGITS, view
        if combined is not None:
            _check_combined(store.url, combined, rule=rule, temperature=temperature)
        elif ENSEMBLE_KEY in store.meta.extra:
            # (M, N, C) float16; its presence, shape and chunking were checked at open (check_meta)
            self.members = store.group[MEMBER_LOGITS]
        if view is not None:
            self._open_view(view)

    def _open_view(self, view: int) -> None:
        """Read view `view` of every member from member_view_logits (M, N, V, C) instead."""
        # imported here: views needs torch, and torch-free callers never read views
        from softtargets.augment.views import check_view
        # combined-only stores hold no views; ALL_VIEWS needs view 0 like any views store
        checked = check_view(self.url, self.meta.extra, 0 if view == ALL_VIEWS else view)
        self.view = ALL_VIEWS if view == ALL_VIEWS else checked
        if self.members is None:  # a combined-only store keeps no members, so no member views
            raise StoreError(f"store {self.url!r} keeps no member logits, so no member views")
        # (M, N, V, C); presence and shape checked at open (check_meta)
        self.array, self.members = MEMBER_VIEW_LOGITS, self.store.group[MEMBER_VIEW_LOGITS]

    @property
    def num_chunks(self) -> int:
        return self.store.num_chunks

    def check_dataset(self, identity: dict[str, Any]) -> None:
        self.store.check_dataset(identity)

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ids (rows,) and combined log-probs (rows, C) float32 of chunk `index`."""
        ids, logits = self.store.read_chunk(index)  # checks ids and finiteness of `logits`
        if self.members is None:  # combined-only store: `logits` already is the combined target
            z = logits.astype(np.float64)[None]  # (1, rows, C)
            return ids, log_softmax(z[0] / self.temperature).astype(np.float32)
        sl = chunk_slice(self.meta, index)
        # (M, rows, C) or (M, rows, V, C): one (1, R, ...) chunk per member
        z = read_rows(self.members, self.url, self.array, index, sl, axis=1)
        if not np.isfinite(z).all():
            bad = sorted(set(np.argwhere(~np.isfinite(z))[:, 0].tolist()))
            raise StoreError(f"store {self.url!r}: chunk {index} of {self.array} has missing or "
                             f"non-finite rows for members {bad}; the store is damaged")
        for m in range(len(z)):  # digests cover the whole stored chunk, every view
            self.store.digests.check_rows(self.array, sl.start, z[m], member=m)
        if self.view == ALL_VIEWS:  # every view combined on its own: (rows, V, C)
            m, r, v, c = z.shape
            out = combine_log_probs(z.reshape(m, r * v, c), rule=self.rule,
                                    temperature=self.temperature)
            return ids, out.reshape(r, v, c).astype(np.float32)
        if self.view is not None:
            z = z[:, :, self.view]  # (M, rows, C)
        out = combine_log_probs(z, rule=self.rule, temperature=self.temperature)
        return ids, out.astype(np.float32)

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """All sample ids (N,) and combined log-probs (N, C) float32, chunk by chunk."""
        parts = [self.read_chunk(i) for i in range(self.num_chunks)]
        ids = np.concatenate([p[0] for p in parts])
        if np.unique(ids).size != ids.size:
            raise StoreError(f"store {self.url!r}: sample_id has duplicates; the store is damaged")
        return ids, np.concatenate([p[1] for p in parts])


def _check_combined(url: str, combined: dict[str, Any], *, rule: str, temperature: float) -> None:
    """Refuse reading a combined-only store with another rule or, when it is fixed, another T."""
    if combined.get("rule") != rule:
        raise ConfigError(f"store {url!r} holds only the {combined.get('rule')} combination of its "
                          f"members; it cannot give the {rule} combination. Use --combine "
                          f"{combined.get('rule')} or rewrite the store keeping member logits")
    fixed = combined.get("temperature")
    if fixed is not None and not math.isclose(fixed, temperature, rel_tol=1e-9):
        raise ConfigError(f"store {url!r} holds the {rule} combination at T={fixed:g} only "
                          f"(written with --store-combined-only); it cannot be read at "
                          f"T={temperature:g}. Train with -T {fixed:g} or rewrite the store "
                          "keeping member logits")


def open_targets(store: LogitStore, *, rule: str | None, temperature: float,
                 view: int | str | None = None) -> EnsembleTargets:
    """The combined-target view of an ensemble store (of stored view `view` when given); rule
    None = the store's own (or arithmetic)."""
    combined = store.meta.extra.get(COMBINED_KEY)
    chosen = rule or (combined or {}).get("rule") or \
        store.meta.extra.get(ENSEMBLE_KEY, {}).get("default_rule", "arithmetic")
    return EnsembleTargets(store, rule=chosen, temperature=temperature, view=view)
