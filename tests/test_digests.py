"""Chunk digests: the documented recipe, golden values, and the refusals of a store that lies."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import xxhash
import zarr
from test_store import DATASET, GOLDEN_IDS, GOLDEN_LOGITS, write_store

from softtargets.format import digests as dg
from softtargets.errors import StoreError
from softtargets.format.store import LogitStore


GOLDEN_LAST_CHUNK = "2c7b5f4396fc11300f5d71945f4080aa"  # xxh3-128 of chunk 2 of the golden store


def documented_digest(dataset: dict, name: str, chunk: int, start: int, block: np.ndarray) -> bytes:
    """docs/FORMAT.md 'Chunk digests', written out with numpy, json, hashlib and xxhash only."""
    key = hashlib.sha256(json.dumps(dataset, sort_keys=True, separators=(",", ":"))
                         .encode()).hexdigest()
    shape = "x".join(str(s) for s in block.shape)
    header = f"{key} {name} - {chunk} {start} {start + len(block)} {block.dtype.str} {shape}\n"
    return xxhash.xxh3_128(b"softtargets.digest/v1\n" + header.encode()
                           + np.ascontiguousarray(block).tobytes()).digest()


def test_stored_digests_follow_the_documented_recipe(tmp_path):
    write_store(tmp_path / "s.zarr")  # 5 rows x 3 classes, chunks of 2 rows
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert g.attrs["softtargets"]["digests"] == {"algorithm": "xxh3-128", "group": "digests",
                                                 "version": 1}
    stored = g["digests/logits"][:]
    assert stored.shape == (3, 16) and g["digests/sample_id"].shape == (3, 16)
    half = GOLDEN_LOGITS.astype(np.float16)
    for i, (a, b) in enumerate(((0, 2), (2, 4), (4, 5))):
        assert stored[i].tobytes() == documented_digest(DATASET, "logits", i, a, half[a:b])
        assert g["digests/sample_id"][i].tobytes() == documented_digest(
            DATASET, "sample_id", i, a, GOLDEN_IDS[a:b].astype(np.int64))
    # golden value: the recipe is frozen (a change would orphan every shared store)
    assert stored[2].tobytes().hex() == GOLDEN_LAST_CHUNK



def test_digests_bind_the_dataset():
    block = np.arange(6, dtype=np.float16).reshape(2, 3)
    other = {**DATASET, "split": "test"}
    a = dg.chunk_digest(dg.store_key(DATASET), "logits", member=None, chunk=0, start=0, block=block)
    b = dg.chunk_digest(dg.store_key(other), "logits", member=None, chunk=0, start=0, block=block)
    c = dg.chunk_digest(dg.store_key(DATASET), "logits", member=None, chunk=1, start=2, block=block)
    d = dg.chunk_digest(dg.store_key(DATASET), "logits", member=0, chunk=0, start=0, block=block)
    assert len({a, b, c, d}) == 4


def test_a_zeroed_digest_reads_as_never_finished(tmp_path):
    write_store(tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g["digests/logits"][1] = np.zeros(16, np.uint8)
    with pytest.raises(StoreError, match=r"chunk 1 \(rows 2\.\.3\) of 'logits' has no digest: its "
                                         r"write unit was never finished"):
        LogitStore.open(str(tmp_path / "s.zarr")).read_all()


def test_stripped_digests_are_refused_and_unbound_stores_read(tmp_path):
    write_store(tmp_path / "s.zarr")
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")["digests"].__delitem__("logits")
    with pytest.raises(StoreError, match=r"array 'logits' has no digests \('digests/logits' is "
                                         "missing\\)"):
        LogitStore.open(str(tmp_path / "s.zarr")).read_all()
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    del g["digests"]
    with pytest.raises(StoreError, match="declares chunk digests but the 'digests' group is "
                                         "missing"):
        LogitStore.open(str(tmp_path / "s.zarr"))
    attrs = dict(g.attrs["softtargets"])
    del attrs["digests"]
    g.attrs["softtargets"] = attrs  # a store from before digests: unbound, still readable
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    assert not store.digests.bound
    np.testing.assert_array_equal(store.read_all()[1], GOLDEN_LOGITS.astype(np.float16))


def test_inspect_and_verify_say_whether_a_store_is_bound(tmp_path):
    from pathlib import Path

    from conftest import run_cli
    write_store(tmp_path / "s.zarr")  # 3 chunks, unsharded: one digest object per chunk
    info = run_cli("inspect", tmp_path / "s.zarr").output
    assert ("digests:    bound: every chunk of 2 arrays has its xxh3-128 digest (6 objects, "
            in info)
    assert "chunks bound to their places by digests (xxh3-128)" in run_cli(
        "verify", tmp_path / "s.zarr").output
    golden = Path(__file__).parent / "fixtures" / "golden-v1.zarr"  # written before digests
    assert ("digests:    UNBOUND: no chunk digests (written before they existed); a chunk in "
            "the wrong place would go unnoticed") in run_cli("inspect", golden).output
    assert "UNBOUND: no chunk digests" in run_cli("verify", golden).output


def test_digest_arrays_read_whole_as_zarr_reads_them(tmp_path):
    from softtargets.format.chunks import read_whole
    write_store(tmp_path / "s.zarr")  # 3 chunks: one digest object each
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    for name in ("logits", "sample_id"):
        whole = read_whole(g[f"digests/{name}"])
        assert whole.shape == (3, 16) and whole.dtype == np.uint8
        np.testing.assert_array_equal(whole, g[f"digests/{name}"][...])
    (tmp_path / "s.zarr" / "digests" / "logits" / "c" / "1" / "0").unlink()
    whole = read_whole(g["digests/logits"])  # never written: the fill value, as through zarr
    assert not whole[1].any() and whole[0].any() and whole[2].any()
    with pytest.raises(StoreError, match=r"chunk 1 \(rows 2\.\.3\) of 'logits' has no digest"):
        LogitStore.open(str(tmp_path / "s.zarr")).read_all()


def test_a_damaged_digest_object_is_refused_naming_its_array(tmp_path):
    write_store(tmp_path / "s.zarr")
    obj = tmp_path / "s.zarr" / "digests" / "logits" / "c" / "2" / "0"
    raw = bytearray(obj.read_bytes())
    raw[3] ^= 0xFF
    obj.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"the digests of 'logits' cannot be decoded: .*"
                                         r"checksum"):
        LogitStore.open(str(tmp_path / "s.zarr")).read_all()


def test_decode_threads_sharing_a_check_read_each_digest_array_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from softtargets.format.chunks import ChunkReader
    write_store(tmp_path / "s.zarr")
    reads = []
    real = dg.DigestCheck._read
    monkeypatch.setattr(dg.DigestCheck, "_read",
                        lambda self, name, *a: reads.append(name) or real(self, name, *a))
    reader = ChunkReader(str(tmp_path / "s.zarr"))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(reader.read, [0, 1, 2, 0, 1, 2, 0, 1]))
    assert sorted(reads) == ["logits", "sample_id"]
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got[:3]]), GOLDEN_IDS)
