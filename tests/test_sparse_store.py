"""Sparse stores: round trips, positions, plain-zarr readability, and every refusal."""

import re

import numpy as np
import pytest
import zarr
from conftest import DELETE, edit_json

from softtargets.format import sparse as sp
from softtargets.format import sparse_store as ss
from softtargets.format import store as st
from softtargets.errors import (ConfigError, IncompleteStoreError, SparseStoreError, StoreError,
                                StoreMetadataError)

DATASET = {"name": "mnist", "split": "train", "n": 50, "limit": None,
           "fingerprint": "sha256:" + "0" * 64}
TEMPS = (1.0, 4.0)


def values(n=30, classes=300, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, size=(n, classes)) - 0.8 * np.log(np.arange(1, classes + 1))
    return z.astype(np.float32)


def write(url, *, kind="topk", k=8, z=None, ids=None, positions=None, chunk_rows=7,
          finalize=True, classes=300):
    z = values(classes=classes) if z is None else z
    ids = np.random.default_rng(1).permutation(50)[:len(z)] if ids is None else ids
    spec = ss.make_spec(kind=kind, k=k, num_classes=z.shape[1], temperatures=TEMPS, seed=11,
                        position=positions is not None)
    w = ss.SparseWriter.create(str(url), spec=spec, n=len(z),
                               class_names=[str(c) for c in range(z.shape[1])], dataset=DATASET,
                               teacher={"arch": "synthetic"}, config={}, chunk_rows=chunk_rows)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=ids[sl], logits=z[sl],
                      positions=None if positions is None else positions[sl])
    if finalize:
        w.finalize()
    return z, ids


@pytest.mark.parametrize("kind", ss.KINDS)
def test_round_trip_equals_direct_conversion(tmp_path, kind):
    z, ids = write(tmp_path / "s.zarr", kind=kind)
    s = ss.SparseStore.open(str(tmp_path / "s.zarr"))
    assert s.meta.kind == kind and s.num_chunks == 5 and s.spec.temperatures == TEMPS
    got_ids, positions, rows = s.read_all()
    np.testing.assert_array_equal(got_ids, ids)
    assert positions is None
    want = (sp.to_topk(z, k=8, temperatures=TEMPS) if kind == "topk" else
            sp.to_sampled(z, draws=8, temperatures=TEMPS, seed=11, sample_ids=ids))
    for name in ("ids", "logits", "lse", "tail", "counts"):
        a, b = getattr(rows, name), getattr(want, name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    prefix = "topk" if kind == "topk" else "sampled"
    assert g[f"{prefix}_ids"].dtype == np.uint16 and g[f"{prefix}_logits"].dtype == np.float16
    codecs = [c["name"] for c in g[f"{prefix}_ids"].metadata.to_dict()["codecs"]]
    assert codecs == ["bytes", "zstd", "crc32c"]  # measured defaults (sparse_store.DEFAULT_CODECS)
    codecs = [c["name"] for c in g[f"{prefix}_logits"].metadata.to_dict()["codecs"]]
    assert codecs == ["bytes", "blosc" if kind == "topk" else "zstd", "crc32c"]
    attrs = g.attrs["softtargets"]
    assert attrs["version"] == 1 and attrs["sparse"]["id_dtype"] == "uint16"
    assert attrs["sparse"]["computed_from"] == "logits"
    if kind == "sampled":
        assert attrs["sparse"]["seed"] == 11 and attrs["sparse"]["draws"] == 8
        assert g["sampled_counts"].dtype == np.uint8


def test_small_label_space_uses_uint8_and_caps_k(tmp_path):
    write(tmp_path / "s.zarr", k=128, z=values(classes=10))
    s = ss.SparseStore.open(str(tmp_path / "s.zarr"))
    assert s.spec.k == 10 and s.group["topk_ids"].dtype == np.uint8
    _, _, rows = s.read_all()
    assert (rows.tail == 0).all()


def test_positions_round_trip_and_duplicates_are_refused(tmp_path):
    z = values(n=12)
    ids = np.repeat(np.arange(3), 4)  # 3 sequences of 4 tokens: one row per token
    pos = np.tile(np.arange(4), 3)
    write(tmp_path / "s.zarr", z=z, ids=ids, positions=pos)
    got_ids, got_pos, _ = ss.SparseStore.open(str(tmp_path / "s.zarr")).read_all()
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_pos, pos)
    write(tmp_path / "d.zarr", z=z, ids=ids, positions=np.zeros(12, np.int64))
    with pytest.raises(StoreError, match=r"duplicate \(sample_id, position\) rows"):
        ss.SparseStore.open(str(tmp_path / "d.zarr")).read_all()


def test_dense_reader_refuses_a_sparse_store_clearly(tmp_path):
    write(tmp_path / "s.zarr")
    with pytest.raises(SparseStoreError, match=r"is a sparse 'topk' store .*sparse_store.SparseStore"):
        st.LogitStore.open(str(tmp_path / "s.zarr"))
    assert st.read_meta(str(tmp_path / "s.zarr"))[0].kind == "topk"  # metadata stays readable
    from softtargets.tools.verify import verify_store
    rep = verify_store(str(tmp_path / "s.zarr"), allow_subset=True)  # 30 of the 50 dataset rows
    assert rep.ok and rep.kind == "topk" and rep.chunks_ok == 5


def test_sparse_reader_refuses_a_dense_store(tmp_path):
    w = st.StoreWriter.create(str(tmp_path / "d.zarr"), n=2, class_names=("a", "b"),
                              dataset=DATASET, teacher={}, config={})
    w.write_chunk(0, sample_ids=np.array([0, 1]), logits=np.zeros((2, 2)))
    w.finalize()
    with pytest.raises(SparseStoreError, match="kind 'dense', not a sparse store"):
        ss.SparseStore.open(str(tmp_path / "d.zarr"))
    assert isinstance(ss.open_any(str(tmp_path / "d.zarr")), st.LogitStore)


def test_incomplete_and_unfinished_stores_are_refused(tmp_path):
    write(tmp_path / "s.zarr", finalize=False)
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        ss.SparseStore.open(str(tmp_path / "s.zarr"))
    spec = ss.make_spec(kind="topk", k=4, num_classes=300, temperatures=TEMPS)
    w = ss.SparseWriter.create(str(tmp_path / "t.zarr"), spec=spec, n=30,
                               class_names=[str(c) for c in range(300)], dataset=DATASET,
                               teacher={}, config={}, chunk_rows=10)
    w.write_chunk(0, sample_ids=np.arange(10), logits=values()[:10])
    with pytest.raises(IncompleteStoreError, match=r"chunks \[1, 2\] of 3"):
        w.finalize()


def test_damaged_counts_and_bad_writes_are_refused(tmp_path):
    write(tmp_path / "s.zarr", kind="sampled")
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "sampled_counts"), mode="r+")
    arr[3, 0] = arr[3, 0] + 1
    with pytest.raises(StoreError, match=r"invalid rows \[3\].*counts not summing to draws"):
        ss.SparseStore.open(str(tmp_path / "s.zarr")).read_all()
    spec = ss.make_spec(kind="topk", k=4, num_classes=300, temperatures=TEMPS, position=True)
    w = ss.SparseWriter.create(str(tmp_path / "p.zarr"), spec=spec, n=10,
                               class_names=[str(c) for c in range(300)], dataset=DATASET,
                               teacher={}, config={})
    with pytest.raises(StoreError, match="created with position=True"):
        w.write_chunk(0, sample_ids=np.arange(10), logits=values()[:10])
    with pytest.raises(StoreError, match=r"sample ids must be in \[0, 50\)"):
        w.write_chunk(0, sample_ids=np.arange(10) + 45, logits=values()[:10],
                      positions=np.zeros(10))


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="positive number of classes, got 0"):
        ss.make_spec(kind="topk", k=0, num_classes=10, temperatures=TEMPS)
    with pytest.raises(ConfigError, match="sparse kind must be one of"):
        ss.make_spec(kind="bottomk", k=3, num_classes=10, temperatures=TEMPS)
    with pytest.raises(ConfigError, match="computed_from must be one of"):
        ss.make_spec(kind="topk", k=3, num_classes=10, temperatures=TEMPS, computed_from="probs")
    spec = ss.make_spec(kind="sampled", k=3, num_classes=10, temperatures=(4,),
                        sample_temperature=2.0)
    assert spec.temperatures == (1.0, 2.0, 4.0)  # T=1 and the sampling temperature always stored


def test_readable_with_plain_zarr_as_documented(tmp_path):
    z, ids = write(tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    meta = g.attrs["softtargets"]
    assert meta["kind"] == "topk" and meta["complete"]
    top_ids = g["topk_ids"][:].astype(np.int64)
    p = np.exp(g["topk_logits"][:].astype(np.float64) - g["lse"][:][:, None])
    dense = sp.dense_probs(z, temperature=1.0)
    np.testing.assert_allclose(p, np.take_along_axis(dense, top_ids, 1), rtol=2e-6)
    t = meta["sparse"]["temperatures"].index(4.0)
    zt = g["topk_logits"][:].astype(np.float64) / 4.0
    p4 = np.exp(zt - zt.max(1, keepdims=True))
    p4 = p4 / p4.sum(1, keepdims=True) * (1 - g["tail_mass"][:, t][:, None])
    np.testing.assert_allclose(p4, np.take_along_axis(sp.dense_probs(z, temperature=4.0),
                                                      top_ids, 1), rtol=1e-5)


def test_topk_of_an_ensembles_combined_distribution_is_recorded_as_such(tmp_path):
    """Composition with ensembles: any (rows, C) log-prob matrix converts; attributes say what."""
    members = np.stack([values(seed=s) for s in (1, 2, 3)])  # (M, N, C) member logits
    p = np.exp(members - members.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    log_mix = np.log(p.mean(0))  # arithmetic mean at T = 1: (N, C) log-probs
    spec = ss.make_spec(kind="topk", k=16, num_classes=300, temperatures=TEMPS,
                        computed_from="log_probs", source="arithmetic mean of 3 members at T=1")
    w = ss.SparseWriter.create(str(tmp_path / "e.zarr"), spec=spec, n=30,
                               class_names=[str(c) for c in range(300)], dataset=DATASET,
                               teacher={"members": 3}, config={})
    w.write_chunk(0, sample_ids=np.arange(30), logits=log_mix)
    w.finalize()
    s = ss.SparseStore.open(str(tmp_path / "e.zarr"))
    assert s.spec.computed_from == "log_probs" and s.spec.source.startswith("arithmetic mean")
    _, _, rows = s.read_all()
    kept = np.exp(rows.logits.astype(np.float64) - rows.lse[:, None])
    exact = np.take_along_axis(sp.dense_probs(log_mix, temperature=1.0), rows.ids, 1)
    np.testing.assert_allclose(kept, exact, rtol=2e-6)  # exact view of the fp16-rounded values
    # float16 rounding of log-probs in [-8, 0) moves p by at most e^(2^-9) - 1 = 0.2%
    np.testing.assert_allclose(kept, np.take_along_axis(p.mean(0), rows.ids, 1), rtol=5e-3)
    np.testing.assert_allclose(rows.lse, 0.0, atol=2e-3)  # log-probs already normalised


def _sparse_edit(key, value):
    """An edit of attributes["softtargets"]["sparse"][key] (DELETE removes it)."""
    def apply(doc):
        spec = doc["attributes"]["softtargets"]["sparse"]
        if value is DELETE:
            spec.pop(key)
        else:
            spec[key] = value
    return apply


@pytest.mark.parametrize("kind, edit, line", [
    ("topk", lambda d: d["attributes"]["softtargets"].pop("sparse"),
     "metadata key 'sparse' is null, expected an object describing the topk store (a 'topk' "
     "store needs it)"),
    ("topk", _sparse_edit("kind", "sampled"),
     "metadata key 'sparse.kind' is \"sampled\", expected \"topk\", the top-level kind"),
    ("topk", _sparse_edit("k", 301), "metadata key 'sparse.k' is 301, expected a positive "
                                     "integer <= num_classes (300)"),
    ("topk", _sparse_edit("k", 4), "array 'topk_ids' has shape (30, 8), expected (n, sparse.k) "
                                   "= (30, 4) from the metadata"),
    ("topk", _sparse_edit("temperatures", [1.0]),
     "array 'tail_mass' has shape (30, 2), expected (n, len(sparse.temperatures)) = (30, 1)"),
    ("topk", _sparse_edit("temperatures", [4.0]),
     "metadata key 'sparse.temperatures' is [4.0], expected a list of numbers > 0 that "
     "contains 1"),
    ("topk", _sparse_edit("id_dtype", "uint8"),
     "array 'topk_ids' has data_type uint16, expected uint8"),
    ("topk", _sparse_edit("position", True), "array 'position' is missing; the store is "
                                             "truncated or damaged"),
    ("topk", lambda d: d["attributes"]["softtargets"].update(shard_rows=14),
     "metadata key 'shard_rows' is 14, expected no shard_rows: sparse stores are not sharded"),
    ("sampled", _sparse_edit("draws", 9),
     "metadata key 'sparse.k' is 8, expected min(draws, num_classes) = 9"),
    ("sampled", _sparse_edit("count_dtype", DELETE),
     "metadata key 'sparse.count_dtype' is null, expected one of ['uint8', 'uint16', 'uint32', "
     "'uint64']"),
])
def test_sparse_metadata_that_lies_is_refused_at_open(tmp_path, kind, edit, line):
    write(tmp_path / "s.zarr", kind=kind)
    edit_json(tmp_path / "s.zarr" / "zarr.json", edit)
    with pytest.raises(StoreMetadataError, match=re.escape(line)):
        ss.SparseStore.open(str(tmp_path / "s.zarr"))


def test_sparse_array_dtype_edited_in_its_zarr_json_is_refused(tmp_path):
    write(tmp_path / "s.zarr", kind="sampled")
    edit_json(tmp_path / "s.zarr" / "sampled_logits" / "zarr.json",
              lambda d: d.update(data_type="int16"))
    with pytest.raises(StoreMetadataError, match=re.escape(
            "array 'sampled_logits' has data_type int16 in sampled_logits/zarr.json, expected "
            "float16")):
        ss.open_any(str(tmp_path / "s.zarr"))
