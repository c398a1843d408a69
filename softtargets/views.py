"""Issue 7: augmentation-consistent soft targets (docs/FORMAT.md "Augmented views").

Parameters of view v of sample i are drawn from numpy's generator seeded by (seed, i, v) only, so
they do not depend on chunking, order or process. `apply_views` rebuilds the exact input from
those plain numbers (float32 on CPU: same parameters -> bit-identical input).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softtargets.errors import ConfigError, StoreMismatchError

# Columns of view_params (N, V, P): the built-in augmentations, in this order.
PARAM_NAMES = ("dy", "dx", "angle", "scale", "flip")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """What views are drawn: shift (max integer pixels), rotate (max degrees), scale (max zoom of
    a centred crop resized back, 1.0 = none), flip (0/1: horizontal flip with p=0.5), clean_view0
    (view 0 is the unaugmented input)."""

    shift: int = 2
    rotate: float = 0.0
    scale: float = 1.0
    flip: int = 0
    clean_view0: bool = True

    def __post_init__(self) -> None:
        if self.shift < 0 or self.shift > 8:
            raise ConfigError(f"augment shift must be an integer in [0, 8] pixels, got {self.shift}")
        if not 0.0 <= self.rotate <= 45.0:
            raise ConfigError(f"augment rotate must be in [0, 45] degrees, got {self.rotate}")
        if not 1.0 <= self.scale <= 2.0:
            raise ConfigError(f"augment scale must be in [1, 2] (1: no crop), got {self.scale}")
        if self.flip not in (0, 1):
            raise ConfigError(f"augment flip must be 0 or 1, got {self.flip}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AugmentSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"augment spec has unknown keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)


def parse_spec(text: str) -> AugmentSpec:
    """'shift=2,rotate=10,flip=0' or the path of a JSON file holding such an object."""
    if text.endswith(".json") and Path(text).is_file():
        return AugmentSpec.from_json(json.loads(Path(text).read_text()))
    out: dict[str, Any] = {}
    types = {"shift": int, "rotate": float, "scale": float, "flip": int,
             "clean_view0": lambda s: bool(int(s))}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"--augment item {part!r} is not KEY=VALUE with KEY in "
                              f"{sorted(types)}; e.g. 'shift=2,rotate=10,flip=0'")
        try:
            out[key] = types[key](value)
        except ValueError as e:
            raise ConfigError(f"--augment {key}={value!r} is not a number") from e
    return AugmentSpec(**out)


def check_views(views: int) -> None:
    if views <= 0:
        raise ConfigError(f"--views must be a positive number of views per sample, got {views}")


def draw_params(spec: AugmentSpec, *, seed: int, sample_ids: np.ndarray,
                views: int) -> np.ndarray:
    """Parameters (R, V, P) float32 of every view of `sample_ids`; row i depends only on
    (seed, sample_ids[i], v)."""
    check_views(views)
    out = np.zeros((len(sample_ids), views, len(PARAM_NAMES)), dtype=np.float32)
    out[:, :, 3] = 1.0  # scale 1: no crop
    for r, sid in enumerate(np.asarray(sample_ids, dtype=np.int64)):
        for v in range(views):
            if v == 0 and spec.clean_view0:
                continue
            rng = np.random.default_rng([seed, int(sid), v])
            d = rng.integers(-spec.shift, spec.shift + 1, size=2)
            out[r, v] = (d[0], d[1], rng.uniform(-spec.rotate, spec.rotate),
                         rng.uniform(1.0, spec.scale), float(spec.flip and rng.random() < 0.5))
    return out


def _shift(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, s: int) -> torch.Tensor:
    """Integer shift with zero fill by one gather (exact). images (B, H, W)."""
    b, h, w = images.shape
    padded = F.pad(images, (s, s, s, s))  # (B, H+2s, W+2s)
    rows = (s - dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (s - dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], rows, cols]


def apply_views(images: np.ndarray | torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """Augmented float32 inputs (B, H*W) in [0, 1] of uint8 images (B, H, W) and params (B, P).

    Order: flip, rotate+zoom (bilinear grid_sample, float32 CPU), then integer shift.
    """
    x = torch.as_tensor(np.asarray(images)).float() / 255.0  # (B, H, W)
    p = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32))  # (B, P)
    flip = p[:, 4] > 0.5
    x = torch.where(flip[:, None, None], x.flip(-1), x)
    affine = (p[:, 2] != 0) | (p[:, 3] != 1)
    if affine.any():
        sel = torch.nonzero(affine).flatten()
        theta_rad = p[sel, 2] * (torch.pi / 180.0)
        zoom = 1.0 / p[sel, 3]  # sample a centred window of side 1/scale: crop then resize
        cos, sin = torch.cos(theta_rad) * zoom, torch.sin(theta_rad) * zoom
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1),
                             torch.stack([sin, cos, zeros], 1)], 1)  # (b, 2, 3)
        sub = x[sel][:, None]  # (b, 1, H, W)
        grid = F.affine_grid(theta, list(sub.shape), align_corners=False)
        x = x.clone()
        x[sel] = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)[:, 0]
    s = int(p[:, :2].abs().max().item()) if len(p) else 0
    if s:
        x = _shift(x, p[:, 0].long(), p[:, 1].long(), s)
    return x.reshape(x.shape[0], -1).contiguous()


class ViewData:
    """Stage 2 over a views store: per epoch, each sample draws one view (seeded by
    (seed, epoch, sample_id)); yields (rebuilt inputs (B, D) float32, labels (B,), logits (B, C))."""

    def __init__(self, split: Any, store_url: str) -> None:
        from softtargets.store import read_meta
        meta, group = read_meta(store_url)
        if "views" not in meta.extra or not meta.complete:
            raise StoreMismatchError(f"store {store_url!r} is not a complete views store "
                                     "(written by teacher-logits --views V)")
        if meta.dataset.get("fingerprint") != split.identity()["fingerprint"]:
            raise StoreMismatchError(f"store {store_url!r} was computed on other data than "
                                     f"{split.name}/{split.split}")
        ids = group["sample_id"][:]  # (N,)
        if (ids != np.arange(len(ids))).any():
            raise StoreMismatchError(f"store {store_url!r}: sample_id is not 0..N-1")
        self.info = meta.extra["views"]
        self.view_logits = np.asarray(group["view_logits"][:])  # (N, V, C) float16
        self.view_params = np.asarray(group["view_params"][:])  # (N, V, P) float32
        self.images = split.images
        self.labels = torch.from_numpy(split.labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def draw_views(self, *, epoch: int, seed: int) -> np.ndarray:
        """View index (N,) per sample for this epoch; depends only on (seed, epoch, sample_id)."""
        v = self.view_logits.shape[1]
        return np.array([np.random.default_rng([seed, epoch, i]).integers(v)
                         for i in range(len(self))], dtype=np.int64)

    def batches(self, *, batch_size: int, epoch: int,
                seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self), generator=g).numpy()
        chosen = self.draw_views(epoch=epoch, seed=seed)
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            v = chosen[idx]
            x = apply_views(self.images[idx], self.view_params[idx, v])
            t = torch.from_numpy(self.view_logits[idx, v].astype(np.float32))
            yield x, self.labels[idx], t
