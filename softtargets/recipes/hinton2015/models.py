"""Teacher and student architectures and their checkpoints.

A checkpoint records the architecture (ModelSpec), the training config, the dataset identity it was
trained on and the weights, so stage 1 can rebuild the teacher and record what made a store.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softtargets.config import ARCHS
from softtargets.errors import CheckpointError, ForeignDataError
from softtargets.torchfiles import file_sha256, safe_load, save_atomic

CHECKPOINT_FORMAT = "softtargets.checkpoint"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """arch "mlp": inputs -> hidden... -> classes, ReLU, dropout on inputs and hidden layers.
    arch "cnn": square images of `inputs` pixels; hidden = (c1, c2, fc): two 5x5 conv + 2x2
    max-pool blocks of c1 and c2 channels, then a dropout fc layer (a small teacher
    clearly better than the MLP students on Fashion-MNIST)."""

    arch: str = "mlp"
    inputs: int = 784
    hidden: tuple[int, ...] = (1200, 1200)
    classes: int = 10
    dropout: float = 0.0
    input_dropout: float = 0.0

    def describe(self) -> str:
        return f"{self.arch} " + "-".join(str(d) for d in (self.inputs, *self.hidden, self.classes))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelSpec:
        try:
            return cls(**{**d, "hidden": tuple(d["hidden"])})
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"checkpoint model spec {d!r} is not an MLP spec: {e}") from e


class MLP(nn.Module):
    """Fully connected ReLU network. forward: (B, inputs) -> (B, classes) logits."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        if spec.input_dropout > 0:
            layers.append(nn.Dropout(spec.input_dropout))
        width = spec.inputs
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            width = h
        layers.append(nn.Linear(width, spec.classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNN(nn.Module):
    """Small convolutional net. forward: (B, inputs) or (B, 1, H, W) -> (B, classes) logits."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        side = math.isqrt(spec.inputs)
        if side * side != spec.inputs or side % 4 or len(spec.hidden) != 3:
            raise CheckpointError(f"cnn needs square images with a side divisible by 4 and "
                                  f"hidden=(c1, c2, fc); got inputs={spec.inputs}, "
                                  f"hidden={spec.hidden}")
        self.spec, self.side = spec, side
        c1, c2, fc = spec.hidden
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.net = nn.Sequential(  # `net[-1]` is the output layer, as in MLP
            nn.Flatten(), nn.Dropout(spec.dropout), nn.Linear(c2 * (side // 4) ** 2, fc),
            nn.ReLU(), nn.Dropout(spec.dropout), nn.Linear(fc, spec.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(len(x), 1, self.side, self.side)  # (B, 1, H, W)
        return self.net(self.features(x))


def build(spec: ModelSpec) -> nn.Module:
    """Instantiate the model a spec describes."""
    if spec.arch not in ARCHS:
        raise CheckpointError(f"unknown architecture {spec.arch!r}; allowed: {list(ARCHS)}")
    return CNN(spec) if spec.arch == "cnn" else MLP(spec)


@torch.no_grad()
def apply_max_norm(model: nn.Module, max_norm: float) -> None:
    """Rescale each hidden unit's incoming weight vector to L2 norm <= max_norm (Srivastava 2014)."""
    if max_norm <= 0:
        return
    for module in model.modules():
        if isinstance(module, nn.Linear):
            # weight (out, in): row j is the incoming vector of unit j
            norms = module.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
            module.weight.mul_(norms.clamp(max=max_norm) / norms)


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, spec: ModelSpec,
                    config: dict[str, Any], dataset: dict[str, Any], class_names: tuple[str, ...],
                    metrics: dict[str, Any]) -> str:
    """Write a checkpoint atomically (temp file, then rename); returns its sha256."""
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model": spec.to_json(), "config": config, "dataset": dataset,
        "class_names": list(class_names), "metrics": metrics,
        "torch": str(torch.__version__),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return file_sha256(save_atomic(payload, path))


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model in eval mode plus what it records."""

    model: nn.Module
    spec: ModelSpec
    config: dict[str, Any]
    dataset: dict[str, Any]
    class_names: tuple[str, ...]
    metrics: dict[str, Any]
    sha256: str
    path: str


def load_checkpoint(path: str | os.PathLike, *, expect_classes: int | None = None) -> Checkpoint:
    """Load a softtargets checkpoint, checking its format, architecture and class count."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found; train one with "
                              "`softtargets train-teacher` (or `make teacher`)")
    payload = safe_load(path, fix="pass a checkpoint written by `softtargets train-teacher`")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a softtargets checkpoint "
                              f"(format {payload.get('format') if isinstance(payload, dict) else None!r})")
    spec = ModelSpec.from_json(payload["model"])
    if expect_classes is not None and spec.classes != expect_classes:
        raise CheckpointError(f"checkpoint {str(path)!r} predicts {spec.classes} classes but the "
                              f"dataset has {expect_classes}; use a teacher trained on this dataset")
    model = build(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not fit architecture "
                              f"{spec.describe()}: {e}") from e
    model.eval()
    return Checkpoint(model=model, spec=spec, config=payload.get("config", {}),
                      dataset=payload.get("dataset", {}),
                      class_names=tuple(payload.get("class_names", ())),
                      metrics=payload.get("metrics", {}), sha256=file_sha256(path), path=str(path))


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace what is at `path` (train-teacher --overwrite) unless it is a softtargets
    checkpoint: softtargets never deletes a file it did not create."""
    try:
        payload = None if Path(path).is_dir() else safe_load(path, fix="")
    except CheckpointError:
        payload = None
    if not (isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT):
        raise ForeignDataError(f"refusing to overwrite {str(path)!r}: it is not a softtargets "
                               "checkpoint, so softtargets did not create it; move it or choose "
                               "another --out")
