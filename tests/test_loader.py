import numpy as np
import pytest
import torch

from softtargets.config import DataConfig
from softtargets.data import load_split
from softtargets.errors import StoreMismatchError
from softtargets.loader import DistillData
from softtargets.store import LogitStore, StoreWriter


def make_store(url, split, *, perm, logits, chunk_rows=32, class_names=None):
    w = StoreWriter.create(str(url), n=len(perm), class_names=class_names or split.class_names,
                           dataset=split.identity(), teacher={}, config={}, chunk_rows=chunk_rows)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=perm[sl], logits=logits[sl])
    w.finalize()
    return LogitStore.open(str(url))


def test_join_through_sample_id_in_any_row_order(tiny_data, tmp_path):
    split = load_split(tiny_data)
    n = len(split)
    perm = np.random.default_rng(0).permutation(n)
    # teacher logit of row r encodes its sample id, so misalignment would show
    logits = np.zeros((n, 10), np.float32)
    logits[np.arange(n), split.labels[perm]] = perm
    data = DistillData(split, make_store(tmp_path / "s.zarr", split, perm=perm, logits=logits))
    seen = []
    for images, labels, teacher in data.batches(batch_size=10, epoch=0, seed=0):
        assert teacher.dtype == torch.float32 and teacher.shape == (len(labels), 10)
        ids = teacher.max(dim=1).values.long()
        assert torch.equal(labels, torch.from_numpy(split.labels[ids.numpy()].astype(np.int64)))
        assert torch.equal(images, torch.from_numpy(split.images[ids.numpy()]))
        seen += ids.tolist()
    assert sorted(seen) == list(range(n))


def test_shuffle_depends_on_seed_and_epoch_only(tiny_data):
    data = DistillData(load_split(tiny_data))
    def order(epoch, seed):
        return torch.cat([y for _, y, _ in data.batches(batch_size=7, epoch=epoch, seed=seed)])
    assert torch.equal(order(0, 1), order(0, 1))
    assert not torch.equal(order(0, 1), order(1, 1))
    assert not torch.equal(order(0, 1), order(0, 2))


def test_store_of_other_data_is_refused(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = make_store(tmp_path / "s.zarr", split, perm=np.arange(96),
                       logits=np.zeros((96, 10), np.float32))
    fewer = load_split(DataConfig(dataset="mnist", data_dir=tiny_data.data_dir, limit=50))
    with pytest.raises(StoreMismatchError, match=r"\(n=96, .*\(n=50, .*: n differs"):
        DistillData(fewer, store)
    test = load_split(DataConfig(dataset="mnist", split="test", data_dir=tiny_data.data_dir))
    with pytest.raises(StoreMismatchError, match="computed on mnist/train.*used with mnist/test"):
        DistillData(test, store)


def test_other_class_names_refused(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = make_store(tmp_path / "s.zarr", split, perm=np.arange(96),
                       logits=np.zeros((96, 10), np.float32), class_names=tuple("abcdefghij"))
    with pytest.raises(StoreMismatchError, match="has classes"):
        DistillData(split, store)


def test_transfer_subset(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = make_store(tmp_path / "s.zarr", split, perm=np.arange(96),
                       logits=np.zeros((96, 10), np.float32))
    data = DistillData(split, store, rows=np.array([5, 1, 9]))
    assert len(data) == 3 and data.teacher.shape == (3, 10)


def make_sparse_store(url, split, *, perm, logits, kind="topk", k=3, temperatures=(1.0, 4.0)):
    from softtargets.sparse_store import SparseStore, SparseWriter, make_spec
    spec = make_spec(kind=kind, k=k, num_classes=10, temperatures=temperatures)
    w = SparseWriter.create(str(url), spec=spec, n=len(perm), class_names=split.class_names,
                            dataset=split.identity(), teacher={}, config={}, chunk_rows=32)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=perm[sl], logits=logits[sl])
    w.finalize()
    return SparseStore.open(str(url))


@pytest.mark.parametrize("kind", ["topk", "sampled"])
def test_sparse_store_joins_through_sample_id(tiny_data, tmp_path, kind):
    from softtargets.distill import SparseTargets
    split = load_split(tiny_data)
    n = len(split)
    perm = np.random.default_rng(0).permutation(n)[:80]  # a subset, in shuffled order
    logits = np.zeros((80, 10), np.float32)
    logits[np.arange(80), split.labels[perm]] = 8.0  # the teacher's top class is the label
    store = make_sparse_store(tmp_path / "s.zarr", split, perm=perm, logits=logits, kind=kind)
    data = DistillData(split, store, temperature=4.0)
    assert len(data) == 80 and sorted(data.index.tolist()) == sorted(perm.tolist())
    for _, labels, teacher in data.batches(batch_size=16, epoch=0, seed=0):
        assert isinstance(teacher, SparseTargets) and teacher.kind == kind
        weight = teacher.log_probs.exp() if kind == "topk" else teacher.weights
        top = teacher.ids.gather(1, weight.argmax(1, keepdim=True))[:, 0]
        assert torch.equal(top, labels)
    with pytest.raises(StoreMismatchError, match=r"no targets for sample ids \["):
        DistillData(split, store, rows=np.setdiff1d(np.arange(n), perm)[:3], temperature=4.0)
