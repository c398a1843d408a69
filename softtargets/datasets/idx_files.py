"""Datasets in the MNIST IDX format and their fingerprints.

A fingerprint is a sha256 over the ordered inputs and labels of a split (see docs/FORMAT.md), so a
store can prove which data it was computed on, whatever file or mirror the data came from.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import struct
import urllib.request
from functools import cached_property
from pathlib import Path

import numpy as np

from softtargets.config import DEFAULT_DATA_DIR, DataConfig
from softtargets.errors import DatasetError, DatasetNotFoundError, ValidationLeakError

FINGERPRINT_PREFIX = b"softtargets.fingerprint/v1\n"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where a named IDX dataset comes from and what its classes are."""

    name: str
    class_names: tuple[str, ...]
    urls: tuple[str, ...]  # mirrors, tried in order
    md5: dict[str, str]  # of the canonical .gz files, checked on download
    system_dirs: tuple[str, ...] = ()  # read-only places a package manager puts the files
    teacher_jitter: int = 2  # the paper's MNIST teacher: random shifts of up to 2 pixels


FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        # Measured (README): on Fashion-MNIST jitter costs more than it gives within a 30-epoch
        # budget (2 px: 1303 test errors after 30 epochs; none: 1328 after only 5).
        teacher_jitter=0,
    ),
    "mnist": DatasetSpec(
        name="mnist",
        class_names=tuple(str(i) for i in range(10)),
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
        md5={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        urls=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        md5={
            "train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134",
        },
    ),
}

# Fingerprints of the full splits, measured on the canonical data: a changed file is caught on load.
KNOWN_FINGERPRINTS: dict[tuple[str, str], str] = {
    ("fashion-mnist", "train"):
        "sha256:9a042e8212e0c6a38b8ea6ba123e50651f3c16bfe012a381e6ccf24bc05fbb5f",
    ("fashion-mnist", "test"):
        "sha256:0aeb5114014befed1e45f12201227cc39cf09a061a1e8b833eb4a7382f6b345f",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split of a dataset in memory: images (N, H, W) uint8 and labels (N,) uint8."""

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    limit: int | None = None
    source: str = ""
    val_rows: int = 0  # rows held out after this split's rows (DataConfig.val_rows)
    val_start: int | None = None  # index of the first held-out row; None without val_rows

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.images, self.labels)

    def identity(self) -> dict:
        """What a store or checkpoint records about the data it was computed on."""
        return {"name": self.name, "split": self.split, "n": len(self), "limit": self.limit,
                "val_rows": self.val_rows, "fingerprint": self.fingerprint}

    def inputs(self, rows: slice = slice(None)) -> np.ndarray:
        """Flattened float32 inputs in [0, 1] of `rows`, shape (R, H*W)."""
        return to_inputs(self.images[rows])


def to_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 images (R, H, W) -> float32 model inputs (R, H*W) in [0, 1]."""
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over a header, the uint8 images in C order and the uint8 labels."""
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DatasetError(f"fingerprint needs uint8 arrays, got {images.dtype} and {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    h = hashlib.sha256(FINGERPRINT_PREFIX)
    h.update((" ".join(str(d) for d in images.shape) + "\n").encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    return "sha256:" + h.hexdigest()


def spec(name: str) -> DatasetSpec:
    """The DatasetSpec for `name`, or a DatasetNotFoundError listing the known names."""
    if name not in DATASETS:
        raise DatasetNotFoundError(f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name]


def search_dirs(name: str, data_dir: str | os.PathLike) -> list[Path]:
    """Where the files of dataset `name` are looked for, in order: `<data_dir>/<name>`, then,
    for the default data_dir only, the system-wide copy. A folder the user names is used alone."""
    system = spec(name).system_dirs if str(data_dir) == DEFAULT_DATA_DIR else ()
    return [Path(data_dir) / name, *(Path(d) for d in system)]


def find_file(name: str, stem: str, data_dir: str | os.PathLike) -> Path:
    """The path of IDX file `stem` (plain or .gz) of dataset `name`."""
    dirs = search_dirs(name, data_dir)
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    if str(data_dir) != DEFAULT_DATA_DIR:  # never the system-wide copy: the user named this
        raise DatasetNotFoundError(
            f"dataset {name!r}: file {stem} (or {stem}.gz) not found; looked in {str(dirs[0])!r} "
            f"only, the dataset's folder in --data-dir {data_dir} (the system-wide copy is used "
            f"only with the default --data-dir {DEFAULT_DATA_DIR}); put the files there or run "
            f"`softtargets data --dataset {name} --data-dir {data_dir}`")
    how = (f"run `softtargets data --dataset {name}` (or `make data DATASET={name}`) to download it"
           if spec(name).urls else "")
    if spec(name).system_dirs:
        how += " or `apt-get install dataset-fashion-mnist`"
    raise DatasetNotFoundError(
        f"dataset {name!r}: file {stem}[.gz] not found; looked in {[str(d) for d in dirs]}; {how}"
    )


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a numpy array of uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}; delete it and fetch it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: header says shape {dims} but holds {data.size} bytes; "
                           "the file is truncated, fetch it again")
    return data.reshape(dims)


def _read_split(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, Path]:
    """All rows of a split file pair, checked: images (N, H, W), labels (N,), their directory."""
    ds = spec(cfg.dataset)
    img_stem, lbl_stem = FILES[cfg.split]
    img_path = find_file(cfg.dataset, img_stem, cfg.data_dir)
    lbl_path = find_file(cfg.dataset, lbl_stem, cfg.data_dir)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{cfg.dataset}/{cfg.split}: images {images.shape} and labels "
                           f"{labels.shape} do not form a (N, H, W) + (N,) pair")
    if labels.max(initial=0) >= len(ds.class_names):
        raise DatasetError(f"{lbl_path}: label {labels.max()} >= {len(ds.class_names)} classes")
    known = KNOWN_FINGERPRINTS.get((cfg.dataset, cfg.split))
    if known is not None and fingerprint(images, labels) != known:
        raise DatasetError(f"{cfg.dataset}/{cfg.split} in {img_path.parent} does not match the "
                           f"canonical data (fingerprint {known}); delete and fetch it again")
    if cfg.val_rows >= len(labels):
        raise DatasetError(f"--val-rows {cfg.val_rows} holds out all {len(labels)} rows of "
                           f"{cfg.dataset}/{cfg.split}; pass fewer (e.g. a tenth of them)")
    return images, labels, img_path.parent


def load_split(cfg: DataConfig) -> Split:
    """Load a dataset split and check it against known fingerprints.

    With cfg.val_rows the last val_rows rows of the train split are held out (load_validation);
    the split is the rows before them, of which cfg.limit (if set) keeps the first.
    """
    images, labels, where = _read_split(cfg)
    val_start = len(labels) - cfg.val_rows if cfg.val_rows else None
    images, labels = images[:val_start], labels[:val_start]
    if cfg.limit is not None:
        if cfg.limit > len(labels):
            held = f" left by --val-rows {cfg.val_rows}" if cfg.val_rows else ""
            raise DatasetError(f"limit {cfg.limit} exceeds the {len(labels)} rows{held} of "
                               f"{cfg.dataset}/{cfg.split}")
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    return Split(cfg.dataset, cfg.split, images, labels, spec(cfg.dataset).class_names,
                 cfg.limit, str(where), cfg.val_rows, val_start)


def load_validation(cfg: DataConfig) -> Split | None:
    """The held-out rows: the last cfg.val_rows rows of the train split (None when 0)."""
    if not cfg.val_rows:
        return None
    images, labels, where = _read_split(cfg)
    start = len(labels) - cfg.val_rows
    return Split(cfg.dataset, "val", images[start:], labels[start:], spec(cfg.dataset).class_names,
                 None, str(where), cfg.val_rows, start)


def check_not_trained_on_validation(trained_on: dict | None, split: Split, what: str) -> None:
    """Refuse a model whose training rows include the rows `split` holds out for validation.

    Training rows are always the leading rows of the train split, so the first trained_on["n"]
    rows were seen; they overlap the validation rows when n exceeds split.val_start.
    """
    if split.val_start is None or not isinstance(trained_on, dict):
        return
    if trained_on.get("name") != split.name or trained_on.get("split") != "train":
        return
    seen = int(trained_on.get("n") or 0)
    if seen > split.val_start:
        raise ValidationLeakError(
            f"{what} was trained on the first {seen} rows of {split.name}/train, which include "
            f"the validation rows {split.val_start}..{split.val_start + split.val_rows - 1} held "
            f"out by --val-rows {split.val_rows}; train it with --val-rows {split.val_rows} too")


def ensure_dataset(name: str, data_dir: str | os.PathLike, *, download: bool = True) -> Path:
    """Make sure all four files of `name` are present; download them (md5-checked) if allowed."""
    ds = spec(name)
    missing = []
    for stems in FILES.values():
        for stem in stems:
            try:
                find_file(name, stem, data_dir)
            except DatasetNotFoundError:
                missing.append(stem)
    target = Path(data_dir) / name
    if not missing:
        return find_file(name, FILES["train"][0], data_dir).parent
    if not download:
        raise DatasetNotFoundError(f"dataset {name!r}: missing {missing} in "
                                   f"{[str(d) for d in search_dirs(name, data_dir)]}")
    target.mkdir(parents=True, exist_ok=True)
    for stem in missing:
        _download(ds, stem, target / f"{stem}.gz")
    return target


def _download(ds: DatasetSpec, stem: str, dest: Path) -> None:
    errors = []
    for base in ds.urls:
        url = f"{base}{stem}.gz"
        tmp = dest.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            errors.append(f"{url}: {e}")
            continue
        digest = hashlib.md5(tmp.read_bytes()).hexdigest()
        if digest != ds.md5[stem]:
            tmp.unlink()
            errors.append(f"{url}: md5 {digest}, expected {ds.md5[stem]}")
            continue
        tmp.replace(dest)  # only a verified file takes the final name
        return
    raise DatasetNotFoundError(f"could not download {stem}.gz of {ds.name!r}: {errors}; "
                               f"put the file in {dest.parent} by hand")
