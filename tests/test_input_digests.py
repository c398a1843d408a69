"""Input digests (digests/input): each row chunk bound to the dataset rows it was computed
from, recorded by the writer, checked by InputCheck; the store stays a store for every tool."""

import shutil

import numpy as np
import pytest
import zarr
from conftest import run_cli
from torch.utils.data import TensorDataset

from softtargets.datasets import unit_input_digest, wrap
from softtargets.format.digests import InputCheck, input_rows
from softtargets.errors import StoreError, StoreMismatchError
from softtargets.format.store import read_meta
from softtargets.write import LogitWriter


def dataset(seed=0, n=20):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n)


def written(tmp_path, x, y, name="s.zarr"):
    data = wrap(TensorDataset(*_tensors(x, y)), num_classes=3, name="mine")
    z = np.random.default_rng(9).normal(size=(len(y), 3)).astype(np.float32)
    with LogitWriter(tmp_path / name, dataset=data, chunk_rows=6) as writer:
        writer.append(np.arange(len(y)), z)
    return tmp_path / name, data


def _tensors(x, y):
    import torch
    return torch.from_numpy(x), torch.from_numpy(y)


def check_of(store):
    meta, group = read_meta(str(store))
    return InputCheck(group, meta, str(store))


def test_the_writer_records_each_chunks_input_digest(tmp_path):
    x, y = dataset()
    store, data = written(tmp_path, x, y)  # 20 rows, chunks of 6: rows 0..5, .., 18..19
    g = zarr.open_group(str(store), mode="r")
    assert g.attrs["softtargets"]["digests"]["inputs"] is True
    stored = g["digests/input"][:]
    assert stored.shape == (4, 16) and g["digests/input"].chunks == (1, 16)
    for chunk, (a, b) in enumerate(((0, 6), (6, 12), (12, 18), (18, 20))):
        assert stored[chunk].tobytes() == unit_input_digest(data, slice(a, b))
    assert input_rows(3, chunk_rows=6, n=20) == slice(18, 20)
    assert input_rows(1, chunk_rows=8, n=24, per_sample=4) == slice(2, 4)  # rows (sample, pos)
    check_of(store).check_all(data)


@pytest.mark.parametrize("change, chunk, rows", [("input", 2, "12..17"), ("label", 3, "18..19")])
def test_one_changed_row_is_refused_naming_its_chunk(tmp_path, change, chunk, rows):
    x, y = dataset()
    store, _ = written(tmp_path, x, y)
    if change == "input":
        x = x.copy()
        x[13, 1] = np.nextafter(x[13, 1], np.float32(np.inf))  # one ulp of one value
    else:
        y = y.copy()
        y[19] = (y[19] + 1) % 3
    other = wrap(TensorDataset(*_tensors(x, y)), num_classes=3, name="mine")
    check = check_of(store)
    for ok in set(range(4)) - {chunk}:
        check.check(ok, other)
    with pytest.raises(StoreMismatchError, match=rf"^store '.*s.zarr': chunk {chunk} \(dataset "
                       rf"rows {rows}\) does not match the student's data: the student's data "
                       r"differs from the rows the teacher saw \(inputs, labels or sample ids\)"):
        check.check_all(other)


def test_missing_or_unwritten_input_digests_are_refused(tmp_path):
    x, y = dataset()
    store, data = written(tmp_path, x, y)
    g = zarr.open_group(str(store), mode="r+")
    g["digests/input"][1] = np.zeros(16, np.uint8)
    with pytest.raises(StoreError, match=r"chunk 1 \(dataset rows 6\.\.11\) has no input digest"):
        check_of(store).check(1, data)
    with pytest.raises(StoreMismatchError, match=r"chunk 3 \(dataset rows 18\.\.19\) lies beyond "
                       "the 10 rows of the student's data"):
        check_of(store).check(3, wrap(TensorDataset(*_tensors(x[:10], y[:10])), num_classes=3))
    shutil.rmtree(store / "digests" / "input")
    with pytest.raises(StoreError, match="declares input digests but 'digests/input' is missing"):
        check_of(store).check(0, data)


def test_verify_inspect_and_overwrite_know_the_input_digests(tmp_path):
    x, y = dataset()
    store, data = written(tmp_path, x, y)
    assert ": OK" in run_cli("verify", store).output
    assert "digests:    bound" in run_cli("inspect", store).output
    with pytest.raises(StoreError, match="already exists; pass --overwrite"):
        written(tmp_path, x, y)
    with LogitWriter(store, dataset=data, chunk_rows=6, overwrite=True) as writer:
        writer.append(np.arange(20), np.zeros((20, 3), np.float32))
    assert writer.meta.complete  # the old store, input digests included, was deleted
