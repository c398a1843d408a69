"""Augmentation-consistent soft targets (docs/FORMAT.md "Augmented views").

Parameters of view v of sample i are drawn from numpy's generator seeded by (seed, i, v) only, so
they do not depend on chunking, order or process. `apply_views` rebuilds the exact input from
those plain numbers (float32 on CPU: same parameters -> bit-identical input).

User augmentations: `AugmentSpec(user=("mypkg.augs:cutout",))` (or `--augment user=mypkg.augs:
cutout`) imports `cutout`, an `Augmentation` whose parameters are plain numbers; they are drawn
from their own generator (seed, i, v, 1 + k) and stored after the built-in columns. Stage 2
imports the same name from the store's attributes, so the replayed input is the same.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softtargets.augment.images import image_batch
from softtargets.config import check_views
from softtargets.errors import ConfigError
# view_logits (N, V, C) float16, view_params (N, V, P) float32; ensembles: member_view_logits
# (M, N, V, C) float16, chunks (1, R, V, C)
from softtargets.format.schema import MEMBER_VIEW_LOGITS, VIEW_LOGITS, VIEW_PARAMS  # noqa: F401

# Columns of view_params (N, V, P): the built-in augmentations, in this order, then user ones.
PARAM_NAMES = ("dy", "dx", "angle", "scale", "flip")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A user augmentation. `draw(rng)` returns one view's parameters (len(param_names) plain
    numbers); `apply(x, p)` maps float32 images x and p (B, K) to images of x's shape, x in the
    dataset's layout: (B, H, W) for grayscale items (H, W), (B, C, H, W) for items (C, H, W);
    in [0, 1] for uint8 data. apply must be deterministic: stage 2 rebuilds the teacher's input
    from the stored p."""

    param_names: tuple[str, ...]
    draw: Callable[[np.random.Generator], Sequence[float]]
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_augmentation(name: str) -> Augmentation:
    """Import 'module:attribute', an Augmentation (the extension point for user augmentations)."""
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"user augmentation {name!r} is not 'module:attribute', e.g. "
                          "'mypkg.augs:cutout'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"user augmentation {name!r} cannot be imported ({e}); put its module "
                          "on PYTHONPATH in both stages") from e
    if not isinstance(obj, Augmentation):
        raise ConfigError(f"user augmentation {name!r} is a {type(obj).__name__}, not a "
                          "softtargets.augment.views.Augmentation")
    return obj


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
    user: tuple[str, ...] = ()  # 'module:attribute' Augmentations, applied after the built-ins

    def __post_init__(self) -> None:
        if self.shift < 0 or self.shift > 8:
            raise ConfigError(f"augment shift must be an integer in [0, 8] pixels, got {self.shift}")
        if not 0.0 <= self.rotate <= 45.0:
            raise ConfigError(f"augment rotate must be in [0, 45] degrees, got {self.rotate}")
        if not 1.0 <= self.scale <= 2.0:
            raise ConfigError(f"augment scale must be in [1, 2] (1: no crop), got {self.scale}")
        if self.flip not in (0, 1):
            raise ConfigError(f"augment flip must be 0 or 1, got {self.flip}")
        object.__setattr__(self, "user", tuple(self.user))
        for name in self.user:
            load_augmentation(name)

    @property
    def augmentations(self) -> list[Augmentation]:
        return [load_augmentation(name) for name in self.user]

    @property
    def param_names(self) -> tuple[str, ...]:
        """Columns of view_params: the built-ins, then each user augmentation's, prefixed."""
        return PARAM_NAMES + tuple(f"{name}.{p}" for name, aug in zip(self.user,
                                                                     self.augmentations)
                                   for p in aug.param_names)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "user": list(self.user)}

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
    out: dict[str, Any] = {"user": []}
    types = {"shift": int, "rotate": float, "scale": float, "flip": int,
             "clean_view0": lambda s: bool(int(s)), "user": str}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if sep and key == "user":  # repeatable: user=mod:a,user=mod:b
            out["user"].append(value)
            continue
        if not sep or key not in types:
            raise ConfigError(f"--augment item {part!r} is not KEY=VALUE with KEY in "
                              f"{sorted(types)}; e.g. 'shift=2,rotate=10,flip=0'")
        try:
            out[key] = types[key](value)
        except ValueError as e:
            raise ConfigError(f"--augment {key}={value!r} is not a number") from e
    return AugmentSpec(**out)


def draw_params(spec: AugmentSpec, *, seed: int, sample_ids: np.ndarray,
                views: int) -> np.ndarray:
    """Parameters (R, V, P) float32 of every view of `sample_ids`; row i depends only on
    (seed, sample_ids[i], v)."""
    check_views(views)
    augs = spec.augmentations
    out = np.zeros((len(sample_ids), views, len(spec.param_names)), dtype=np.float32)
    for r, sid in enumerate(np.asarray(sample_ids, dtype=np.int64)):
        for v in range(views):
            out[r, v] = draw_view(spec, augs, seed=seed, sample_id=int(sid), view=v)
    return out


def draw_view(spec: AugmentSpec, augs: list[Augmentation], *, seed: int, sample_id: int,
              view: int) -> np.ndarray:
    """Parameters (P,) float32 of view `view` of `sample_id` (augs: spec.augmentations)."""
    out = np.zeros(len(spec.param_names), dtype=np.float32)
    out[3] = 1.0  # scale 1: no crop
    if view == 0 and spec.clean_view0:
        out[len(PARAM_NAMES):] = np.nan  # user augmentations off: NaN = skip
        return out
    rng = np.random.default_rng([seed, sample_id, view])
    d = rng.integers(-spec.shift, spec.shift + 1, size=2)
    out[:len(PARAM_NAMES)] = (d[0], d[1], rng.uniform(-spec.rotate, spec.rotate),
                              rng.uniform(1.0, spec.scale),
                              float(spec.flip and rng.random() < 0.5))
    col = len(PARAM_NAMES)
    for k, aug in enumerate(augs):  # own generator each: built-in columns never change
        values = np.asarray(aug.draw(np.random.default_rng([seed, sample_id, view, 1 + k])),
                            dtype=np.float32)
        if values.shape != (len(aug.param_names),) or not np.isfinite(values).all():
            raise ConfigError(f"user augmentation {spec.user[k]!r} drew {values!r}; it "
                              f"must return {len(aug.param_names)} finite numbers")
        out[col:col + len(values)] = values
        col += len(values)
    return out


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, s: int) -> torch.Tensor:
    """Integer shift with zero fill by one gather (exact). x (B, C, H, W)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (s, s, s, s))  # (B, C, H+2s, W+2s)
    rows = (s - dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (s - dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows, cols]


def augment_images(images: np.ndarray | torch.Tensor, params: np.ndarray, *,
                   spec: AugmentSpec | None = None) -> torch.Tensor:
    """Augmented float32 images in the layout given, (B, H, W) or (B, C, H, W), of images
    (uint8, scaled by 1/255, or float) and params (B, P).

    Order: flip, rotate+zoom (bilinear grid_sample, float32 CPU), integer shift, then the spec's
    user augmentations (rows whose user parameters are NaN, clean views, skip them). Every
    channel of an image gets the same parameters.
    """
    x, gray = image_batch(images)  # (B, C, H, W) float32, a copy
    p = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float32))  # (B, P)
    want = len(spec.param_names) if spec is not None else len(PARAM_NAMES)
    if p.shape[-1] != want:
        raise ConfigError(f"view parameters have {p.shape[-1]} columns, the augment spec "
                          f"expects {want}; pass the store's spec (views_spec(meta))")
    if len(p) != len(x):  # internal invariant: one parameter row per image
        raise RuntimeError(f"{len(p)} view parameter rows for {len(x)} images")
    flip = p[:, 4] > 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    affine = (p[:, 2] != 0) | (p[:, 3] != 1)
    if affine.any():
        sel = torch.nonzero(affine).flatten()
        theta_rad = p[sel, 2] * (torch.pi / 180.0)
        zoom = 1.0 / p[sel, 3]  # sample a centred window of side 1/scale: crop then resize
        cos, sin = torch.cos(theta_rad) * zoom, torch.sin(theta_rad) * zoom
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1),
                             torch.stack([sin, cos, zeros], 1)], 1)  # (b, 2, 3)
        sub = x[sel]  # (b, C, H, W)
        grid = F.affine_grid(theta, list(sub.shape), align_corners=False)
        x = x.clone()
        x[sel] = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
    s = int(p[:, :2].abs().max().item()) if len(p) else 0
    if s:
        x = _shift(x, p[:, 0].long(), p[:, 1].long(), s)
    x = x[:, 0] if gray else x  # the caller's layout: user augmentations see it too
    if spec is not None and spec.user:
        x = _apply_user(x, p[:, len(PARAM_NAMES):], spec)
    return x.contiguous()


def apply_views(images: np.ndarray | torch.Tensor, params: np.ndarray, *,
                spec: AugmentSpec | None = None) -> torch.Tensor:
    """Augmented float32 inputs flattened, (B, H*W) (or (B, C*H*W)), in [0, 1] for uint8
    images (B, H, W) (or (B, C, H, W)) and params (B, P): `augment_images`, one row per input,
    as the command line's IDX teachers and students take them."""
    x = augment_images(images, params, spec=spec)
    return x.reshape(x.shape[0], -1).contiguous()


def _apply_user(x: torch.Tensor, p: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """x (B, H, W) or (B, C, H, W), p (B, K_total): each user augmentation on the rows whose
    params are set."""
    col = 0
    for name, aug in zip(spec.user, spec.augmentations):
        cols = p[:, col:col + len(aug.param_names)]
        col += len(aug.param_names)
        on = torch.nonzero(~torch.isnan(cols).any(1)).flatten()
        if len(on):
            out = aug.apply(x[on], cols[on])
            if out.shape != x[on].shape:
                raise ConfigError(f"user augmentation {name!r} returned {tuple(out.shape)}, "
                                  f"expected {tuple(x[on].shape)}")
            x = x.clone()
            x[on] = out.float()
    return x


def views_info(spec: AugmentSpec, *, views: int, seed: int,
               mix: dict[str, Any] | None = None,
               param_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The store attribute `views` (docs/FORMAT.md "Augmented views"); `mix` (Mix.to_json())
    and its columns only for mixed views."""
    info = {"views": views, "seed": seed, "augment": spec.to_json(),
            "param_names": list(param_names or spec.param_names), "logits_is_view": 0}
    return info if mix is None else {**info, "mix": mix}


def views_spec(info: dict[str, Any]) -> AugmentSpec:
    """The AugmentSpec recorded in a store's `views` attribute (imports user augmentations)."""
    return AugmentSpec.from_json(info["augment"])


def check_view(url: str, extra: dict[str, Any], view: int) -> int:
    """`view` if the store (metadata `extra`) holds it, else one ConfigError naming the range."""
    views = int((extra.get("views") or {}).get("views", 0))
    if not views:
        raise ConfigError(f"store {url!r} holds no augmented views (it was written without "
                          f"--views); view {view} does not exist, drop view=")
    if not 0 <= view < views:
        raise ConfigError(f"store {url!r} holds {views} augmented views per sample; view {view} "
                          f"is not one of them: choose 0..{views - 1}")
    return view


def choose_views(sample_ids: np.ndarray, *, views: int, seed: int, epoch: int) -> np.ndarray:
    """The view (R,) int64 each sample replays in `epoch`: a function of (seed, epoch, sample id)
    only, so in-memory and streamed loaders, workers and ranks agree. Vectorised hash (splitmix64
    finaliser), not a generator per row: it runs on every streamed batch."""
    x = (np.asarray(sample_ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
         + np.uint64((seed * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF))
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(views)).astype(np.int64)


