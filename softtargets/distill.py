"""Distillation losses (Hinton, Vinyals, Dean 2015, section 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softtargets.config import check_alpha, check_temperature
from softtargets.errors import ConfigError


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch.

    Gradients of the soft term scale as 1/T^2, so multiplying by T^2 keeps its weight relative to
    the hard term roughly unchanged when T changes. Shapes: (B, C) and (B, C) -> scalar.
    """
    check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same (batch, classes) shape")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, *, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s)."""
    check_alpha(alpha)
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * soft_target_loss(student_logits, teacher_logits,
                                               temperature=temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)
    return loss


# --- issue 3: soft targets given as a distribution (ensembles, combined-only stores) -----------
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
                                     alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(p || softmax(s/T)) + (1 - alpha) * CE(y, s), with p given as log p."""
    check_alpha(alpha)
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * soft_target_loss_from_log_probs(student_logits, target_log_probs,
                                                              temperature=temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)
    return loss
