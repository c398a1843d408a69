"""What an image is to augmented views: items (H, W) or (C, H, W), uint8 or float.

uint8 pixels are scaled by 1/255 (as the command line's IDX images always were); float pixels
are taken as they are. Inputs of any other kind (token sequences, flat feature vectors, integer
dtypes other than uint8) are refused in one line: a shift or a flip of them means nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from softtargets.errors import DatasetError

CHANNELS = (1, 3, 4)  # channel counts of common image layouts, to spot (H, W, C) items


def image_problem(shape: tuple[int, ...], dtype: Any) -> str | None:
    """Why items of `shape` (one item, no batch axis) and numpy `dtype` are not images for
    views, or None when they are."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" and dtype != np.uint8:
        return (f"its items are {dtype} arrays; views take uint8 pixels (scaled by 1/255) or "
                "float pixels")
    if len(shape) not in (2, 3) or min(shape, default=0) < 1:
        return (f"its items have shape {shape}; views take images (H, W) or (C, H, W), "
                "not token sequences or feature vectors")
    if len(shape) == 3 and shape[-1] in CHANNELS and shape[0] not in CHANNELS:
        return (f"its items have shape {shape}, which looks like (H, W, C); views take "
                "(C, H, W): transpose them, e.g. ImageFolder(root, transform=lambda x: "
                "x.transpose(2, 0, 1))")
    return None


def check_image_dataset(dataset: Any) -> None:
    """Refuse, in one line, a softtargets dataset whose items are not images for views."""
    name = getattr(dataset, "name", type(dataset).__name__)
    if getattr(dataset, "positions", None) is not None:
        raise DatasetError(f"dataset {name} holds sequences of {dataset.positions} positions "
                           "(e.g. tokens); augmented views need images (H, W) or (C, H, W): "
                           "drop views=")
    first = np.asarray(dataset.inputs(slice(0, 1)))  # (1, ...)
    problem = image_problem(first.shape[1:], first.dtype)
    if problem is not None:
        raise DatasetError(f"dataset {name} cannot have augmented views: {problem}; drop "
                           "views= or give image inputs")


def image_batch(images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(x (B, C, H, W) float32, a copy; whether the batch was (B, H, W)) of images (B, H, W)
    or (B, C, H, W), uint8 scaled by 1/255 or float."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    problem = image_problem(arr.shape[1:], arr.dtype)
    if problem is not None:
        raise DatasetError(f"a batch of shape {arr.shape} cannot be augmented: {problem}")
    if arr.dtype == np.uint8:
        x = torch.from_numpy(np.asarray(arr, dtype=np.float32)) / 255.0
    else:
        x = torch.from_numpy(np.array(arr, dtype=np.float32))  # a copy: callers write into it
    gray = x.dim() == 3
    return (x[:, None] if gray else x), gray
