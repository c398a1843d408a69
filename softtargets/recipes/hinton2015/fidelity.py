"""How closely a student matches its teacher ensemble, on the rows it trained on and on held-out
rows (Stanton et al. 2021, "Does knowledge distillation really work?"). Low agreement on the
training rows means the student cannot fit the teacher (capacity or optimisation); high
agreement there but low on test rows means it fits the teacher where it has seen it and more
(or more varied) inputs would help."""

from __future__ import annotations

from typing import Any

import numpy as np

from softtargets.format.ensemble import combine_log_probs, log_softmax


def fidelity(student: np.ndarray, members: np.ndarray, labels: np.ndarray, *,
             rule: str = "arithmetic") -> dict[str, Any]:
    """Student logits (N, C) against the members' logits (M, N, C) at T=1: errors of each,
    top-1 agreement, and the mean KL(ensemble || student) in nats."""
    teacher = combine_log_probs(members, rule=rule, temperature=1.0)  # (N, C) log-probs
    s = log_softmax(student)  # (N, C), float64
    kl = np.sum(np.exp(teacher) * (teacher - s), axis=1)  # (N,)
    s_pred, t_pred = s.argmax(1), teacher.argmax(1)
    return {"rows": int(len(labels)), "student_errors": int((s_pred != labels).sum()),
            "ensemble_errors": int((t_pred != labels).sum()),
            "agreement": float((s_pred == t_pred).mean()), "kl": float(kl.mean())}
