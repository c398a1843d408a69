"""softtargets.datasets: the protocol, the base class, in-memory and wrapped datasets, IDX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softtargets.datasets import idx_files as data
from softtargets.datasets import (BaseDataset, IDXDataset, MapDataset, check_labels,
                                  from_tensors, wrap)
from softtargets.errors import DatasetError, LabelError


class UserDataset:
    """A user's map-style dataset: torch tensors and int labels, nothing else."""

    def __init__(self, x: torch.Tensor, y: list[int]) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def rgb(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 3, 32, 32), dtype=np.float32), rng.integers(0, 1000, n)


def test_from_tensors_rgb_int64_labels_1000_classes():
    x, y = rgb(12)
    ds = from_tensors(torch.from_numpy(x), torch.from_numpy(y), num_classes=1000,
                      dataset_id="my-rgb-v1")
    assert isinstance(ds, BaseDataset) and isinstance(ds, MapDataset)
    assert len(ds) == 12 and ds.num_classes == 1000 and ds.class_names[999] == "999"
    np.testing.assert_array_equal(ds.sample_ids, np.arange(12))
    assert ds.sample_ids.dtype == np.int64
    inputs, labels = ds.read(slice(3, 7))
    assert inputs.dtype == np.float32 and inputs.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(inputs, x[3:7])
    np.testing.assert_array_equal(labels, y[3:7])
    assert labels.dtype == np.int64
    item_x, item_y = ds[-1]
    np.testing.assert_array_equal(item_x, x[11])
    assert item_y == int(y[11]) and type(item_y) is int
    ident = ds.identity()
    assert ident == {"name": "tensors", "split": "train", "n": 12,
                     "fingerprint": ds.fingerprint, "dataset_id": "my-rgb-v1"}
    assert ident["fingerprint"].startswith("xxh3-128:") and len(ident["fingerprint"]) == 41
    with pytest.raises(IndexError, match="row 12 out of range for 12 rows"):
        ds[12]


def test_num_classes_defaults_to_class_names_then_largest_label():
    y = np.array([0, 3, 1], np.int16)
    x = np.zeros((3, 2), np.uint8)
    assert from_tensors(x, y).num_classes == 4
    named = from_tensors(x, y, class_names=["a", "b", "c", "d", "e"])
    assert named.num_classes == 5 and named.class_names == ("a", "b", "c", "d", "e")
    with pytest.raises(DatasetError, match="2 class_names for num_classes=5"):
        from_tensors(x, y, num_classes=5, class_names=["a", "b"])


@pytest.mark.parametrize("num_classes,dtype", [(1000, np.int64), (1000, np.uint16),
                                               (50_000, np.int32), (50_000, np.uint32)])
def test_labels_checked_against_the_class_count(num_classes, dtype):
    y = np.arange(40, dtype=dtype) * (num_classes // 40)
    y[-1] = num_classes - 1  # the largest valid label
    ds = from_tensors(np.zeros((40, 4), np.float32), y, num_classes=num_classes)
    assert ds.labels(slice(None))[-1] == num_classes - 1
    y[17] = num_classes
    with pytest.raises(LabelError, match=rf"^tensors: row 17 has label {num_classes}, outside "
                                         rf"the {num_classes} classes \[0, {num_classes}\); fix "
                                         "the label or pass the right num_classes$"):
        from_tensors(np.zeros((40, 4), np.float32), y, num_classes=num_classes)


def test_check_labels_names_negative_and_per_position_labels_and_rejects_floats():
    with pytest.raises(LabelError, match="row 12 has label -1, outside the 10 classes"):
        check_labels(np.array([3, -1]), 10, first_row=11)
    with pytest.raises(LabelError, match="row 1 position 2 has label 7, outside the 5 classes"):
        check_labels(np.array([[0, 1, 2], [3, 4, 7]], np.uint8), 5)
    with pytest.raises(LabelError, match="labels must be integer class indices, got dtype "
                                         "float32"):
        from_tensors(np.zeros((2, 1)), np.array([0.0, 1.0], np.float32))
    with pytest.raises(DatasetError, match=r"inputs of shape \(3, 1\) and labels of shape "
                                           r"\(2,\) do not have one row per sample"):
        from_tensors(np.zeros((3, 1)), np.array([0, 1]))


def test_user_sample_ids_are_checked():
    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])
    ds = from_tensors(x, y, sample_ids=np.array([10, 30, 20, 40], np.uint32))
    np.testing.assert_array_equal(ds.ids(slice(1, 3)), [30, 20])
    assert ds.sample_ids.dtype == np.int64
    with pytest.raises(DatasetError, match="sample id 30 appears more than once \\(again at "
                                           "row 2\\)"):
        from_tensors(x, y, sample_ids=[10, 30, 30, 40])
    with pytest.raises(DatasetError, match="sample id -5 at row 3 is negative"):
        from_tensors(x, y, sample_ids=[10, 30, 20, -5])
    with pytest.raises(DatasetError, match=r"sample_ids must be 4 integers \(one per row\), "
                                           r"got dtype int64 and shape \(3,\)"):
        from_tensors(x, y, sample_ids=[1, 2, 3])


def test_rows_must_be_a_contiguous_slice():
    ds = from_tensors(np.zeros((5, 2)), np.zeros(5, np.int64))
    with pytest.raises(DatasetError, match="rows must be a contiguous slice \\(step 1\\), got "
                                           "step 2"):
        ds.inputs(slice(0, 4, 2))
    with pytest.raises(DatasetError, match="rows must be a slice such as slice\\(0, 256\\), got "
                                           "list"):
        ds.labels([0, 1])
    assert ds.inputs(slice(-2, None)).shape == (2, 2) and ds.inputs(slice(4, 2)).shape == (0, 2)


def test_wrap_reads_a_user_dataset_in_one_getitem_pass():
    x, y = rgb(9, seed=1)
    user = UserDataset(torch.from_numpy(x), [int(v) for v in y])
    ds = wrap(user, num_classes=1000, name="mine")
    assert len(ds) == 9 and ds.name == "mine" and ds.identity() == {"name": "mine",
                                                                    "split": "train", "n": 9}
    inputs, labels = ds.read(slice(2, 8))
    np.testing.assert_array_equal(inputs, x[2:8])
    np.testing.assert_array_equal(labels, y[2:8])
    np.testing.assert_array_equal(ds.inputs(slice(0, 1))[0], ds[0][0])


def test_wrap_checks_labels_lazily_naming_the_row():
    user = UserDataset(torch.zeros(6, 2), [1, 2, 3, 12, 4, 5])
    ds = wrap(user, num_classes=10)  # labels are not read ahead
    assert ds.labels(slice(0, 3)).tolist() == [1, 2, 3]
    with pytest.raises(LabelError, match=r"^UserDataset: row 3 has label 12, outside the 10 "
                                         r"classes \[0, 10\)"):
        ds.read(slice(2, 6))
    with pytest.raises(DatasetError, match="wrap\\(\\) needs num_classes"):
        wrap(user, num_classes=None)
    with pytest.raises(DatasetError, match="a dataset needs __len__ and __getitem__ returning "
                                           "\\(input, label\\); got int"):
        wrap(5, num_classes=3)


def test_wrap_refuses_rows_of_different_shapes():
    user = UserDataset([torch.zeros(3, 4), torch.zeros(3, 5)], [0, 1])
    with pytest.raises(DatasetError, match=r"the input of row 1 has shape \(3, 5\) and dtype "
                                           r"float32, row 0's \(3, 4\) float32"):
        wrap(user, num_classes=2).read(slice(None))


def test_bfloat16_tensors_read_as_float32():
    x = torch.tensor([[0.5, 1.25]], dtype=torch.bfloat16)
    ds = from_tensors(x, torch.tensor([0]))
    assert ds.inputs(slice(None)).dtype == np.float32
    assert ds.inputs(slice(None)).tolist() == [[0.5, 1.25]]


def test_dataset_id_must_be_a_string():
    with pytest.raises(DatasetError, match="dataset_id must be a non-empty string, got 7"):
        from_tensors(np.zeros((1, 1)), np.zeros(1, np.int64), dataset_id=7)


def test_idx_dataset_keeps_the_split_identity(tiny_data):
    split = data.load_split(tiny_data)
    ds = IDXDataset("mnist", data_dir=tiny_data.data_dir)
    assert ds.identity() == split.identity()
    assert ds.identity()["fingerprint"] == split.fingerprint
    assert len(ds) == 96 and ds.num_classes == 10 and ds.class_names == split.class_names
    inputs, labels = ds.read(slice(90, None))
    assert inputs.dtype == np.uint8 and inputs.shape == (6, 28, 28)
    np.testing.assert_array_equal(inputs, split.images[90:])
    assert labels.dtype == np.int64 and labels.tolist() == split.labels[90:].tolist()
    head = IDXDataset.from_split(data.load_split(tiny_data.__class__(
        dataset="mnist", data_dir=tiny_data.data_dir, limit=10)), dataset_id="mnist-head")
    assert head.identity() == {**split.identity(), "n": 10, "limit": 10,
                               "fingerprint": head.data.fingerprint, "dataset_id": "mnist-head"}
