"""distillation_loss for any target batch of the read API, by its type.

    alpha * T^2 * KL(p_T || softmax(s / T)) + (1 - alpha) * CE(y, s)

with p_T the teacher's distribution at T (Hinton et al. 2015): the dense, top-k and sampled soft
terms are distill.py's. Per-position targets are those terms over the (masked) positions of
the batch's sequences, each position weighing as one sample.
"""

from __future__ import annotations

import math

import torch

from softtargets.read import distill
from softtargets.config import check_alpha, check_temperature
from softtargets.read.distill import SparseTargets, check_loss
from softtargets.errors import ConfigError
from softtargets.read.batch import DenseTarget, PositionTargets, Target


def distillation_loss(student_logits: torch.Tensor, targets: Target, labels: torch.Tensor, *,
                      temperature: float, alpha: float, loss: str = "kl",
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """The distillation loss of a batch, a scalar.

    student_logits (B, C) with labels (B,) int64, or (B, L, C) with labels (B, L) for
    PositionTargets, whose optional mask (B, L) bool keeps the positions to train on.
    temperature must be the one the targets were read at (SoftTargets(temperature=...)).
    loss: "kl" (the soft term above) or "mse", the mean over classes of (s - t)^2 of raw
    logits (Ba & Caruana 2014), for dense targets only; ensemble targets (log-probs at T) are
    matched as T * log p, both sides centred over the classes (distill.logit_mse_from_log_probs).
    labels (B,) class ids, or (B, C) probabilities (mixed views' lambda-weighted labels).
    """
    check_temperature(temperature)
    check_alpha(alpha)
    check_loss(loss)
    if loss == "mse" and not isinstance(targets, DenseTarget):
        raise ConfigError(f"loss='mse' matches dense logits; {type(targets).__name__} hold only "
                          "some classes per row (top-k, sampled or per-position stores): use "
                          "loss='kl' or a Dense() store")
    _check_temperature(targets, temperature)
    if mask is not None and not isinstance(targets, PositionTargets):
        raise ConfigError("mask= selects positions of sequences; it applies to per-position "
                          f"targets only, not {type(targets).__name__}")
    if isinstance(targets, PositionTargets):
        return _position_loss(student_logits, targets, labels, temperature=temperature,
                              alpha=alpha, mask=mask)
    if isinstance(targets, SparseTargets):
        _check_sparse_batch(student_logits, targets)
        return distill.sparse_distillation_loss(student_logits, targets, labels,
                                                temperature=temperature, alpha=alpha)
    if isinstance(targets, DenseTarget):
        if targets.log_probs is not None:
            return distill.distillation_loss_from_log_probs(
                student_logits, targets.log_probs, labels, temperature=temperature, alpha=alpha,
                loss=loss)
        return distill.distillation_loss(student_logits, targets.logits, labels,
                                         temperature=temperature, alpha=alpha, loss=loss)
    raise ConfigError(f"targets must be a DenseTarget, SparseTargets or PositionTargets (from "
                      f"SoftTargets), got {type(targets).__name__}")


def _check_temperature(targets: Target, temperature: float) -> None:
    """Targets at T1 under a loss at T2 would be silently wrong: refuse."""
    have = getattr(targets, "temperature", None)
    if have is not None and not math.isclose(have, temperature, rel_tol=1e-9):
        raise ConfigError(f"the targets were read at T={have:g} but the loss is at "
                          f"T={temperature:g}; read them with SoftTargets(..., "
                          f"temperature={temperature:g}) or pass temperature={have:g}")


def _check_sparse_batch(student_logits: torch.Tensor, targets: SparseTargets) -> None:
    if student_logits.ndim != 2 or student_logits.shape[0] != targets.ids.shape[0]:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} do not match sparse "
                          f"targets of {targets.ids.shape[0]} rows; give (B, C) logits of the "
                          "same batch")


def _position_loss(student_logits: torch.Tensor, targets: PositionTargets,
                   labels: torch.Tensor, *, temperature: float, alpha: float,
                   mask: torch.Tensor | None) -> torch.Tensor:
    lead = tuple(targets.sparse.ids.shape[:-1])  # (B, L)
    if student_logits.ndim != 3 or tuple(student_logits.shape[:2]) != lead \
            or tuple(labels.shape) != lead:
        raise ConfigError(f"per-position targets of shape {lead} need student logits "
                          f"(B, L, C) and labels (B, L) of that (B, L), got "
                          f"{tuple(student_logits.shape)} and {tuple(labels.shape)}")
    keep = torch.ones(lead, dtype=torch.bool) if mask is None else mask
    if tuple(keep.shape) != lead or keep.dtype != torch.bool:
        raise ConfigError(f"mask must be a bool tensor of shape {lead}, got "
                          f"{keep.dtype} {tuple(keep.shape)}")
    if not keep.any():
        raise ConfigError("mask selects no position; keep at least one position of the batch")
    keep = keep.reshape(-1).to(student_logits.device)
    flat = student_logits.reshape(-1, student_logits.shape[-1])  # (B * L, C)
    return distill.sparse_distillation_loss(flat[keep], targets.flat()[keep],
                                            labels.reshape(-1)[keep], temperature=temperature,
                                            alpha=alpha)
