"""Images in class folders: `root/<class>/**/*.png|jpg|jpeg`, decoded with Pillow.

Classes are the sub-folders of root sorted by name (hidden ones skipped); class k is the k-th.
Rows are the image files sorted by class, then by their path below the class folder. Pillow is
an optional extra (`pip install 'softtargets[images]'`) imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import xxhash

from softtargets.datasets.base import BaseDataset, as_numpy
from softtargets.errors import ConfigError, DatasetError, DatasetNotFoundError

EXTENSIONS = (".png", ".jpg", ".jpeg")


def _pil() -> Any:
    """PIL.Image, or one line saying how to install it."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ConfigError("ImageFolder needs Pillow: pip install 'softtargets[images]' (or "
                          "pip install Pillow)") from e
    return Image


def scan(root: Path) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """(class names, image files, labels (N,) int64) of an image folder."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} not found")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"image folder {root} has no class folders; put the images of class "
                           f"C in {root}/C/")
    files: list[Path] = []
    labels: list[int] = []
    for k, d in enumerate(classes):
        found = sorted((p for p in d.rglob("*")
                        if p.suffix.lower() in EXTENSIONS and p.is_file()),
                       key=lambda p: p.relative_to(d).as_posix())
        if not found:
            raise DatasetError(f"image folder {root}: class folder {d.name!r} has no "
                               f"{'/'.join(EXTENSIONS)} files; remove it or add its images")
        files += found
        labels += [k] * len(found)
    return tuple(d.name for d in classes), files, np.asarray(labels, np.int64)


class ImageFolder(BaseDataset):
    """Images as uint8 (H, W, C) arrays (C from `mode`: 3 for "RGB", 1 for "L"), all of one
    size, or whatever `transform(image array)` returns (arrays or tensors of one shape)."""

    def __init__(self, root: str | Path, *, transform: Callable[[np.ndarray], Any] | None = None,
                 mode: str = "RGB", name: str | None = None, split: str = "train",
                 dataset_id: str | None = None) -> None:
        root = Path(root)
        self._set_common(name=name or root.name, split=split, dataset_id=dataset_id)
        Image = _pil()
        if mode not in Image.MODES:
            raise DatasetError(f"image folder {root}: unknown Pillow mode {mode!r}; use 'RGB' "
                               "or 'L'")
        self.root, self.mode, self.transform = root, mode, transform
        self._class_names, self.files, self._y = scan(root)
        self._shape: tuple[int, ...] | None = None  # of the first file's input, once read

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, path: Path) -> np.ndarray:
        """uint8 (H, W, C) pixels of one file in `mode`."""
        try:
            with _pil().open(path) as im:
                x = np.asarray(im.convert(self.mode))
        except (OSError, ValueError) as e:
            raise DatasetError(f"image folder {self.root}: cannot decode {path}: {e}") from e
        return x[:, :, None] if x.ndim == 2 else x

    def _convert(self, x: np.ndarray) -> np.ndarray:
        return x if self.transform is None else as_numpy(self.transform(x))

    def _reference_shape(self) -> tuple[int, ...]:
        """The first file's input shape: every row must have it."""
        if self._shape is None:
            self._shape = self._convert(self._decode(self.files[0])).shape
        return self._shape

    def _one(self, path: Path) -> np.ndarray:
        """One row's input, checked to have the shape of the first file's."""
        x = self._convert(self._decode(path))
        want = self._reference_shape()
        if x.shape != want:
            if self.transform is not None:
                got, ref = f"transform output shape {x.shape}", f"{want}"
            else:
                got, ref = f"size {x.shape[1]}x{x.shape[0]} (WxH)", f"{want[1]}x{want[0]}"
            raise DatasetError(f"image folder {self.root}: {path} has {got}, but "
                               f"{self.files[0]} has {ref}; all images must share one size "
                               "(resize them, or pass a transform that does)")
        return x

    def _inputs(self, start: int, stop: int) -> np.ndarray:
        rows = [self._one(p) for p in self.files[start:stop]]  # decoding is per file anyway
        if not rows:
            return np.empty((0, *self._reference_shape()), np.uint8)
        return np.stack(rows)

    def _labels(self, start: int, stop: int) -> np.ndarray:
        return self._y[start:stop]

    def _identity(self) -> dict[str, Any]:
        # the listing (paths below root and labels) is known without opening a file; the
        # pixels are bound unit by unit by the input digests
        h = xxhash.xxh3_128()
        for p, y in zip(self.files, self._y.tolist()):
            h.update(f"{p.relative_to(self.root).as_posix()}\t{y}\n".encode())
        return {"mode": self.mode, "listing": "xxh3-128:" + h.hexdigest()}
