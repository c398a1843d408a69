"""Replaying a views store (docs/FORMAT.md "Augmented views"): each epoch every sample draws
one of its V stored views (`augment.views.choose_views`, a function of (seed, epoch, sample
id) only, so in-memory and streamed readers, workers and ranks agree), its input is rebuilt
from that view's stored parameters exactly as stage 1 built the teacher's, and its target is
that view's logits (one teacher) or the members' combination of that view at T (ensembles).

    targets = SoftTargets("views.zarr", temperature=4.0, view="replay")
    data = DistillDataset(images, targets, seed=0)      # data.set_epoch(epoch) each epoch

`SoftTargets(view="replay")` holds every view's target and parameters; DistillDataset and
StreamingDistillDataset(view="replay") pick and rebuild the view. Mixed views (augment/mix.py):
the partner's input is fetched from the dataset by its stored sample id and mixed as stage 1
mixed it; the labels become lam-weighted label vectors (B, C) float32 (onehot on rows whose
view is not mixed), which distillation_loss's hard term takes as they are.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch

from softtargets.augment.mix import Fetch, Mix, mixed_images, mixed_labels
from softtargets.augment.views import AugmentSpec, augment_images, choose_views, views_spec
from softtargets.errors import ConfigError
from softtargets.read.batch import DenseTarget

REPLAY = "replay"  # the `view` option that replays the stored views


def views_of(url: str, meta: Any) -> dict[str, Any]:
    """The `views` attribute of a views store; refuses a store without views in one line."""
    info = meta.extra.get("views")
    if not info:
        raise ConfigError(f"store {url!r} holds no augmented views (it was written without "
                          "views=Views(...) or --views); view='replay' needs them: drop view= "
                          "or write the store with views")
    return info


@dataclasses.dataclass(frozen=True)
class Replay:
    """How a views store's views are replayed. Picklable (plain fields only)."""

    augment: dict[str, Any]  # AugmentSpec.to_json() from the store
    views: int
    mix: dict[str, Any] | None = None  # Mix.to_json() of a mixed-views store
    classes: int = 0

    @classmethod
    def of_store(cls, url: str, meta: Any) -> Replay:
        info = views_of(url, meta)
        views_spec(info)  # imports user augmentations now: a missing one fails before training
        return cls(augment=info["augment"], views=int(info["views"]), mix=info.get("mix"),
                   classes=int(meta.num_classes))

    @functools.cached_property
    def mixing(self) -> Mix | None:
        """The store's Mix, or None."""
        return None if self.mix is None else Mix.from_json(self.mix)

    @functools.cached_property
    def spec(self) -> AugmentSpec:
        """Parsed once per process (and worker), not per batch."""
        return AugmentSpec.from_json(self.augment)

    def choose(self, sample_ids: np.ndarray, *, seed: int, epoch: int) -> np.ndarray:
        """The view (B,) int64 each of `sample_ids` (B,) replays in `epoch`."""
        return choose_views(np.asarray(sample_ids, dtype=np.int64), views=self.views, seed=seed,
                            epoch=epoch)

    def inputs(self, images: Any, params: np.ndarray) -> torch.Tensor:
        """The rebuilt float32 inputs (B, *item) of images (B, *item) and their chosen views'
        parameters (B, P) (views that are not mixed)."""
        return augment_images(_numpy(images), params, spec=self.spec)

    def rebuild(self, images: Any, labels: Any, params: np.ndarray, *,
                fetch: Fetch | None) -> tuple[torch.Tensor, Any]:
        """(inputs (B, *item), labels) of images (B, *item), their labels (B,) and chosen views'
        parameters (B, P); mixed views: partners fetched by sample id, labels (B, C) float32."""
        if self.mixing is None:
            return self.inputs(images, params), labels
        if fetch is None:  # internal invariant: the readers pass the dataset's fetch
            raise RuntimeError("mixed views replayed without a partner fetch")
        x, lam, partner, p_labels = mixed_images(_numpy(images), params, spec=self.spec,
                                                 mix=self.mixing, fetch=fetch)
        return x, mixed_labels(_numpy(labels), lam, partner, p_labels, classes=self.classes)

    def batch(self, sample_ids: np.ndarray, images: Any, labels: Any, values: np.ndarray,
              params: np.ndarray, *, seed: int, epoch: int, temperature: float,
              log_probs: bool, fetch: Fetch | None = None) -> tuple[torch.Tensor, Any,
                                                                     DenseTarget]:
        """(inputs (B, *item), labels, the target (B, C)) of a batch: values (B, V, C) every
        view's float16 logits or float32 log-probs, params (B, V, P) their parameters."""
        v = self.choose(sample_ids, seed=seed, epoch=epoch)  # (B,)
        rows = np.arange(len(v))
        x, y = self.rebuild(images, labels, params[rows, v], fetch=fetch)
        chosen = torch.from_numpy(np.ascontiguousarray(values[rows, v]))  # (B, C)
        target = DenseTarget(temperature, log_probs=chosen) if log_probs else \
            DenseTarget(temperature, logits=chosen)
        return x, y, target


def _numpy(a: Any) -> np.ndarray:
    return np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a)
