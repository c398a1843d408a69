"""Sparse soft targets: dense (rows, C) logits -> top-k or sampled rows, and back. numpy only.

Input of every conversion is any (R, C) matrix of finite *values* whose softmax at T = 1 is the
target distribution: raw teacher logits, or log-probabilities (e.g. of an ensemble's combined
distribution); `computed_from` in the store records which. Values are rounded to float16 first,
exactly as a dense store would hold them, so a sparse row is an exact sparse view of the dense row:
probabilities and tail masses are computed in float64 from the float16 values.

Per row, with listed classes L (top-k ids, or the distinct sampled ids):
  * `lse` = logsumexp over all C classes of the values at T = 1, so p_1(i) = exp(z_i - lse) exactly;
  * `tail[j]` = sum over classes not in L of softmax(z / T_j), for each write-time temperature T_j.
At a stored temperature T, p_T(i) = (1 - tail_T) * softmax over L of (z / T), exact up to fp32.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from softtargets.errors import ConfigError, SparseTemperatureError
from softtargets.format.store import to_float16

SOURCES = ("logits", "log_probs")
TAIL_MODES = ("rest", "renormalise")
BLOCK_ROWS = 256  # rows converted at once: bounds the (rows, C) float64 temporaries


@dataclasses.dataclass(frozen=True)
class SparseRows:
    """Sparse rows of one kind. `counts` is None for top-k; padding entries have count 0.

    ids (R, K) int64, logits (R, K) float16, counts (R, K) int64 or None, lse (R,) float32,
    tail (R, M) float32 for the M write-time temperatures.
    """

    ids: np.ndarray
    logits: np.ndarray
    lse: np.ndarray
    tail: np.ndarray
    counts: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        """(R, K) bool: True where the entry is a listed class (not padding)."""
        return np.ones(self.ids.shape, bool) if self.counts is None else self.counts > 0


def check_temperatures(temperatures: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """Sorted distinct write-time temperatures, always including T = 1."""
    temps = tuple(sorted({1.0, *(float(t) for t in temperatures)}))
    if temps[0] <= 0 or not np.isfinite(temps).all():
        raise ConfigError(f"temperatures must be finite and > 0, got {list(temperatures)}; "
                          "e.g. --temperatures 1,4,20")
    return temps


def smallest_uint(max_value: int) -> str:
    """Name of the smallest unsigned integer dtype holding `max_value`."""
    for name in ("uint8", "uint16", "uint32"):
        if max_value <= np.iinfo(name).max:
            return name
    return "uint64"


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise logsumexp of (R, C) float64; -inf for a row of all -inf."""
    m = x.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(x - m).sum(axis=1)) + m[:, 0])


def _as_half_values(values: np.ndarray, first_row: int) -> np.ndarray:
    """(R, C) values rounded to float16 (validated as a dense store would), as float32.

    float32 holds every float16 exactly and halves the cost of the (R, C) passes; sums over
    classes accumulate in float64.
    """
    if values.ndim != 2:
        raise ConfigError(f"values must be a (rows, classes) matrix, got shape {values.shape}")
    return to_float16(values, first_row=first_row).astype(np.float32)


def tail_mass(z: np.ndarray, ids: np.ndarray, mask: np.ndarray,
              temperatures: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Tail masses (R, M) float32 at each temperature and lse (R,) float64 at T = 1.

    z (R, C) float32 or float64, ids (R, K) listed where mask. The tail is the sum of the unlisted terms
    (listed terms zeroed), not 1 - kept, so tiny tails keep their relative precision; one exp
    pass per temperature. temperatures must include 1.
    """
    if 1.0 not in temperatures:
        raise ConfigError(f"temperatures must include 1 (lse is stored at T = 1), got "
                          f"{list(temperatures)}; build them with check_temperatures")
    rows = np.broadcast_to(np.arange(len(z))[:, None], ids.shape)[mask]
    out = np.empty((len(z), len(temperatures)), np.float64)
    lse = np.full(len(z), np.nan)
    for j, t in enumerate(temperatures):
        zt = z / t
        top = zt.max(axis=1, keepdims=True)  # (R, 1)
        e = np.exp(zt - top, out=zt)  # (R, C) in place
        total = e.sum(axis=1, dtype=np.float64)
        if t == 1.0:
            lse = np.log(total) + top[:, 0].astype(np.float64)
        e[rows, ids[mask]] = 0.0
        out[:, j] = e.sum(axis=1, dtype=np.float64) / total
    return out.astype(np.float32), lse


def top_ids(z: np.ndarray, k: int) -> np.ndarray:
    """Ids (R, k) of the k largest entries per row, by value descending, ties by lower id.

    argpartition finds the k-th value; ties at it are broken by class id so the result does not
    depend on the partition algorithm (it is deterministic across numpy versions).
    """
    kth = -np.partition(-z, k - 1, axis=1)[:, k - 1:k]  # (R, 1) k-th largest value
    above = z > kth
    tied = z == kth
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))  # exactly k per row
    ids = np.nonzero(chosen)[1].reshape(len(z), k)  # (R, k) increasing id
    order = np.argsort(-np.take_along_axis(z, ids, axis=1), axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1)


def to_topk(values: np.ndarray, *, k: int, temperatures: tuple[float, ...],
            first_row: int = 0) -> SparseRows:
    """The k largest values of each row (ties: lower class id first), sorted by value descending."""
    rows_out = []
    for start in range(0, len(values), BLOCK_ROWS):
        z = _as_half_values(values[start:start + BLOCK_ROWS], first_row + start)  # (r, C)
        ids = top_ids(z, min(k, z.shape[1]))  # (r, K)
        kept = np.take_along_axis(z, ids, axis=1)
        tail, lse = tail_mass(z, ids, np.ones(ids.shape, bool), temperatures)
        rows_out.append(SparseRows(ids=ids, logits=kept.astype(np.float16),
                                   lse=lse.astype(np.float32), tail=tail))
    return concat_rows(rows_out)


def row_rng(seed: int, sample_id: int, position: int) -> np.random.Generator:
    """The generator of one row: depends only on (seed, sample_id, position), not on chunking."""
    return np.random.default_rng([seed, int(sample_id), int(position)])


def to_sampled(values: np.ndarray, *, draws: int, temperatures: tuple[float, ...], seed: int,
               sample_ids: np.ndarray, positions: np.ndarray | None = None,
               sample_temperature: float = 1.0, first_row: int = 0) -> SparseRows:
    """`draws` class ids per row drawn i.i.d. from softmax(z / sample_temperature), seeded per row.

    Returned per row: the distinct drawn ids in increasing order with their counts (summing to
    `draws`), padded with id 0, logit 0, count 0 up to width min(draws, C).
    """
    if sample_temperature not in temperatures:
        raise ConfigError(f"sample_temperature {sample_temperature} must be one of the stored "
                          f"temperatures {list(temperatures)}")
    pos = np.zeros(len(values), np.int64) if positions is None else np.asarray(positions)
    rows_out = []
    for start in range(0, len(values), BLOCK_ROWS):
        z = _as_half_values(values[start:start + BLOCK_ROWS], first_row + start)  # (r, C)
        width = min(draws, z.shape[1])
        zs = z / sample_temperature
        weights = np.exp(zs - zs.max(axis=1, keepdims=True))  # (r, C)
        cdf = np.cumsum(weights, axis=1, dtype=np.float64)  # float64: tiny p keep their share
        ids = np.zeros((len(z), width), np.int64)
        counts = np.zeros((len(z), width), np.int64)
        for r in range(len(z)):
            u = row_rng(seed, sample_ids[start + r], pos[start + r]).random(draws) * cdf[r, -1]
            drawn = np.minimum(np.searchsorted(cdf[r], u, side="right"), z.shape[1] - 1)
            uniq, cnt = np.unique(drawn, return_counts=True)
            ids[r, :len(uniq)], counts[r, :len(uniq)] = uniq, cnt
        mask = counts > 0
        kept = np.where(mask, np.take_along_axis(z, ids, axis=1), 0.0)
        tail, lse = tail_mass(z, ids, mask, temperatures)
        rows_out.append(SparseRows(ids=ids, logits=kept.astype(np.float16),
                                   lse=lse.astype(np.float32), tail=tail, counts=counts))
    return concat_rows(rows_out)


def concat_rows(parts: list[SparseRows]) -> SparseRows:
    counts = None if parts[0].counts is None else np.concatenate([p.counts for p in parts])
    return SparseRows(ids=np.concatenate([p.ids for p in parts]),
                      logits=np.concatenate([p.logits for p in parts]),
                      lse=np.concatenate([p.lse for p in parts]),
                      tail=np.concatenate([p.tail for p in parts]), counts=counts)


def same_temperature(a: float, b: float) -> bool:
    """np.isclose(a, b, rtol=1e-6, atol=0) on two numbers, without its ~35 us of array work
    (called for every streamed batch)."""
    return abs(a - b) <= 1e-6 * abs(b)


def temperature_index(temperatures: tuple[float, ...], temperature: float, *,
                      purpose: str) -> int:
    """Column of `temperature` in the stored tail masses; refuses a temperature not stored."""
    for j, t in enumerate(temperatures):
        if same_temperature(t, temperature):
            return j
    raise SparseTemperatureError(
        f"{purpose} at T={temperature:g} needs the tail mass at that temperature, but the store "
        f"holds it only at T in {list(temperatures)}; rewrite the store with --temperatures "
        f"including {temperature:g}, or (top-k only) use --tail renormalise, the documented "
        "approximation that ignores the tail")


def _masked_log_softmax(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log softmax over the entries where mask is True; -inf elsewhere. (R, K) -> (R, K)."""
    zm = np.where(mask, z, -np.inf)
    return zm - _logsumexp(zm)[:, None]


def listed_log_probs(rows: SparseRows, *, temperatures: tuple[float, ...],
                     temperature: float) -> np.ndarray:
    """Exact log p_T of the listed classes (R, K) float64, -inf at padding.

    T = 1 uses lse directly; another stored T uses (1 - tail_T) * softmax over the listed classes.
    """
    z = rows.logits.astype(np.float64)
    if same_temperature(temperature, 1.0):
        return np.where(rows.mask, z - rows.lse.astype(np.float64)[:, None], -np.inf)
    j = temperature_index(temperatures, temperature, purpose="exact teacher probabilities")
    kept = 1.0 - rows.tail[:, j].astype(np.float64)  # (R,)
    with np.errstate(divide="ignore"):
        return _masked_log_softmax(z / temperature, rows.mask) + np.log(kept)[:, None]


def renormalised_log_probs(rows: SparseRows, *, temperature: float) -> np.ndarray:
    """log softmax over the listed classes only, at any T (R, K): the 'renormalise' treatment."""
    return _masked_log_softmax(rows.logits.astype(np.float64) / temperature, rows.mask)


def tail_at(rows: SparseRows, *, temperatures: tuple[float, ...], temperature: float) -> np.ndarray:
    """Stored tail mass (R,) at `temperature`; refuses a temperature whose tail was not stored."""
    j = temperature_index(temperatures, temperature, purpose="the 'rest' bucket")
    return rows.tail[:, j].astype(np.float64)


def sampled_weights(rows: SparseRows, *, temperatures: tuple[float, ...], temperature: float,
                    sample_temperature: float) -> np.ndarray:
    """Unbiased estimate of p_T on the listed classes (R, K): (count / draws) * p_T / p_tau.

    E[count_i / draws] = p_tau(i) for ids drawn from p_tau, so E[weight_i] = p_T(i) for every
    class (an unlisted class has weight 0 and is listed with probability < 1): the estimate of
    the distillation gradient sum_i weight_i * d(-log q_T(i)) is unbiased (Anshumann et al. 2025).
    """
    if rows.counts is None:
        raise ConfigError("sampled_weights needs a sampled store (counts), got top-k rows")
    draws = rows.counts.sum(axis=1, keepdims=True)
    share = rows.counts / draws  # (R, K)
    if same_temperature(temperature, sample_temperature):
        return share
    log_pt = listed_log_probs(rows, temperatures=temperatures, temperature=temperature)
    log_ps = listed_log_probs(rows, temperatures=temperatures, temperature=sample_temperature)
    ratio = np.exp(np.where(rows.mask, log_pt, 0.0) - np.where(rows.mask, log_ps, 0.0))
    return np.where(rows.mask, share * ratio, 0.0)


def reconstruct(rows: SparseRows, *, num_classes: int, temperatures: tuple[float, ...],
                temperature: float) -> np.ndarray:
    """A full (R, C) distribution: exact p_T on listed classes, tail spread evenly over the rest.

    For measuring KL(dense || reconstructed); the spread is a choice (max-entropy tail), not data.
    """
    log_p = listed_log_probs(rows, temperatures=temperatures, temperature=temperature)
    probs = np.where(rows.mask, np.exp(log_p), 0.0)
    # the stored tail, not 1 - kept (which cancels to 0 for tiny tails); a tail below float32's
    # range was stored as 0 and is read as the smallest float32 subnormal, so KL stays finite
    tail = np.maximum(tail_at(rows, temperatures=temperatures, temperature=temperature),
                      float(np.finfo(np.float32).smallest_subnormal))
    listed = rows.mask.sum(axis=1)
    rest = np.where(listed < num_classes, tail / np.maximum(num_classes - listed, 1), 0.0)
    out = np.repeat(rest[:, None], num_classes, axis=1)
    r = np.broadcast_to(np.arange(len(probs))[:, None], probs.shape)
    out[r[rows.mask], rows.ids[rows.mask]] = probs[rows.mask]
    return out


def dense_probs(values: np.ndarray, *, temperature: float) -> np.ndarray:
    """softmax of the float16-rounded values / T in float64, (R, C): the dense reference."""
    z = values.astype(np.float16).astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row (R,), in nats; 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1)
