"""Member passes of stage 1: one member (a teacher, or one MC-dropout pass of it) run over rows
chunk by chunk, with dropout masks seeded per (mc_seed, pass, chunk) (docs/FORMAT.md,
"Ensembles"), so any chunk of any pass can be recomputed alone: on resume, by another rank, or
by the Python API and the command line alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from softtargets.errors import CheckpointError, ConfigError, LogitValueError
from softtargets.write.forward import as_input, forward


def mc_seed(base: int, mc_pass: int, chunk: int) -> int:
    """Dropout-mask seed of (pass, chunk): independent of other chunks, so any chunk can be redone."""
    digest = hashlib.sha256(f"softtargets.mc/{base}/{mc_pass}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def require_mc_dropout(model: Any, *, what: str, passes: int) -> None:
    """Put the dropout layers of `model` in train mode for MC passes; refuse a model without
    any (its passes would all be equal). `what` names the teacher in errors."""
    from softtargets.write.teachers import enable_mc_dropout
    if enable_mc_dropout(model) == 0:
        raise ConfigError(f"--mc-dropout {passes}: teacher {what} has no dropout layers, so its "
                          "passes would all be equal")


def seeder(base: int, mc_pass: int | None) -> Callable[[int], None] | None:
    """A write_chunks `before_unit` hook seeding chunk i's masks of MC pass `mc_pass`; None
    for a deterministic member."""
    if mc_pass is None:
        return None
    return lambda chunk: torch.manual_seed(mc_seed(base, mc_pass, chunk))


class CheckedTeacher:
    """A teacher as stage 1 runs it: its input transform, then the model; refuses an output
    that is not logits (B, C). `name` is how errors name it."""

    def __init__(self, model: Any, transform: Any, *, name: str, num_classes: int) -> None:
        self.model, self.transform = model, transform
        self.name, self.num_classes = name, num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform is not None:
            x = self.transform(x)
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x) or \
                out.shape[1] != self.num_classes:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CheckpointError(f"teacher {self.name!r} returned {got} for a batch of "
                                  f"{len(x)}; expected logits of shape (batch, C) = ({len(x)}, "
                                  f"{self.num_classes}) for the dataset's {self.num_classes} "
                                  "classes")
        return out


def check_finite(z: np.ndarray, *, name: str, first_row: int) -> None:
    """Refuse NaN/Inf logits (rows, ...) of teacher `name`, naming the first such row."""
    bad = ~np.isfinite(z.reshape(len(z), -1)).all(axis=1)
    if bad.any():
        raise LogitValueError(f"teacher {name!r} produced NaN/Inf logits (first at input row "
                              f"{first_row + int(np.flatnonzero(bad)[0])}); refusing it. Check "
                              "the model and its preprocessing (--transform)")


def chunk_logits(model: Any, source: Any, rows: slice, *, batch_size: int,
                 device: torch.device, seed: int | None = None) -> np.ndarray:
    """Logits (R, C) float32 of `source.inputs(rows)` in batches of `batch_size` from the
    first row, after seeding the masks with `seed` (the chunk's MC seed; None: no seeding)."""
    if seed is not None:
        torch.manual_seed(seed)
    out = []
    for start in range(rows.start, rows.stop, batch_size):
        x = as_input(source.inputs(slice(start, min(rows.stop, start + batch_size))))
        out.append(forward(model, x.to(device), device).cpu())
    return torch.cat(out).numpy()
