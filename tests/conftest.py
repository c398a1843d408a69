"""Shared fixtures: tiny IDX datasets written under tmp_path, tiny teachers and stores."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softtargets.cli import cli
from softtargets.config import DataConfig
from softtargets.datasets.idx_files import FILES, find_file

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)


def make_dataset(root: Path, *, name: str = "mnist", n_train: int = 96, n_test: int = 48,
                 seed: int = 0) -> Path:
    """A learnable synthetic IDX dataset: class k lights up row band k of a 28x28 image."""
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 * y + 4: 2 * y + 7, 4:24] = 220
        img_stem, lbl_stem = FILES[split]
        write_idx(d / img_stem, images)
        write_idx(d / lbl_stem, labels)
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> DataConfig:
    """DataConfig of a synthetic 'mnist' train split with 96 rows under tmp_path."""
    make_dataset(tmp_path / "data")
    return DataConfig(dataset="mnist", split="train", data_dir=str(tmp_path / "data"))


def fashion_available() -> bool:
    try:
        find_file("fashion-mnist", FILES["train"][0], "data")
        return True
    except Exception:
        return False


@pytest.fixture
def fashion() -> DataConfig:
    """Real Fashion-MNIST; fails (does not skip) when absent, since CI installs it."""
    if not fashion_available():
        pytest.fail("Fashion-MNIST not found: `apt-get install dataset-fashion-mnist` "
                    "(or `make data`)")
    return DataConfig(dataset="fashion-mnist", split="train")


def run_cli(*args, ok=True):
    """Invoke the CLI through CliRunner; with ok=True, fail with its output on a non-zero exit."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if ok and result.exit_code != 0:
        raise AssertionError(f"{args} failed ({result.exit_code}):\n{result.output}\n"
                             f"{result.exception!r}")
    return result


DELETE = object()  # edit_attrs: remove the key


def edit_json(path: Path, edit) -> None:
    """Rewrite the JSON file `path` (a zarr.json) with `edit(doc)` applied in place."""
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def edit_attrs(store: Path, **changes) -> None:
    """Set (or, with DELETE, remove) keys of a store's attributes["softtargets"] in its zarr.json,
    as a hand edit would: no reader or writer involved."""
    def apply(doc):
        attrs = doc["attributes"]["softtargets"]
        for key, value in changes.items():
            if value is DELETE:
                attrs.pop(key)
            else:
                attrs[key] = value
    edit_json(Path(store) / "zarr.json", apply)


def run_python_blocks(text: str, where: Path, *, count: int, only=None) -> dict:
    """Run the ```python blocks of a document's `text` in order in one namespace, as a user
    pasting them would (in the current directory), after checking there are `count` of them
    (`only`: keep the blocks it accepts); the namespace after the last block."""
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    blocks = [b for b in blocks if only is None or only(b)]
    assert len(blocks) == count
    scope: dict = {}
    for block in blocks:
        exec(compile(block, str(where), "exec"), scope)
    return scope
