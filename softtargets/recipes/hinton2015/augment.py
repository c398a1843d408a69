"""Input augmentations used in training (the paper's jitter)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, *, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an independent integer (dy, dx) in [-max_shift, max_shift], zero fill.

    images: (B, H, W) -> (B, H, W). One gather, no Python loop over the batch.
    """
    if max_shift == 0:
        return images
    b, h, w = images.shape
    padded = F.pad(images, (max_shift, max_shift, max_shift, max_shift))  # (B, H+2s, W+2s)
    oy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b)[:, None, None], rows, cols]
