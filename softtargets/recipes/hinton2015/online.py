"""Online function matching, the reference of stored views: the teacher ensemble runs on every
fresh augmented (and mixed) batch, so each student step sees a new view and its exact target.

Fresh views come from the same machinery as stored ones (Views, Mix, augment_images), drawn
per (seed, epoch, sample id) with a view seed stored views never use, so online and stored
runs share the augmentation spec and differ only in where the target comes from. Teacher
forwards and student steps are timed apart (`OnlineBatches.teacher_seconds`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from softtargets.augment.mix import Mix, dataset_fetch, mixed_images, mixed_labels
from softtargets.augment.source import Views
from softtargets.augment.views import AugmentSpec, augment_images
from softtargets.format.ensemble import combine_log_probs
from softtargets.read.batch import DenseTarget

ONLINE_SEED = 1_000_003  # view seeds seed * ONLINE_SEED + epoch + 1: apart from stored seeds


class OnlineBatches:
    """Shuffled batches (x (B, *item) float32, labels (B,) or (B, C), DenseTarget of the
    members' combination at T as log-probs) of `dataset` (a softtargets image dataset), each
    input a fresh view (mixed with `mix`), its target the teachers run on it now."""

    def __init__(self, dataset: Any, teachers: list[nn.Module], *, augment: AugmentSpec,
                 mix: Mix | None, temperature: float, rule: str, batch_size: int,
                 seed: int) -> None:
        self.dataset, self.teachers = dataset, [t.eval() for t in teachers]
        self.augment, self.mix = augment, mix
        self.temperature, self.rule = temperature, rule
        self.batch_size, self.seed = batch_size, seed
        self.classes = int(dataset.num_classes)
        self.fetch = dataset_fetch(dataset)
        self.teacher_seconds = 0.0  # teacher forwards, summed over every batch so far

    def __len__(self) -> int:
        return len(self.dataset)

    def num_batches(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, Any, DenseTarget]]:
        """The batches of `epoch`: a permutation seeded by (seed, epoch), fresh views."""
        g = torch.Generator().manual_seed(self.seed * ONLINE_SEED + epoch)
        order = torch.randperm(len(self.dataset), generator=g).numpy()
        views = Views(count=2, augment=self.augment, seed=self.seed * ONLINE_SEED + epoch + 1,
                      clean_view0=True, mix=self.mix).for_dataset(self.dataset)
        ids = self.dataset.sample_ids  # (N,)
        for start in range(0, len(order), self.batch_size):
            rows = np.sort(order[start:start + self.batch_size])
            images, labels = self.dataset.take(rows)
            params = views.params(ids[rows])[:, 1]  # (B, P): view 1, augmented
            x, y = self._inputs(images, labels, params)
            yield x, y, self._target(x)

    def _inputs(self, images: np.ndarray, labels: np.ndarray,
                params: np.ndarray) -> tuple[torch.Tensor, Any]:
        if self.mix is None:
            return augment_images(images, params, spec=self.augment), torch.from_numpy(labels)
        x, lam, partner, p_labels = mixed_images(images, params, spec=self.augment,
                                                 mix=self.mix, fetch=self.fetch)
        return x, mixed_labels(labels, lam, partner, p_labels, classes=self.classes)

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> DenseTarget:
        t0 = time.perf_counter()
        z = np.stack([t(x).float().numpy() for t in self.teachers])  # (M, B, C)
        log_p = combine_log_probs(z, rule=self.rule, temperature=self.temperature)  # (B, C)
        self.teacher_seconds += time.perf_counter() - t0
        return DenseTarget(self.temperature, log_probs=torch.from_numpy(log_p).float())
