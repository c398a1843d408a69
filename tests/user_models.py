"""User factories for the CLI tests (imported by name, e.g. 'user_models:image_teacher')."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from softtargets.datasets import from_tensors

IMAGE = (8, 8, 3)  # (H, W, C) of the test image folder's PNGs
VOCAB = 16  # classes of the test token file


class Pixels(nn.Module):
    """uint8 images (B, H, W, C) as the dataset gives them -> logits (B, classes)."""

    def __init__(self, classes: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(IMAGE)), hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255)


class NextToken(nn.Module):
    """Token ids (B, L) uint16 -> next-token logits (B, L, VOCAB), each position on its own."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Embedding(VOCAB, width), nn.Linear(width, VOCAB))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.long())


def image_teacher() -> nn.Module:
    torch.manual_seed(1)
    return Pixels(2, 16)


def image_student() -> nn.Module:
    return Pixels(2, 8)


def token_teacher() -> nn.Module:
    torch.manual_seed(2)
    return NextToken(8)


def token_student() -> nn.Module:
    return NextToken(4)


def tensors():
    """A softtargets dataset of 24 float rows (4,), 3 classes."""
    rng = np.random.default_rng(0)
    return from_tensors(rng.normal(size=(24, 4)).astype(np.float32), rng.integers(0, 3, 24),
                        num_classes=3, name="user-tensors")


def plain():
    """A plain map-style dataset (no class count): needs --num-classes."""
    return [(np.full(4, i, np.float32), i % 3) for i in range(24)]


def not_a_dataset() -> int:
    return 7


def not_a_module() -> str:
    return "model"


NOT_CALLABLE = 3


def idx_teacher() -> nn.Module:
    """uint8 IDX images (B, 28, 28) -> logits (B, 10); also used as a student."""
    torch.manual_seed(3)
    return nn.Sequential(Scale(), nn.Flatten(), nn.Linear(28 * 28, 10))


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255


def cifar_net() -> nn.Module:
    """uint8 CIFAR images (B, 3, 32, 32) -> logits (B, 10)."""
    torch.manual_seed(4)
    return nn.Sequential(Scale(), nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 7 * 7, 10))
