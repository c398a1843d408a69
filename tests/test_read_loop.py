"""read/loop.py: the student loop's batches (in memory or streamed, hard labels, transfer
subsets), joined through sample_id, in an order of (seed, epoch) only."""

import numpy as np
import pytest
import torch

from softtargets.datasets.idx import IDXDataset
from softtargets.errors import ConfigError, DatasetError, StoreMismatchError
from softtargets.format.store import StoreWriter
from softtargets.read import DistillDataset, SoftTargets
from softtargets.read.loop import Batches, StreamOptions

MEMORY, STREAM = StreamOptions(loader="memory"), StreamOptions(loader="stream", buffer_chunks=2)


def id_store(url, data, *, n=None, chunk_rows=7):
    """A store of the first `n` sample ids in shuffled row order; logit 0 of a row is its
    sample id, so a misaligned join would show."""
    n = len(data) if n is None else n
    perm = np.random.default_rng(0).permutation(n)
    logits = np.zeros((n, 10), np.float32)
    logits[:, 0] = perm
    w = StoreWriter.create(str(url), n=n, class_names=data.class_names,
                           dataset=data.identity(), teacher={}, config={}, chunk_rows=chunk_rows)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=perm[sl], logits=logits[sl])
    w.finalize()
    return str(url)


def epoch_rows(batches, epoch):
    """(sample id by logit 0, label) of every row of an epoch, in order."""
    out = []
    for x, y, t in batches.epoch(epoch):
        assert x.dtype == torch.uint8 and x.shape[1:] == (28, 28)
        out += list(zip(t.logits[:, 0].int().tolist(), y.tolist()))
    return out


@pytest.mark.parametrize("options", [MEMORY, STREAM], ids=["memory", "stream"])
def test_every_row_once_joined_through_sample_id(tiny_data, tmp_path, options):
    data = IDXDataset("mnist", data_dir=tiny_data.data_dir)
    url = id_store(tmp_path / "s.zarr", data)
    batches = Batches(data, url, batch_size=10, seed=3, temperature=2.0, options=options)
    assert batches.kind == options.loader and len(batches) == 96 and batches.num_batches() >= 10
    rows = epoch_rows(batches, 0)
    labels = data.take(np.arange(96))[1]
    assert sorted(i for i, _ in rows) == list(range(96))
    assert all(y == labels[i] for i, y in rows)  # each target with its own row's label
    again = Batches(data, url, batch_size=10, seed=3, temperature=2.0, options=options)
    assert epoch_rows(again, 0) == rows  # the order is a function of (seed, epoch) only
    assert epoch_rows(batches, 1) != rows


def test_transfer_subset_and_hard_labels(tiny_data, tmp_path):
    data = IDXDataset("mnist", data_dir=tiny_data.data_dir)
    url = id_store(tmp_path / "s.zarr", data)
    subset = np.array([60, 5, 1, 9])
    for options in (MEMORY, STREAM):
        part = Batches(data, url, batch_size=3, seed=0, sample_ids=subset, options=options)
        assert sorted(i for i, _ in epoch_rows(part, 0)) == [1, 5, 9, 60]
    hard = Batches(data, None, batch_size=4, seed=0, sample_ids=subset)
    (x, y, t), = list(hard.epoch(0))
    assert t is None and hard.kind == "memory"
    order = [int(np.flatnonzero((data.take(subset)[0] == row).all(axis=(1, 2)))[0])
             for row in x.numpy()]
    np.testing.assert_array_equal(y.numpy(), data.take(subset[order])[1])


def test_a_store_of_part_of_the_data_needs_the_transfer_set_inside_it(tiny_data, tmp_path):
    data = IDXDataset("mnist", data_dir=tiny_data.data_dir)
    half = id_store(tmp_path / "h.zarr", data, n=48)
    for options in (MEMORY, STREAM):
        with pytest.raises(StoreMismatchError, match="has no target for 48 of the 96 sample ids"):
            Batches(data, half, batch_size=8, seed=0, options=options)
        part = Batches(data, half, batch_size=8, seed=0, sample_ids=np.arange(48),
                       options=options)
        assert sorted(i for i, _ in epoch_rows(part, 0)) == list(range(48))


def test_loader_auto_streams_above_the_memory_limit(tiny_data, tmp_path):
    data = IDXDataset("mnist", data_dir=tiny_data.data_dir)
    url = id_store(tmp_path / "s.zarr", data)
    assert not StreamOptions().streams(url)
    assert StreamOptions(memory_limit_bytes=96 * 10 * 2 - 1).streams(url)
    assert not StreamOptions(loader="memory", memory_limit_bytes=1).streams(url)
    assert StreamOptions(loader="stream").streams(url)
    with pytest.raises(ConfigError, match="loader must be 'auto', 'memory' or 'stream', got "
                                          "'disk'"):
        StreamOptions(loader="disk")


def test_distill_dataset_batch_equals_the_collated_items(tiny_data, tmp_path):
    data = IDXDataset("mnist", data_dir=tiny_data.data_dir)
    url = id_store(tmp_path / "s.zarr", data)
    ds = DistillDataset(data, SoftTargets(url, temperature=3.0), sample_ids=[40, 2, 17, 90])
    assert len(ds) == 4 and ds.sample_ids.tolist() == [2, 17, 40, 90]
    x, y, t = ds.batch([3, 0, 2])
    cx, cy, ct = DistillDataset.collate([ds[3], ds[0], ds[2]])
    assert torch.equal(x, cx) and torch.equal(y, cy) and torch.equal(t.logits, ct.logits)
    assert t.logits[:, 0].tolist() == [90, 2, 40] and t.temperature == 3.0
    with pytest.raises(DatasetError, match=r"sample_ids \[500\] are not sample ids of dataset"):
        DistillDataset(data, SoftTargets(url), sample_ids=[1, 500])
