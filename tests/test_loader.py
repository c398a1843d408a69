import numpy as np
import pytest
import torch

from softtargets.config import DataConfig
from softtargets.datasets.idx_files import load_split
from softtargets.errors import ConfigError, StoreError, StoreMismatchError
from softtargets.read.loader import DistillData, StreamingDistillData, StreamOptions, distill_data
from softtargets.format.store import LogitStore, StoreWriter


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
    from softtargets.format.sparse_store import SparseStore, SparseWriter, make_spec
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
    from softtargets.read.distill import SparseTargets
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


# --- streaming (StreamingDistillData) ---

def id_store(tmp_path, split, *, chunk_rows=7, seed=0):
    """A store whose rows are in shuffled id order and whose logit 0 is the row's sample id."""
    n = len(split)
    perm = np.random.default_rng(seed).permutation(n)
    logits = np.zeros((n, 10), np.float32)
    logits[:, 0] = perm
    return make_store(tmp_path / f"ids-{chunk_rows}.zarr", split, perm=perm, logits=logits,
                      chunk_rows=chunk_rows)


def streamed(data, *, epoch=0, seed=0, batch_size=5):
    return [b[0].tolist() for b in data.batches(batch_size=batch_size, epoch=epoch, seed=seed,
                                                with_ids=True)]


def test_stream_joins_every_row_once(tiny_data, tmp_path):
    split = load_split(tiny_data)
    data = StreamingDistillData(split, id_store(tmp_path, split),
                                options=StreamOptions(loader="stream", buffer_chunks=3))
    seen = []
    for ids, images, labels, teacher in data.batches(batch_size=10, epoch=0, seed=0,
                                                     with_ids=True):
        assert teacher.dtype == torch.float16 and teacher.shape == (len(ids), 10)
        assert torch.equal(teacher[:, 0].long(), ids)  # logits joined to their own sample id
        assert torch.equal(images, torch.from_numpy(split.images[ids.numpy()]))
        assert torch.equal(labels, torch.from_numpy(split.labels[ids.numpy()].astype(np.int64)))
        seen += ids.tolist()
    assert sorted(seen) == list(range(len(split))) and len(data) == len(split)


def test_stream_shuffle_is_deterministic_and_changes_per_epoch(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = id_store(tmp_path, split)
    data = StreamingDistillData(split, store, options=StreamOptions(buffer_chunks=2))
    again = StreamingDistillData(split, store, options=StreamOptions(buffer_chunks=2))
    assert streamed(data) == streamed(again)
    assert streamed(data) != streamed(data, epoch=1)
    assert streamed(data) != streamed(data, seed=1)
    assert sorted(sum(streamed(data, epoch=1), [])) == list(range(96))
    # rows move between chunks of a group, not only chunks between themselves
    first = streamed(data, batch_size=96)[0]
    assert sorted(first[:14]) != sorted(np.asarray(store.sample_id[:14]).tolist())


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_splits_across_ranks_and_workers_without_overlap_or_loss(tiny_data, tmp_path,
                                                                       workers):
    split = load_split(tiny_data)
    store = id_store(tmp_path, split)
    options = StreamOptions(workers=workers, buffer_chunks=2)
    per_rank = []
    for rank in range(3):
        data = StreamingDistillData(split, store, options=options, rank=rank, world_size=3)
        ids = sum(streamed(data, epoch=1), [])
        assert len(ids) == len(set(ids))
        assert sum(streamed(data, epoch=1), []) == ids  # deterministic with workers too
        assert data.num_batches(5, epoch=1) == len(streamed(data, epoch=1))
        per_rank.append(set(ids))
    assert set.union(*per_rank) == set(range(96)) and sum(map(len, per_rank)) == 96


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 3])
def test_stream_resumes_mid_epoch_with_the_exact_rest(tiny_data, tmp_path, workers):
    split = load_split(tiny_data)
    store = id_store(tmp_path, split)
    options = StreamOptions(workers=workers, buffer_chunks=2)
    full = streamed(StreamingDistillData(split, store, options=options), epoch=2, seed=4)
    for k in (1, 4, 7, len(full) - 1):
        first = StreamingDistillData(split, store, options=options)
        it = first.batches(batch_size=5, epoch=2, seed=4, with_ids=True)
        head = [next(it)[0].tolist() for _ in range(k)]
        state = first.state_dict()
        it.close()
        assert head == full[:k] and state["delivered"] == k
        second = StreamingDistillData(split, store, options=options)
        second.load_state_dict(state)
        assert streamed(second, epoch=2, seed=4) == full[k:]


def test_stream_workers_under_spawn_give_the_same_batches(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = id_store(tmp_path, split)
    fork = StreamingDistillData(split, store, options=StreamOptions(workers=2, context="fork"))
    spawn = StreamingDistillData(split, store, options=StreamOptions(workers=2, context="spawn"))
    assert streamed(spawn) == streamed(fork)


def test_stream_resume_refuses_another_layout(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = id_store(tmp_path, split)
    data = StreamingDistillData(split, store, options=StreamOptions(workers=0))
    list(data.batches(batch_size=5, epoch=0, seed=0))
    state = data.state_dict()
    other = StreamingDistillData(split, store, options=StreamOptions(workers=2))
    with pytest.raises(ConfigError, match="saved with workers=0, this loader has workers=2"):
        other.load_state_dict(state)


def test_stream_transfer_subset_and_checks(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = id_store(tmp_path, split)
    data = StreamingDistillData(split, store, rows=np.array([5, 1, 9, 60]))
    assert len(data) == 4 and sorted(sum(streamed(data), [])) == [1, 5, 9, 60]
    half = make_store(tmp_path / "half.zarr", split, perm=np.arange(48),
                      logits=np.zeros((48, 10), np.float32))
    with pytest.raises(StoreMismatchError, match=r"has no target for 48 of the 96 sample ids "
                       r"of dataset mnist \(first: \[48, 49"):
        StreamingDistillData(split, half, rows=np.arange(96))
    fewer = load_split(DataConfig(dataset="mnist", data_dir=tiny_data.data_dir, limit=50))
    with pytest.raises(StoreMismatchError, match=r"n differs"):
        StreamingDistillData(fewer, store)
    twice = np.arange(96)
    twice[7] = 3  # sample 3 stored twice, 7 never: misaligned targets must not train
    dup = make_store(tmp_path / "dup.zarr", split, perm=twice, logits=np.zeros((96, 10), np.float32))
    with pytest.raises(StoreError, match=r"sample id 3 has more than one row \(again in chunk "
                       r"0\); the store is damaged"):
        StreamingDistillData(split, dup)
    part = StreamingDistillData(split, half)  # a store of a subset: its own rows, counted per chunk
    assert len(part) == 48 and part.kept.tolist() == [32, 16]


def test_distill_data_streams_large_stores_automatically(tiny_data, tmp_path):
    split = load_split(tiny_data)
    store = id_store(tmp_path, split)
    assert isinstance(distill_data(split, store), DistillData)
    small_limit = StreamOptions(memory_limit_bytes=96 * 10 * 2 - 1)
    assert isinstance(distill_data(split, store, options=small_limit), StreamingDistillData)
    assert isinstance(distill_data(split, store, options=StreamOptions(loader="memory",
                                                                       memory_limit_bytes=0)),
                      DistillData)
    with pytest.raises(ConfigError, match="loader must be 'auto', 'memory' or 'stream'"):
        StreamOptions(loader="disk")
