import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from softtargets import store as st
from softtargets.errors import (IncompleteStoreError, LogitValueError, StoreError,
                                StoreExistsError, StoreMismatchError)

GOLDEN = Path(__file__).parent / "fixtures" / "golden-v1.zarr"
GOLDEN_LOGITS = np.array([[0, 1, -1], [2.5, -3, 0.125], [100, -100, 0], [-0.5, 0.5, 7],
                          [65504, -65504, 1]], dtype=np.float16)
GOLDEN_IDS = np.array([4, 0, 3, 1, 2], dtype=np.int64)
DATASET = {"name": "mnist", "split": "train", "n": 5, "limit": None,
           "fingerprint": "sha256:" + "0" * 64}
TEACHER = {"arch": "mlp 784-4-3", "checkpoint_sha256": "sha256:" + "1" * 64}


def write_store(url, *, logits=GOLDEN_LOGITS, ids=GOLDEN_IDS, chunk_rows=2, finalize=True,
                compressor="zstd", overwrite=False, dataset=DATASET):
    w = st.StoreWriter.create(str(url), n=len(ids), class_names=("a", "b", "c"), dataset=dataset,
                              teacher=TEACHER, config={"k": 1}, chunk_rows=chunk_rows,
                              compressor=compressor, overwrite=overwrite)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=ids[sl], logits=logits[sl])
    return w.finalize() if finalize else w.meta


def test_round_trip(tmp_path):
    meta = write_store(tmp_path / "s.zarr")
    s = st.LogitStore.open(str(tmp_path / "s.zarr"))
    assert meta.complete and s.meta.complete and s.num_chunks == 3
    ids, logits = s.read_all()
    np.testing.assert_array_equal(ids, GOLDEN_IDS)
    np.testing.assert_array_equal(logits, GOLDEN_LOGITS)
    assert logits.dtype == np.float16


@pytest.mark.parametrize("compressor", st.COMPRESSORS)
def test_every_compressor_round_trips_and_checksums(tmp_path, compressor):
    write_store(tmp_path / "s.zarr", compressor=compressor)
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "logits"), mode="r")
    names = [c["name"] for c in arr.metadata.to_dict()["codecs"]]
    assert names[0] == "bytes" and names[-1] == "crc32c"
    np.testing.assert_array_equal(st.LogitStore.open(str(tmp_path / "s.zarr")).read_all()[1],
                                  GOLDEN_LOGITS)


def test_readable_with_plain_zarr(tmp_path):
    write_store(tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    attrs = g.attrs["softtargets"]
    assert attrs["format"] == "softtargets.logits" and attrs["version"] == 1
    assert attrs["complete"] is True
    np.testing.assert_array_equal(g["logits"][:], GOLDEN_LOGITS)
    np.testing.assert_array_equal(g["sample_id"][:], GOLDEN_IDS)


def test_metadata_keys_are_the_documented_ones(tmp_path):
    write_store(tmp_path / "s.zarr")
    attrs = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["attributes"]["softtargets"]
    assert sorted(attrs) == sorted([
        "format", "version", "kind", "n", "num_classes", "class_names", "dtype", "chunk_rows",
        "compressor", "codecs", "dataset", "teacher", "config", "created_at", "created_by", "complete"])
    assert attrs["class_names"] == ["a", "b", "c"] and attrs["dataset"] == DATASET
    assert attrs["codecs"] == json.loads((tmp_path / "s.zarr" / "logits" / "zarr.json")
                                         .read_text())["codecs"]
    assert set(attrs["created_by"]) >= {"softtargets", "zarr", "numcodecs", "numpy", "python"}


def test_golden_store_still_reads():
    """A store written by v1 of the writer (committed fixture) must stay readable."""
    s = st.LogitStore.open(str(GOLDEN))
    ids, logits = s.read_all()
    np.testing.assert_array_equal(ids, GOLDEN_IDS)
    np.testing.assert_array_equal(logits, GOLDEN_LOGITS)


def test_writer_still_produces_the_golden_bytes(tmp_path):
    """Same input, same chunk bytes and array metadata as the committed fixture."""
    write_store(tmp_path / "s.zarr")
    for name in ("logits", "sample_id"):
        golden_meta = json.loads((GOLDEN / name / "zarr.json").read_text())
        assert json.loads((tmp_path / "s.zarr" / name / "zarr.json").read_text()) == golden_meta
        for chunk in sorted((GOLDEN / name / "c").rglob("*")):
            if chunk.is_file():
                rel = chunk.relative_to(GOLDEN)
                assert (tmp_path / "s.zarr" / rel).read_bytes() == chunk.read_bytes(), rel


def test_existing_path_refused_without_overwrite(tmp_path):
    write_store(tmp_path / "s.zarr")
    with pytest.raises(StoreExistsError, match=r"already exists; pass --overwrite"):
        write_store(tmp_path / "s.zarr")
    # still intact
    assert st.LogitStore.open(str(tmp_path / "s.zarr")).meta.complete
    write_store(tmp_path / "s.zarr", logits=GOLDEN_LOGITS * 0, overwrite=True)
    assert not st.LogitStore.open(str(tmp_path / "s.zarr")).read_all()[1].any()


def test_overwrite_never_deletes_a_non_store_directory(tmp_path):
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("x")
    with pytest.raises(StoreExistsError, match="is not a Zarr store; refusing to delete"):
        write_store(d, overwrite=True)
    assert (d / "thesis.tex").exists()


def test_incomplete_store_is_refused(tmp_path):
    w = st.StoreWriter.create(str(tmp_path / "s.zarr"), n=5, class_names=("a", "b", "c"),
                              dataset=DATASET, teacher=TEACHER, config={}, chunk_rows=2)
    w.write_chunk(0, sample_ids=GOLDEN_IDS[:2], logits=GOLDEN_LOGITS[:2])
    with pytest.raises(IncompleteStoreError, match=r"chunks \[1, 2\] of 3 were not written"):
        w.finalize()
    with pytest.raises(IncompleteStoreError, match="incomplete.*rerun stage 1"):
        st.LogitStore.open(str(tmp_path / "s.zarr"))


def test_truncated_store_is_refused(tmp_path):
    write_store(tmp_path / "s.zarr")
    shutil.rmtree(tmp_path / "s.zarr" / "sample_id")
    with pytest.raises(StoreError, match="lacks the array 'sample_id'"):
        st.LogitStore.open(str(tmp_path / "s.zarr"))


def test_deleted_chunk_is_detected_on_read(tmp_path):
    write_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "logits" / "c" / "1" / "0").unlink()
    s = st.LogitStore.open(str(tmp_path / "s.zarr"))
    with pytest.raises(StoreError, match=r"chunk 1 has missing or invalid rows \[2, 3\]"):
        s.read_all()


def test_flipped_byte_fails_the_checksum(tmp_path):
    write_store(tmp_path / "s.zarr", compressor="none")
    chunk = tmp_path / "s.zarr" / "logits" / "c" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[3] ^= 0x40
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"chunk 0 \(rows 0..1\) cannot be decoded"):
        st.LogitStore.open(str(tmp_path / "s.zarr")).read_all()


def test_not_a_store_and_newer_version(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        st.LogitStore.open(str(tmp_path / "nothing.zarr"))
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a softtargets logit store"):
        st.LogitStore.open(str(tmp_path / "other.zarr"))
    write_store(tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g.attrs["softtargets"] = {**g.attrs["softtargets"], "version": 99}
    with pytest.raises(StoreError, match="format version 99; this reader supports up to 2"):
        st.LogitStore.open(str(tmp_path / "s.zarr"))


def test_unknown_attributes_are_kept_for_forward_compatibility(tmp_path):
    write_store(tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g.attrs["softtargets"] = {**g.attrs["softtargets"], "members": ["x", "y"]}
    s = st.LogitStore.open(str(tmp_path / "s.zarr"))
    assert s.meta.extra == {"members": ["x", "y"]}
    assert s.meta.to_json()["members"] == ["x", "y"]


@pytest.mark.parametrize("bad, match", [
    (np.nan, r"non-finite logits \(NaN/Inf\) at rows \[1\]"),
    (np.inf, r"non-finite logits \(NaN/Inf\) at rows \[1\]"),
    (70000.0, r"logit magnitude 7e\+04 at row 1 overflows float16"),
])
def test_bad_logits_are_refused_and_nothing_is_written(tmp_path, bad, match):
    w = st.StoreWriter.create(str(tmp_path / "s.zarr"), n=5, class_names=("a", "b", "c"),
                              dataset=DATASET, teacher=TEACHER, config={}, chunk_rows=2)
    logits = GOLDEN_LOGITS[:2].astype(np.float32)
    logits[1, 2] = bad
    with pytest.raises(LogitValueError, match=match):
        w.write_chunk(0, sample_ids=GOLDEN_IDS[:2], logits=logits)
    assert 0 not in w.written


def test_write_chunk_checks_shapes_and_ids(tmp_path):
    w = st.StoreWriter.create(str(tmp_path / "s.zarr"), n=5, class_names=("a", "b", "c"),
                              dataset=DATASET, teacher=TEACHER, config={}, chunk_rows=2)
    with pytest.raises(StoreError, match=r"chunk 0 needs logits \(2, 3\) and sample_ids \(2,\)"):
        w.write_chunk(0, sample_ids=GOLDEN_IDS[:3], logits=GOLDEN_LOGITS[:3])
    with pytest.raises(StoreError, match=r"sample ids must be in \[0, 5\)"):
        w.write_chunk(0, sample_ids=np.array([0, 5]), logits=GOLDEN_LOGITS[:2])
    with pytest.raises(StoreError, match=r"chunk index 3 out of range \[0, 3\)"):
        w.write_chunk(3, sample_ids=GOLDEN_IDS[:1], logits=GOLDEN_LOGITS[:1])


def test_unknown_compressor(tmp_path):
    with pytest.raises(StoreError, match=r"unknown compressor 'lzma'; allowed"):
        write_store(tmp_path / "s.zarr", compressor="lzma")


def test_check_dataset_names_both_sides(tmp_path):
    write_store(tmp_path / "s.zarr")
    s = st.LogitStore.open(str(tmp_path / "s.zarr"))
    s.check_dataset(DATASET)
    other = {**DATASET, "split": "test"}
    with pytest.raises(StoreMismatchError, match=r"computed on mnist/train .* used with mnist/test"):
        s.check_dataset(other)
    with pytest.raises(StoreMismatchError, match="fingerprint differs"):
        s.check_dataset({**DATASET, "fingerprint": "sha256:" + "f" * 64})


def test_check_dataset_refuses_other_validation_rows(tmp_path):
    """A store records val_rows; one written before validation splits existed counts as 0."""
    write_store(tmp_path / "old.zarr")  # DATASET has no val_rows key
    st.LogitStore.open(str(tmp_path / "old.zarr")).check_dataset({**DATASET, "val_rows": 0})
    with pytest.raises(StoreMismatchError, match=r"\(n=5, val_rows=0, .*\(n=5, val_rows=2, .*: "
                       r"val_rows differs; pass the store's --val-rows 0 or rewrite it with "
                       r"teacher-logits --val-rows 2$"):
        st.LogitStore.open(str(tmp_path / "old.zarr")).check_dataset({**DATASET, "val_rows": 2})
    write_store(tmp_path / "held.zarr", dataset={**DATASET, "val_rows": 2})
    held = st.LogitStore.open(str(tmp_path / "held.zarr"))
    assert held.meta.dataset["val_rows"] == 2
    held.check_dataset({**DATASET, "val_rows": 2})
    with pytest.raises(StoreMismatchError, match="val_rows differs"):
        held.check_dataset(DATASET)


def test_default_chunk_rows_targets_about_two_mib():
    assert st.default_chunk_rows(60000, 10) == 60000
    assert st.default_chunk_rows(10**6, 1000) == 1048
    assert st.default_chunk_rows(10, 10**7) == 1
