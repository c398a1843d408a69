import numpy as np
import pytest
import zarr

from softtargets.errors import StoreError
from softtargets.format.store import LogitStore, StoreWriter
from softtargets.read.order import ChunkReader, StreamPlan, resume_point, worker_batches


def write_store(url, *, n=50, classes=4, chunk_rows=8, compressor="zstd", seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n)
    logits = rng.standard_normal((n, classes)).astype(np.float32)
    w = StoreWriter.create(str(url), n=n, class_names=[str(c) for c in range(classes)],
                           dataset={"n": n}, teacher={}, config={}, chunk_rows=chunk_rows,
                           compressor=compressor)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=ids[sl], logits=logits[sl])
    w.finalize()
    return ids, logits.astype(np.float16)


def round_robin(counts):
    """The DataLoader's in-order sequence of (worker, batch index)."""
    out = []
    for r in range(max(counts)):
        out += [(w, r) for w, c in enumerate(counts) if c > r]
    return out


@pytest.mark.parametrize("counts", [[3, 1, 2], [2, 2], [1], [0, 2, 5, 1]])
def test_resume_point_rotates_workers_to_give_the_exact_rest(counts):
    full = round_robin(counts)
    for delivered in range(len(full) + 1):
        rotate, skip = resume_point(counts, delivered)
        remaining = [c - s for c, s in zip(counts, skip)]
        physical = [remaining[(p + rotate) % len(counts)] for p in range(len(counts))]
        rest = [((p + rotate) % len(counts), skip[(p + rotate) % len(counts)] + r)
                for p, r in round_robin(physical)] if max(physical, default=0) else []
        assert rest == full[delivered:]


def test_resume_point_refuses_positions_outside_the_epoch():
    with pytest.raises(StoreError, match="outside the epoch's 3 batches"):
        resume_point([2, 1], 4)


@pytest.mark.parametrize("compressor", ["zstd", "blosc", "none"])
def test_fast_reader_matches_zarr(tmp_path, compressor):
    write_store(tmp_path / "s.zarr", compressor=compressor)
    reader = ChunkReader(str(tmp_path / "s.zarr"))
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    assert reader._root is not None and None not in reader._fast.values()
    for i in range(store.num_chunks):
        ids, logits = reader.read(i)
        want_ids, want_logits = store.read_chunk(i)
        assert np.array_equal(ids, want_ids) and np.array_equal(logits, want_logits)
    assert len(reader.read(store.num_chunks - 1)[0]) == 50 - 6 * 8  # short last chunk


def test_fast_reader_catches_damage(tmp_path):
    write_store(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / "logits" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    reader = ChunkReader(str(tmp_path / "s.zarr"))
    with pytest.raises(StoreError, match=r"chunk 1 \(rows 8..15\) of 'logits' cannot be "
                       r"decoded, the stored bytes are damaged: "):
        reader.read(1)
    (tmp_path / "s.zarr" / "sample_id" / "c" / "2").unlink()
    with pytest.raises(StoreError, match=r"chunk 2 \(rows 16..23\) of 'sample_id' is "
                       r"missing \(c/2\); the chunk was never written or was deleted"):
        reader.read(2)


def test_fast_reader_refuses_non_finite_rows(tmp_path):
    write_store(tmp_path / "s.zarr")
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "logits"), mode="r+")
    arr[9, 2] = np.float16("inf")
    with pytest.raises(StoreError, match=r"chunk 1 \(rows 8..15\) of 'logits': rows \[9\] "
                       r"are missing or invalid"):
        ChunkReader(str(tmp_path / "s.zarr")).read(1)


def test_plan_splits_chunks_across_ranks_and_workers_exactly():
    kept = np.full(23, 8)
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            plan = StreamPlan(url="", kept=kept, keep=None, seed=3, batch_size=5, rank=rank,
                              world_size=2, num_workers=3)
            for w in range(3):
                seen += plan.worker_chunks(epoch, w).tolist()
        assert sorted(seen) == list(range(23))
    plan = StreamPlan(url="", kept=kept, keep=None, seed=3, batch_size=5)
    assert not np.array_equal(plan.worker_chunks(0, 0), plan.worker_chunks(1, 0))


def test_worker_batches_skip_gives_the_exact_rest(tmp_path):
    ids, _ = write_store(tmp_path / "s.zarr")
    plan = StreamPlan(url=str(tmp_path / "s.zarr"), kept=np.array([8] * 6 + [2]), keep=None,
                      seed=1, batch_size=6, buffer_chunks=2)
    full = [b[0].tolist() for b in worker_batches(plan, epoch=0, worker=0)]
    assert sorted(sum(full, [])) == list(range(50))
    assert [len(b) for b in full] == [6] * 8 + [2]  # batches span groups; only the last is short
    for k in (1, 3, 8, 9):
        rest = [b[0].tolist() for b in worker_batches(plan, epoch=0, worker=0, skip_batches=k)]
        assert rest == full[k:]


def test_batches_stay_intact_while_the_next_groups_decode(tmp_path):
    # one-chunk groups, two decode threads: the next group is queued into the other buffer
    # before the current one is awaited; batches kept across groups must not change under it
    ids, logits = write_store(tmp_path / "s.zarr", n=200, classes=6)
    by_id = np.empty_like(logits)
    by_id[ids] = logits
    kept = np.array([8] * 25)
    plan = StreamPlan(url=str(tmp_path / "s.zarr"), kept=kept, keep=None, seed=2, batch_size=5,
                      buffer_chunks=1, decode_threads=2)
    batches = list(worker_batches(plan, epoch=0, worker=0))
    assert sorted(np.concatenate([b[0] for b in batches]).tolist()) == list(range(200))
    for got_ids, got_logits in batches:
        assert np.array_equal(got_logits, by_id[got_ids])


def test_closing_early_stops_the_decode_threads(tmp_path):
    import threading
    write_store(tmp_path / "s.zarr", n=200)
    plan = StreamPlan(url=str(tmp_path / "s.zarr"), kept=np.array([8] * 25), keep=None, seed=0,
                      batch_size=4, buffer_chunks=2, decode_threads=2)
    it = worker_batches(plan, epoch=0, worker=0)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]
