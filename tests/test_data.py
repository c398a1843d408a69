import dataclasses
import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from softtargets.datasets import idx_files as data
from softtargets.config import DataConfig
from softtargets.errors import (ConfigError, DatasetError, DatasetNotFoundError,
                                ValidationLeakError)

from conftest import run_cli, write_idx


def test_fingerprint_golden_value():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([1, 7], dtype=np.uint8)
    # Golden: the definition in docs/FORMAT.md. Changing it breaks every existing store's provenance.
    expected = hashlib.sha256(b"softtargets.fingerprint/v1\n2 3 4\n" + images.tobytes()
                              + labels.tobytes()).hexdigest()
    assert data.fingerprint(images, labels) == "sha256:" + expected
    assert data.fingerprint(images, labels) == (
        "sha256:3e783236312cdfe718fbe0c927414a1a78579fc640143714555179d25d09d730")


def test_fingerprint_sensitive_to_order_inputs_and_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 4, 4)).astype(np.uint8)
    labels = rng.integers(0, 10, 5).astype(np.uint8)
    base = data.fingerprint(images, labels)
    assert base == data.fingerprint(images.copy(), labels.copy())
    assert base != data.fingerprint(images[::-1], labels[::-1])
    flipped = labels.copy()
    flipped[0] = (flipped[0] + 1) % 10
    assert base != data.fingerprint(images, flipped)
    pixel = images.copy()
    pixel[2, 1, 1] ^= 1
    assert base != data.fingerprint(pixel, labels)


def test_load_split_reads_gz_and_plain_and_limit(tiny_data, tmp_path):
    split = data.load_split(tiny_data)
    assert split.images.shape == (96, 28, 28) and split.labels.shape == (96,)
    assert split.class_names == tuple(str(i) for i in range(10))
    head = data.load_split(DataConfig(dataset="mnist", data_dir=tiny_data.data_dir, limit=10))
    assert len(head) == 10 and head.identity()["limit"] == 10
    assert head.fingerprint == data.fingerprint(split.images[:10], split.labels[:10])
    # the same bytes uncompressed give the same fingerprint
    plain = tmp_path / "plain" / "mnist"
    plain.mkdir(parents=True)
    for f in Path(tiny_data.data_dir, "mnist").iterdir():
        (plain / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    again = data.load_split(DataConfig(dataset="mnist", data_dir=str(plain.parent)))
    assert again.fingerprint == split.fingerprint


def test_inputs_scaled_to_unit_interval(tiny_data):
    x = data.load_split(tiny_data).inputs(slice(0, 4))
    assert x.shape == (4, 784) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_missing_dataset_names_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"kmnist.*looked in.*softtargets data --dataset kmnist"):
        data.load_split(DataConfig(dataset="kmnist", data_dir=str(tmp_path)))


def test_unknown_dataset(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"unknown dataset 'cifar'.*fashion-mnist"):
        data.load_split(DataConfig(dataset="cifar", data_dir=str(tmp_path)))


def test_truncated_idx_file(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), compress=False)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), compress=False)
    raw = (d / "train-images-idx3-ubyte").read_bytes()
    (d / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        data.load_split(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


def test_limit_beyond_split(tiny_data):
    with pytest.raises(DatasetError, match="limit 1000 exceeds the 96 rows"):
        data.load_split(DataConfig(dataset="mnist", data_dir=tiny_data.data_dir, limit=1000))


def test_bad_config_values():
    with pytest.raises(ConfigError, match="split must be 'train' or 'test', got 'val'"):
        DataConfig(split="val")
    with pytest.raises(ConfigError, match="limit must be a positive"):
        DataConfig(limit=0)


def test_val_rows_hold_out_the_last_rows_of_the_train_split(tiny_data):
    full = data.load_split(tiny_data)
    cfg = DataConfig(dataset="mnist", data_dir=tiny_data.data_dir, val_rows=16)
    train, val = data.load_split(cfg), data.load_validation(cfg)
    assert len(train) == 80 and len(val) == 16 and (train.val_start, val.val_start) == (80, 80)
    np.testing.assert_array_equal(train.images, full.images[:80])
    np.testing.assert_array_equal(val.labels, full.labels[80:])
    assert train.identity() == {"name": "mnist", "split": "train", "n": 80, "limit": None,
                                "val_rows": 16,
                                "fingerprint": data.fingerprint(full.images[:80],
                                                                full.labels[:80])}
    assert data.load_validation(tiny_data) is None and full.identity()["val_rows"] == 0
    # --limit keeps the first rows of those left for training; the validation rows stay fixed
    head = data.load_split(dataclasses.replace(cfg, limit=10))
    assert len(head) == 10 and head.fingerprint == data.fingerprint(full.images[:10],
                                                                    full.labels[:10])
    with pytest.raises(DatasetError, match="limit 90 exceeds the 80 rows left by --val-rows 16 "
                                           "of mnist/train"):
        data.load_split(dataclasses.replace(cfg, limit=90))
    with pytest.raises(DatasetError, match="--val-rows 96 holds out all 96 rows of mnist/train"):
        data.load_split(dataclasses.replace(cfg, val_rows=96))


def test_val_rows_config_errors():
    with pytest.raises(ConfigError, match="--val-rows must be >= 0 .* got -1"):
        DataConfig(val_rows=-1)
    with pytest.raises(ConfigError, match="--val-rows 5 holds out rows of the train split; drop "
                                          "it for the 'test' split"):
        DataConfig(split="test", val_rows=5)
    assert DataConfig(val_rows=5, limit=3).for_test() == DataConfig(split="test")


def test_a_model_trained_on_the_validation_rows_is_refused(tiny_data):
    cfg = DataConfig(dataset="mnist", data_dir=tiny_data.data_dir, val_rows=16)
    split = data.load_split(cfg)
    held_out = {"name": "mnist", "split": "train", "n": 80, "val_rows": 16}
    data.check_not_trained_on_validation(held_out, split, "teacher 't.pt'")
    data.check_not_trained_on_validation({**held_out, "n": 96, "val_rows": 0},
                                         data.load_split(tiny_data), "teacher 't.pt'")  # no val
    data.check_not_trained_on_validation({**held_out, "split": "test", "n": 96}, split, "x")
    with pytest.raises(ValidationLeakError, match=r"teacher 't.pt' was trained on the first 96 "
                       r"rows of mnist/train, which include the validation rows 80..95 held out "
                       r"by --val-rows 16; train it with --val-rows 16 too"):
        data.check_not_trained_on_validation({**held_out, "n": 96, "val_rows": 0}, split,
                                             "teacher 't.pt'")


def test_fake_fashion_mnist_is_refused(tmp_path):
    from conftest import make_dataset
    make_dataset(tmp_path, name="fashion-mnist", n_train=60000 // 1000, n_test=10)
    # A full split that is not the canonical data is caught by its known fingerprint.
    with pytest.raises(DatasetError, match="does not match the canonical data"):
        data.load_split(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path)))


def test_real_fashion_mnist_fingerprints(fashion):
    train = data.load_split(fashion)
    assert len(train) == 60000
    assert train.fingerprint == data.KNOWN_FINGERPRINTS[("fashion-mnist", "train")]


def test_a_named_data_dir_is_used_alone(tmp_path):
    assert data.search_dirs("fashion-mnist", tmp_path) == [tmp_path / "fashion-mnist"]
    assert data.search_dirs("fashion-mnist", "data") == [
        Path("data/fashion-mnist"), Path("/usr/share/datasets/fashion-mnist")]
    message = (f"dataset 'fashion-mnist': file train-images-idx3-ubyte (or "
               f"train-images-idx3-ubyte.gz) not found; looked in '{tmp_path}/fashion-mnist' only, "
               f"the dataset's folder in --data-dir {tmp_path} (the system-wide copy is used only "
               "with the default --data-dir data); put the files there or run `softtargets data "
               f"--dataset fashion-mnist --data-dir {tmp_path}`")
    with pytest.raises(DatasetNotFoundError, match=re.escape(message)):
        data.load_split(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path)))
    res = run_cli("train-teacher", "--data-dir", tmp_path, "--out", tmp_path / "t.pt", ok=False)
    assert res.exit_code == 1 and res.output == f"Error: DatasetNotFoundError: {message}\n"


def test_the_default_data_dir_falls_back_to_the_system_copy(fashion, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    split = data.load_split(DataConfig(dataset="fashion-mnist", limit=10))
    assert split.source == "/usr/share/datasets/fashion-mnist" and len(split) == 10
