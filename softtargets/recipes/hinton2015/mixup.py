"""Mixup over stage-2 data, with the stored soft targets mixed by the same coefficient.

Zhang et al. 2018: x = lam * x_i + (1 - lam) * x_j. A distilled student's target for the mixed
input is the same mixture of the two samples' targets: the teacher distributions at T,
lam * p_i + (1 - lam) * p_j (as log-probabilities, mixed in log space), and the hard labels as
soft labels lam * y_i + (1 - lam) * y_j. lam ~ Beta(a, a) once per batch and the partner j is a
permutation of the batch, both drawn from (seed, epoch, batch): the same run mixes the same way.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softtargets.errors import ConfigError
from softtargets.read.batch import DenseTarget

LAM_EPS = 1e-6  # keep log(lam) and log(1 - lam) finite


def mix_log_probs(logp: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """log(lam * p + (1 - lam) * p[perm]) for log-probabilities logp (B, C)."""
    lam = min(max(lam, LAM_EPS), 1 - LAM_EPS)
    return torch.logaddexp(logp + math.log(lam), logp[perm] + math.log(1 - lam))


@dataclasses.dataclass(frozen=True)
class Mixup:
    """The batch hook of the student loop: mixes scaled inputs (B, D) float, labels into soft
    labels (B, C), and dense targets into DenseTarget log-probabilities (B, C) at `temperature`
    (None stays None: hard labels only). The coefficient and partners of step `step` of `epoch`
    depend on (seed, epoch, step) only, so a resumed epoch mixes as an unbroken one."""

    alpha: float
    temperature: float
    classes: int
    seed: int

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"mixup alpha must be > 0 (Beta(alpha, alpha)), got {self.alpha}")

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, target: Any, *, epoch: int,
                 step: int) -> tuple[torch.Tensor, torch.Tensor, DenseTarget | None]:
        rng = np.random.default_rng([self.seed, epoch, step, 0x6D6978])  # "mix"
        lam = float(rng.beta(self.alpha, self.alpha))
        perm = torch.from_numpy(rng.permutation(len(labels)))
        x = lam * x + (1 - lam) * x[perm]  # (B, D)
        y = F.one_hot(labels, self.classes).float()
        y = lam * y + (1 - lam) * y[perm]  # (B, C)
        if target is None:
            return x, y, None
        logp = mix_log_probs(self.log_probs(target), perm, lam)
        return x, y, DenseTarget(self.temperature, log_probs=logp)

    def log_probs(self, target: Any) -> torch.Tensor:
        """log p at T (B, C) float32 of a dense batch target; refuses sparse ones."""
        if not isinstance(target, DenseTarget):
            raise ConfigError("mixup needs dense targets; a top-k or sampled store cannot be "
                              "mixed: drop --mixup or use a dense store")
        if target.log_probs is not None:
            return target.log_probs.float()
        return F.log_softmax(target.logits.float() / self.temperature, dim=1)
