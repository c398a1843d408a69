"""Stored mixed views: mixup or cutmix of two samples' augmented views, mixed before the
teacher sees them, so the stored target is the teacher's output on the mixed input and mixup
stays consistent offline (docs/FORMAT.md "Mixed views").

    write_logits(teacher, data, "mix.zarr",
                 views=Views(count=16, augment="shift=2", mix=Mix(kind="mixup", alpha=1.0)))

The mix of view v of sample s (partner sample id, lambda, cutmix box, the partner's view
parameters) is drawn from (seed, s, v) and the dataset's sample ids only (the partner pool),
so it does not depend on chunking, order or process. Its columns follow the augmentation
columns of view_params:

    mix.partner   partner sample id (-1: this view is not mixed), exact below 2^24
    mix.lam       lambda, the weight of the sample's own view
    mix.y0 .. mix.x1  cutmix box as fractions of the image height and width (mixup: 0 0 0 0)
    mix.<name>    the partner's view parameters, one per augmentation column (its view v)

Mixup input: lam * own + (1 - lam) * partner. Cutmix: own, with the box's pixels (rows
round(y0 H)..round(y1 H), columns likewise) taken from the partner; its label weight is the
own pixels' share, 1 - box area / (H W). Stage 2 fetches the partner's input by id from the
dataset and rebuilds the same input; the hard labels become lam-weighted label vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from softtargets.augment.views import AugmentSpec, augment_images, draw_view
from softtargets.errors import ConfigError, DatasetError

KINDS = ("mixup", "cutmix")
COLUMNS = ("mix.partner", "mix.lam", "mix.y0", "mix.x0", "mix.y1", "mix.x1")
EXACT_IDS = 2 ** 24  # float32 holds every integer below this exactly
MIX_STREAM = 0x6D6978  # "mix": the mix's generator, apart from the augmentations' (seed, s, v[, k])
Fetch = Callable[[np.ndarray], tuple[Any, Any]]  # sample ids (B,) -> (images (B, ...), labels)


@dataclasses.dataclass(frozen=True)
class Mix:
    """Mixed views: `kind` "mixup" or "cutmix", lambda ~ Beta(alpha, alpha), and `prob` the
    chance that a view is mixed (a clean view 0 never is)."""

    kind: str = "mixup"
    alpha: float = 1.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"Mix kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha <= 100):
            raise ConfigError(f"Mix alpha (of Beta(alpha, alpha)) must be in (0, 100], got "
                              f"{self.alpha!r}; e.g. 0.2 or 1.0")
        if not (isinstance(self.prob, (int, float)) and 0 <= self.prob <= 1):
            raise ConfigError(f"Mix prob must be in [0, 1], got {self.prob!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "prob", float(self.prob))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> Mix:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            raise ConfigError(f"mix options must be an object with keys among {sorted(names)}, "
                              f"got {d!r}")
        return cls(**d)


def parse_mix(text: str | None) -> Mix | None:
    """The command line's --mix 'KIND[,ALPHA[,PROB]]' (e.g. 'mixup,1.0,0.5') as a Mix; None
    stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if not 1 <= len(parts) <= 3:
        raise ConfigError(f"--mix must be KIND[,ALPHA[,PROB]], e.g. mixup,1.0,0.5; got {text!r}")
    try:
        numbers = [float(p) for p in parts[1:]]
    except ValueError:
        raise ConfigError(f"--mix {text!r}: ALPHA and PROB must be numbers, e.g. "
                          "mixup,1.0,0.5") from None
    return Mix(parts[0], *numbers)


def param_names(spec: AugmentSpec) -> tuple[str, ...]:
    """The mix's columns of view_params, after the spec's."""
    return COLUMNS + tuple(f"mix.{name}" for name in spec.param_names)


def check_pool(pool: np.ndarray) -> np.ndarray:
    """The partner pool (the dataset's sample ids) as int64, refused when float32 cannot hold
    its ids exactly."""
    pool = np.asarray(pool, dtype=np.int64)
    if not len(pool):
        raise DatasetError("mixed views need partners: the dataset has no rows")
    if pool.min() < 0 or pool.max() >= EXACT_IDS:
        raise DatasetError(f"mixed views store partner sample ids in float32 view_params: ids "
                           f"must be in [0, {EXACT_IDS}), the dataset has {pool.min()}.."
                           f"{pool.max()}; give it sample ids 0..N-1")
    return pool


def draw_mix(mix: Mix, spec: AugmentSpec, *, seed: int, sample_ids: np.ndarray, views: int,
             pool: np.ndarray) -> np.ndarray:
    """Mix parameters (R, V, len(param_names(spec))) float32 of every view of `sample_ids`;
    row i depends only on (seed, sample_ids[i], v) and `pool`."""
    base, augs = len(spec.param_names), spec.augmentations
    out = np.zeros((len(sample_ids), views, len(COLUMNS) + base), dtype=np.float32)
    out[:, :, 0], out[:, :, 1], out[:, :, len(COLUMNS):] = -1.0, 1.0, np.nan
    for r, sid in enumerate(np.asarray(sample_ids, dtype=np.int64)):
        for v in range(views):
            if v == 0 and spec.clean_view0:
                continue
            rng = np.random.default_rng([seed, int(sid), v, MIX_STREAM])
            if rng.random() >= mix.prob:
                continue
            partner = int(pool[rng.integers(len(pool))])
            lam = rng.beta(mix.alpha, mix.alpha)
            box = _box(rng, lam) if mix.kind == "cutmix" else (0.0, 0.0, 0.0, 0.0)
            out[r, v, :len(COLUMNS)] = (partner, lam, *box)
            out[r, v, len(COLUMNS):] = draw_view(spec, augs, seed=seed, sample_id=partner,
                                                 view=v)
    return out


def _box(rng: np.random.Generator, lam: float) -> tuple[float, float, float, float]:
    """A box of area ~ (1 - lam) centred uniformly, clipped to the image (fractions)."""
    r = float(np.sqrt(1.0 - lam))
    cy, cx = rng.uniform(0.0, 1.0, size=2)
    return (max(0.0, cy - r / 2), max(0.0, cx - r / 2), min(1.0, cy + r / 2),
            min(1.0, cx + r / 2))


def mixed_images(images: Any, params: np.ndarray, *, spec: AugmentSpec, mix: Mix,
                 fetch: Fetch) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, Any]:
    """(inputs (B, *item) float32, own weights lam (B,) float32, partner ids (B,) int64 (-1:
    unmixed), partner labels (b,) of the mixed rows) of images (B, *item) and their views'
    parameters (B, P): the augmentation columns, then the mix's."""
    params = np.asarray(params, dtype=np.float32)
    base = len(spec.param_names)
    x = augment_images(images, params[:, :base], spec=spec)  # (B, *item)
    m = params[:, base:]  # (B, 6 + base)
    partner = m[:, 0].astype(np.int64)
    lam = torch.from_numpy(np.ascontiguousarray(m[:, 1]))  # (B,)
    on = np.flatnonzero(partner >= 0)
    if not len(on):
        return x, lam, partner, None
    p_images, p_labels = fetch(partner[on])
    other = augment_images(p_images, m[on, len(COLUMNS):], spec=spec)  # (b, *item)
    x = x.clone()
    sel = torch.from_numpy(on)
    if mix.kind == "mixup":
        w = lam[sel].reshape(-1, *([1] * (x.dim() - 1)))
        x[sel] = w * x[sel] + (1 - w) * other
    else:
        lam = lam.clone()
        h, w_ = x.shape[-2], x.shape[-1]
        for k, row in enumerate(on.tolist()):
            y0, x0, y1, x1 = (int(round(float(c) * n)) for c, n in
                              zip(m[row, 2:6], (h, w_, h, w_)))
            x[row, ..., y0:y1, x0:x1] = other[k, ..., y0:y1, x0:x1]
            lam[row] = 1.0 - (y1 - y0) * (x1 - x0) / (h * w_)
    return x, lam, partner, p_labels


def mixed_labels(labels: Any, lam: torch.Tensor, partner: np.ndarray, partner_labels: Any, *,
                 classes: int) -> torch.Tensor:
    """Label vectors (B, C) float32: lam * onehot(y) + (1 - lam) * onehot(partner's y) on
    mixed rows, onehot(y) on the others."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    out = torch.nn.functional.one_hot(y, classes).float()  # (B, C)
    on = np.flatnonzero(partner >= 0)
    if len(on):
        sel = torch.from_numpy(on)
        py = torch.as_tensor(np.asarray(partner_labels), dtype=torch.int64)
        w = lam[sel, None].float()
        out[sel] = w * out[sel] + (1 - w) * torch.nn.functional.one_hot(py, classes).float()
    return out


def dataset_fetch(dataset: Any) -> Fetch:
    """Partners' (images, labels) by sample id from a softtargets dataset (stage 1)."""
    ids = np.asarray(dataset.sample_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")

    def fetch(partners: np.ndarray) -> tuple[Any, Any]:
        pos = np.searchsorted(ids[order], partners)
        pos = np.minimum(pos, len(ids) - 1)
        bad = partners[ids[order][pos] != partners]
        if bad.size:
            raise DatasetError(f"mixed views' partner sample ids {bad[:5].tolist()} are not in "
                               f"dataset {getattr(dataset, 'name', '?')}; use the dataset the "
                               "store was written from")
        return dataset.take(order[pos])

    return fetch
