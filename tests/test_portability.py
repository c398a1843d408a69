"""A second Zarr v3 implementation (tensorstore, test-only) reads every store layout."""

from pathlib import Path

import numpy as np
import pytest

from softtargets.format.store import COMPRESSORS, LogitStore, StoreWriter

ts = pytest.importorskip("tensorstore")
GOLDEN = Path(__file__).parent / "fixtures" / "golden-v1.zarr"


def ts_read(path: Path) -> np.ndarray:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path.resolve())}}
    return ts.open(spec, read=True).result().read().result()


def write(url, *, compressor, shard_rows):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)).astype(np.float32) * 10  # (N, C)
    ids = rng.permutation(50)
    w = StoreWriter.create(str(url), n=50, class_names=tuple("abcdefg"),
                           dataset={"name": "x", "split": "train", "n": 50, "limit": None,
                                    "fingerprint": "sha256:" + "0" * 64},
                           teacher={}, config={}, chunk_rows=5, compressor=compressor,
                           shard_rows=shard_rows)
    for i in range(w.num_units):
        sl = w.unit_slice(i)
        w.write_unit(i, sample_ids=ids[sl], logits=logits[sl])
    w.finalize()


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize("shard_rows", [None, 20], ids=["chunked", "sharded"])
def test_tensorstore_reads_what_softtargets_wrote(tmp_path, compressor, shard_rows):
    url = tmp_path / "s.zarr"
    write(url, compressor=compressor, shard_rows=shard_rows)
    ids, logits = LogitStore.open(str(url)).read_all()
    got_logits = ts_read(url / "logits")
    assert got_logits.dtype == np.float16 and got_logits.shape == (50, 7)
    assert got_logits.tobytes() == logits.tobytes()
    np.testing.assert_array_equal(ts_read(url / "sample_id"), ids)


def test_tensorstore_reads_the_golden_v1_fixture():
    ids, logits = LogitStore.open(str(GOLDEN)).read_all()
    assert ts_read(GOLDEN / "logits").tobytes() == logits.tobytes()
    np.testing.assert_array_equal(ts_read(GOLDEN / "sample_id"), ids)
