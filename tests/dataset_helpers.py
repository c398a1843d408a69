"""Tiny datasets in the on-disk formats of softtargets.datasets, written under tmp_path."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 3, 32, 32) uint8, labels (n,) in [0, 10))."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
            rng.integers(0, 10, n))


def _dump(path: Path, obj: dict) -> None:
    # protocol 2 and bytes keys: how the CIFAR archives were written (by Python 2)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, *, per_batch: int = 4, n_test: int = 3, seed: int = 0) -> Path:
    """A CIFAR-10 python-format folder: 5 train batches of `per_batch` rows and a test batch."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 7):
        n = per_batch if i <= 5 else n_test
        x, y = cifar_images(n, seed + i)
        _dump(d / (f"data_batch_{i}" if i <= 5 else "test_batch"),
              {b"batch_label": b"batch", b"labels": [int(v) for v in y],
               b"data": x.reshape(n, 3072), b"filenames": [b"f%d.png" % j for j in range(n)]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    _dump(d / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names,
                               b"num_vis": 3072})
    return d


def write_cifar100(root: Path, *, n_train: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    """A CIFAR-100 python-format folder with fine labels in [0, 100)."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        _dump(d / split, {b"filenames": [b"f.png"] * n, b"batch_label": split.encode(),
                          b"fine_labels": [int(v) for v in fine],
                          b"coarse_labels": [int(v) // 5 for v in fine], b"data": x})
    _dump(d / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)],
                       b"coarse_label_names": [b"s%d" % i for i in range(20)]})
    return d


def write_images(root: Path, layout: dict[str, int], *, size: tuple[int, int] = (6, 5),
                 seed: int = 0) -> dict[str, list[np.ndarray]]:
    """PNG files root/<class>/img<j>.png of `size` (W, H); returns each class's pixels (H, W, 3)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels: dict[str, list[np.ndarray]] = {}
    for cls, count in layout.items():
        (root / cls).mkdir(parents=True)
        pixels[cls] = []
        for j in range(count):
            x = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(x).save(root / cls / f"img{j}.png")
            pixels[cls].append(x)
    return pixels


def write_tokens(path: Path, tokens: np.ndarray) -> Path:
    """A flat token file (nanoGPT train.bin): the tokens' bytes, little endian, no header."""
    path.write_bytes(np.ascontiguousarray(tokens).astype(tokens.dtype.newbyteorder("<"))
                     .tobytes())
    return path
