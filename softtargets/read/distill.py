"""Distillation losses (Hinton, Vinyals, Dean 2015, section 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softtargets.format import sparse
from softtargets.config import check_alpha, check_temperature
from softtargets.errors import ConfigError


def teacher_log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                      temperature: float) -> torch.Tensor:
    """log softmax(t/T) in float32, (B, C), after checking T and that shapes match."""
    check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} must have the same (batch, classes) shape")
    return F.log_softmax(teacher_logits.float() / temperature, dim=1)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch.

    Gradients of the soft term scale as 1/T^2, so multiplying by T^2 keeps its weight relative to
    the hard term roughly unchanged when T changes. Shapes: (B, C) and (B, C) -> scalar.
    """
    log_p_t = teacher_log_probs(student_logits, teacher_logits, temperature=temperature)
    return soft_target_loss_from_log_probs(student_logits, log_p_t, temperature=temperature)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, *, temperature: float, alpha: float,
                      loss: str = "kl") -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s); loss="mse":
    alpha * mean over classes of (s - t)^2 + (1 - alpha) * CE(y, s) (raw logits, T unused)."""
    if check_loss(loss) == "mse":
        teacher_log_probs(student_logits, teacher_logits, temperature=temperature)  # checks
        return _with_labels(logit_mse(student_logits, teacher_logits), student_logits, labels,
                            alpha=alpha)
    log_p_t = teacher_log_probs(student_logits, teacher_logits, temperature=temperature)
    return distillation_loss_from_log_probs(student_logits, log_p_t, labels,
                                            temperature=temperature, alpha=alpha)


LOSSES = ("kl", "mse")  # the soft term: KL at T (Hinton et al.), or MSE of logits (Ba & Caruana)


def check_loss(loss: str) -> str:
    """`loss` if it is one of LOSSES, else one ConfigError."""
    if loss not in LOSSES:
        raise ConfigError(f"loss must be 'kl' (KL at T) or 'mse' (mean squared error of the "
                          f"logits), got {loss!r}")
    return loss


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over batch and classes of (s - t)^2 in float32 (Ba & Caruana 2014). (B, C), (B, C)
    -> scalar."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def logit_mse_from_log_probs(student_logits: torch.Tensor, target_log_probs: torch.Tensor, *,
                             temperature: float) -> torch.Tensor:
    """logit_mse against a target given as log-probs at T (ensembles): its logits are
    T * log p up to a constant per row, so both sides are centred over the classes first
    (for the geometric rule this is exactly the members' mean logits, centred)."""
    t = target_log_probs.float() * temperature  # (B, C)
    s = student_logits.float()
    return logit_mse(s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True))


def _with_labels(soft: torch.Tensor | None, student_logits: torch.Tensor,
                 labels: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """alpha * soft + (1 - alpha) * CE(y, s); labels (B,) class ids or (B, C) probabilities
    (mixed views: lambda-weighted labels)."""
    check_alpha(alpha)
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * soft
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)
    return loss


# --- soft targets given as a distribution (ensembles, combined-only stores) --------------------
def soft_target_loss_from_log_probs(student_logits: torch.Tensor, target_log_probs: torch.Tensor,
                                    *, temperature: float) -> torch.Tensor:
    """T^2 * KL(p || softmax(s/T)) for a target distribution p given as log p, mean over batch.

    For targets that are not softmax(teacher logits / T) of one teacher, e.g. the arithmetic mean
    of an ensemble's softmax(z_m / T). Shapes: (B, C) and (B, C) -> scalar.
    """
    check_temperature(temperature)
    if student_logits.shape != target_log_probs.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and target log-probs "
                          f"{tuple(target_log_probs.shape)} must have the same (batch, classes) "
                          "shape")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, target_log_probs.float(), reduction="batchmean", log_target=True)
    return kl * temperature**2


def distillation_loss_from_log_probs(student_logits: torch.Tensor, target_log_probs: torch.Tensor,
                                     labels: torch.Tensor, *, temperature: float,
                                     alpha: float, loss: str = "kl") -> torch.Tensor:
    """alpha * T^2 * KL(p || softmax(s/T)) + (1 - alpha) * CE(y, s), with p given as log p;
    loss="mse": alpha * logit_mse_from_log_probs + (1 - alpha) * CE(y, s)."""
    check_alpha(alpha)
    if check_loss(loss) == "mse":
        check_temperature(temperature)
        if student_logits.shape != target_log_probs.shape:
            raise ConfigError(f"student logits {tuple(student_logits.shape)} and target "
                              f"log-probs {tuple(target_log_probs.shape)} must have the same "
                              "(batch, classes) shape")
        return _with_labels(logit_mse_from_log_probs(student_logits, target_log_probs,
                                                     temperature=temperature),
                            student_logits, labels, alpha=alpha)
    soft = soft_target_loss_from_log_probs(student_logits, target_log_probs,
                                           temperature=temperature) if alpha > 0 else None
    return _with_labels(soft, student_logits, labels, alpha=alpha)


# ---- sparse targets (top-k / sampled stores; numpy side in softtargets/format/sparse.py) ----

def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """A copy of frozen dataclass `obj` with `fn` applied to each of its tensor fields (and to
    those of nested target dataclasses); other fields (kind, temperature) are kept."""
    changes = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, torch.Tensor):
            changes[field.name] = fn(value)
        elif dataclasses.is_dataclass(value):
            changes[field.name] = map_tensors(value, fn)
    return dataclasses.replace(obj, **changes)


@dataclasses.dataclass(frozen=True)
class SparseTargets:
    """Teacher targets of a batch from a sparse store, already at the student's temperature T.

    ids (B, K) int64 listed classes; log_probs (B, K) float32 teacher log p_T on them (exact, or
    renormalised over the listed classes when tail is None in top-k); tail (B,) float32 mass of
    the unlisted classes ("rest" bucket) or None; weights (B, K) float32 unbiased estimates of
    p_T (sampled stores) or None. Padding entries have weight 0 and log_prob 0. temperature: the
    T they were computed at (None when not recorded).
    """

    kind: str
    ids: torch.Tensor
    log_probs: torch.Tensor
    tail: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    temperature: float | None = None

    def __getitem__(self, idx: Any) -> SparseTargets:
        return map_tensors(self, lambda t: t[idx])

    def to(self, device: torch.device | str) -> SparseTargets:
        """The same targets on `device`."""
        return map_tensors(self, lambda t: t.to(device))


def topk_soft_target_loss(student_logits: torch.Tensor, targets: SparseTargets, *,
                          temperature: float) -> torch.Tensor:
    """T^2 * KL over the listed classes, mean over the batch. (B, C) -> scalar.

    tail given ("rest"): KL between the teacher and student distributions coarse-grained to K + 1
    buckets (the listed classes and one bucket for everything else), exact teacher probabilities.
    tail None ("renormalise"): KL between teacher and student both renormalised over the K listed
    classes; needs no tail mass, so works at any T, but ignores the tail (biased).
    """
    check_temperature(temperature)
    s = student_logits.float() / temperature  # (B, C)
    p_log = targets.log_probs  # (B, K)
    if targets.tail is None:
        q_log = F.log_softmax(s.gather(1, targets.ids), dim=1)  # (B, K) renormalised student
        kl = (p_log.exp() * (p_log - q_log)).sum(dim=1)
    else:
        lse = torch.logsumexp(s, dim=1)  # (B,)
        q_log = s.gather(1, targets.ids) - lse[:, None]  # (B, K)
        # finite fill, not -inf: with K = C the rest bucket is empty and tail = 0 must give 0, not NaN
        rest = s.scatter(1, targets.ids, torch.finfo(s.dtype).min / 2)
        q_rest = torch.logsumexp(rest, dim=1) - lse  # (B,)
        tail = targets.tail
        kl = ((p_log.exp() * (p_log - q_log)).sum(dim=1)
              + torch.xlogy(tail, tail) - tail * q_rest)
    return kl.mean() * temperature**2


def sampled_soft_target_loss(student_logits: torch.Tensor, targets: SparseTargets, *,
                             temperature: float) -> torch.Tensor:
    """T^2 * sum_i w_i (log p_T(i) - log q_T(i)), mean over the batch. (B, C) -> scalar.

    w_i are unbiased estimates of p_T(i) from sampled ids (Anshumann et al. 2025, "Sparse Logit
    Sampling"), so both the loss value (an estimate of T^2 KL) and its gradient with respect to
    the student logits are unbiased; top-k targets are not.
    """
    check_temperature(temperature)
    if targets.weights is None:
        raise ConfigError("sampled_soft_target_loss needs targets with weights (a sampled store)")
    q_log = F.log_softmax(student_logits.float() / temperature, dim=1).gather(1, targets.ids)
    kl = (targets.weights * (targets.log_probs - q_log)).sum(dim=1)
    return kl.mean() * temperature**2


def sparse_distillation_loss(student_logits: torch.Tensor, targets: SparseTargets,
                             labels: torch.Tensor, *, temperature: float,
                             alpha: float) -> torch.Tensor:
    """distillation_loss with sparse teacher targets: the top-k or sampled soft term by kind."""
    check_alpha(alpha)
    soft = topk_soft_target_loss if targets.kind == "topk" else sampled_soft_target_loss
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * soft(student_logits, targets, temperature=temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)
    return loss


def sparse_targets(rows: sparse.SparseRows, *, kind: str, temperatures: tuple[float, ...],
                   temperature: float, tail: str = "rest",
                   sample_temperature: float | None = None) -> SparseTargets:
    """SparseTargets at T from stored sparse rows (numpy), refusing what the store cannot give.

    tail "rest" needs the tail mass at T (SparseTemperatureError otherwise); "renormalise" is the
    documented approximation for top-k at any T. Sampled rows need T among the stored temperatures.
    """
    if tail not in sparse.TAIL_MODES:
        raise ConfigError(f"tail must be one of {list(sparse.TAIL_MODES)}, got {tail!r}")
    ids = torch.from_numpy(rows.ids.astype(np.int64, copy=False))
    if kind == "topk" and tail == "renormalise":
        log_p = sparse.renormalised_log_probs(rows, temperature=temperature)
        return SparseTargets(kind, ids, torch.from_numpy(log_p.astype(np.float32)),
                             temperature=temperature)
    log_p = sparse.listed_log_probs(rows, temperatures=temperatures, temperature=temperature)
    if kind == "topk":
        rest = sparse.tail_at(rows, temperatures=temperatures, temperature=temperature)
        return SparseTargets(kind, ids, torch.from_numpy(log_p.astype(np.float32)),
                             tail=torch.from_numpy(rest.astype(np.float32)),
                             temperature=temperature)
    weights = sparse.sampled_weights(rows, temperatures=temperatures, temperature=temperature,
                                     sample_temperature=sample_temperature)
    log_p = np.where(rows.mask, log_p, 0.0)  # padding: weight 0, finite log p
    return SparseTargets(kind, ids, torch.from_numpy(log_p.astype(np.float32)),
                         weights=torch.from_numpy(weights.astype(np.float32)),
                         temperature=temperature)
