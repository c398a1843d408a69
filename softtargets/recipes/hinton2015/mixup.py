"""Mixup over stage-2 data, with the stored soft targets mixed by the same coefficient.

Zhang et al. 2018: x = lam * x_i + (1 - lam) * x_j. A distilled student's target for the mixed
input is the same mixture of the two samples' targets: the teacher distributions at T,
lam * p_i + (1 - lam) * p_j (as log-probabilities, mixed in log space), and the hard labels as
soft labels lam * y_i + (1 - lam) * y_j. lam ~ Beta(a, a) once per batch and the partner j is a
permutation of the batch, both drawn from (seed, epoch, batch): the same run mixes the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softtargets.errors import ConfigError

LAM_EPS = 1e-6  # keep log(lam) and log(1 - lam) finite


def mix_log_probs(logp: torch.Tensor, perm: torch.Tensor, lam: float) -> torch.Tensor:
    """log(lam * p + (1 - lam) * p[perm]) for log-probabilities logp (B, C)."""
    lam = min(max(lam, LAM_EPS), 1 - LAM_EPS)
    return torch.logaddexp(logp + math.log(lam), logp[perm] + math.log(1 - lam))


class MixupData:
    """Wraps DistillData, StreamingDistillData or ViewData; yields (inputs (B, D) float32,
    soft labels (B, C), target log-probs (B, C) at `temperature` or None for hard labels only).

    log_probs: whether the wrapped data already yields log-probabilities (ensembles) rather than
    raw logits.
    """

    def __init__(self, data: Any, *, alpha: float, temperature: float, log_probs: bool,
                 classes: int) -> None:
        if not alpha > 0:
            raise ConfigError(f"mixup alpha must be > 0 (Beta(alpha, alpha)), got {alpha}")
        self.data, self.alpha, self.temperature = data, alpha, temperature
        self.log_probs, self.classes = log_probs, classes

    def __len__(self) -> int:
        return len(self.data)

    def num_batches(self, batch_size: int) -> int:
        return int(self.data.num_batches(batch_size))

    def batches(self, *, batch_size: int, epoch: int,
                seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for b, (images, labels, teacher) in enumerate(
                self.data.batches(batch_size=batch_size, epoch=epoch, seed=seed)):
            rng = np.random.default_rng([seed, epoch, b, 0x6D6978])  # "mix"
            lam = float(rng.beta(self.alpha, self.alpha))
            perm = torch.from_numpy(rng.permutation(len(labels)))
            x = images.flatten(1).float().div(255.0) if images.dtype == torch.uint8 else images
            x = lam * x + (1 - lam) * x[perm]  # (B, D)
            y = F.one_hot(labels, self.classes).float()
            y = lam * y + (1 - lam) * y[perm]  # (B, C)
            t = None
            if teacher is not None:
                if not isinstance(teacher, torch.Tensor):
                    raise ConfigError("mixup needs dense targets; a top-k or sampled store "
                                      "cannot be mixed: drop --mixup or use a dense store")
                logp = teacher.float() if self.log_probs else \
                    F.log_softmax(teacher.float() / self.temperature, dim=1)
                t = mix_log_probs(logp, perm, lam)
            yield x, y, t
