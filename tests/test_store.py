import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import DELETE, edit_attrs, edit_json, run_cli
from softtargets.format import store as st
from softtargets.errors import (IncompleteStoreError, LogitValueError, StoreError,
                                StoreExistsError, StoreMetadataError, StoreMismatchError)

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
        "compressor", "codecs", "dataset", "teacher", "config", "created_at", "created_by", "complete",
        "digests"])
    assert attrs["digests"] == {"algorithm": "xxh3-128", "group": "digests", "version": 1}
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
    with pytest.raises(StoreExistsError, match=r"refusing to overwrite '.*precious': it is not "
                       r"a softtargets store \(no zarr.json\) and holds 'thesis.tex'; move it"):
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
    with pytest.raises(StoreError, match="array 'sample_id' is missing; the store is truncated"):
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
    assert s.meta.extra == {"members": ["x", "y"], "digests": st.DIGESTS_META}
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


# --- strict metadata at open: every reader refuses a store whose metadata lies ---

@pytest.mark.parametrize("changes, line", [
    ({"complete": "true"}, "metadata key 'complete' is \"true\", expected true or false (a JSON "
                           "boolean)"),
    ({"complete": "false"}, "metadata key 'complete' is \"false\", expected true or false"),
    ({"complete": 1}, "metadata key 'complete' is 1, expected true or false"),
    ({"version": 0}, "metadata key 'version' is 0, expected 1"),
    ({"version": -1}, "metadata key 'version' is -1, expected 1"),
    ({"version": 2}, "metadata key 'version' is 2, expected 1: version 2 is only for an "
                     "arithmetic combined-only ensemble store"),
    ({"version": "1"}, "metadata key 'version' is \"1\", expected the integer 1"),
    ({"version": 1.0}, "metadata key 'version' is 1.0, expected the integer 1"),
    ({"version": True}, "metadata key 'version' is true, expected the integer 1"),
    ({"kind": "dens"}, "metadata key 'kind' is \"dens\", expected one of ['dense', 'topk', "
                       "'sampled']"),
    ({"kind": "topk"}, "metadata key 'sparse' is null, expected an object describing the topk "
                       "store (a 'topk' store needs it)"),
    ({"n": 0}, "metadata key 'n' is 0, expected a positive integer"),
    ({"num_classes": "3"}, "metadata key 'num_classes' is \"3\", expected a positive integer"),
    ({"n": 6}, "array 'sample_id' has shape (5,), expected (n,) = (6,) from the metadata"),
    ({"num_classes": 4, "class_names": list("abcd")},
     "array 'logits' has shape (5, 3), expected (n, num_classes) = (5, 4) from the metadata"),
    ({"class_names": ["a", "b"]}, "metadata key 'class_names' has 2 names, expected "
                                  "num_classes = 3"),
    ({"dtype": "float32"}, "metadata key 'dtype' is \"float32\", expected \"float16\""),
    ({"chunk_rows": 0}, "metadata key 'chunk_rows' is 0, expected a positive integer"),
    ({"chunk_rows": 4}, "array 'sample_id' has chunks (2,), expected (4,) from metadata "
                        "chunk_rows 4"),
    ({"shard_rows": 4}, "array 'sample_id' has shards None, expected (4,) from metadata "
                        "shard_rows 4"),
    ({"shard_rows": 3}, "metadata key 'shard_rows' is 3, expected a positive multiple of "
                        "chunk_rows (2)"),
    ({"dataset": {"name": "mnist"}}, "metadata key 'dataset' is {\"name\": \"mnist\"}, expected "
                                     "an object whose n is a positive integer"),
])
def test_metadata_that_lies_is_refused_at_open_in_one_line(tmp_path, changes, line):
    write_store(tmp_path / "s.zarr")
    edit_attrs(tmp_path / "s.zarr", **changes)
    with pytest.raises(StoreMetadataError) as e:
        st.LogitStore.open(str(tmp_path / "s.zarr"))
    message = str(e.value)
    assert message.startswith(f"store {str(tmp_path / 's.zarr')!r}: {line}") and "\n" not in message


def test_each_violation_is_counted_and_incomplete_keeps_its_message(tmp_path):
    write_store(tmp_path / "s.zarr")
    edit_attrs(tmp_path / "s.zarr", n=0, chunk_rows=-2)
    with pytest.raises(StoreMetadataError, match=r"'n' is 0, expected a positive integer \(and 1 "
                       r"more metadata problem\(s\); `softtargets verify` lists them\)$"):
        st.read_meta(str(tmp_path / "s.zarr"))
    edit_attrs(tmp_path / "s.zarr", n=5, chunk_rows=2, complete=False)
    with pytest.raises(IncompleteStoreError, match=r"is incomplete \(complete: false\): its "
                       r"writer crashed or is still running; rerun stage 1"):
        st.LogitStore.open(str(tmp_path / "s.zarr"))
    edit_attrs(tmp_path / "s.zarr", complete=DELETE)  # absent: not complete either
    with pytest.raises(IncompleteStoreError):
        st.LogitStore.open(str(tmp_path / "s.zarr"))


@pytest.mark.parametrize("array, edit, line", [
    ("logits", lambda d: d.update(data_type="int16"),
     "array 'logits' has data_type int16 in logits/zarr.json, expected float16"),
    ("sample_id", lambda d: d.update(data_type="int32"),
     "array 'sample_id' has data_type int32, expected int64"),
    ("logits", lambda d: d.update(codecs=d["codecs"][:-1]),
     "array 'logits' has codecs ['bytes', 'zstd(level=3)'] without crc32c, expected crc32c in "
     "the chain"),
    ("sample_id", lambda d: d.update(shape=[4]),
     "array 'sample_id' has shape (4,), expected (n,) = (5,) from the metadata"),
    ("logits", lambda d: d.update(fill_value="oops"),
     "array 'logits': zarr rejects logits/zarr.json (TypeError: "),
])
def test_array_metadata_that_lies_is_refused(tmp_path, array, edit, line):
    write_store(tmp_path / "s.zarr")
    edit_json(tmp_path / "s.zarr" / array / "zarr.json", edit)
    with pytest.raises(StoreMetadataError, match=re.escape(line)):
        st.LogitStore.open(str(tmp_path / "s.zarr"))


def test_not_a_store_gives_one_line_naming_the_fix(tmp_path):
    write_store(tmp_path / "s.zarr")
    url = str(tmp_path / "s.zarr")
    res = run_cli("inspect", tmp_path / "s.zarr" / "logits", ok=False)
    assert res.exit_code == 1 and res.output == (
        f"Error: StoreError: {url + '/logits'!r} is the array 'logits' inside the store {url!r}, "
        f"not a store; pass the store path {url!r}\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"'.*empty' is not a Zarr v3 group \(no group zarr.json "
                       r"there: .*\); pass the path of a store written by softtargets"):
        st.read_meta(str(tmp_path / "empty"))
    zarr.open_array(str(tmp_path / "lone.zarr"), mode="w", shape=(3,), dtype="int8")
    with pytest.raises(StoreError, match=r"lone.zarr' is a Zarr array, not a softtargets store"):
        st.read_meta(str(tmp_path / "lone.zarr"))
    (tmp_path / "s.zarr" / "zarr.json").write_text("{not json")
    res = run_cli("inspect", url, ok=False)
    assert res.exit_code == 1 and res.output == (
        f"Error: StoreMetadataError: {url}/zarr.json is not valid Zarr v3 group metadata "
        "(JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 "
        "(char 1)); the file is damaged or was edited\n")
    (tmp_path / "s.zarr" / "zarr.json").write_text('{"zarr_format": 7, "node_type": "group"}')
    with pytest.raises(StoreMetadataError, match=r"zarr.json is not valid Zarr v3 group metadata "
                       r"\(ValueError: Invalid zarr_format. Expected one of 2 or 3. Got 7.\)"):
        st.read_meta(url)


def test_every_reader_refuses_with_the_same_line(tmp_path):
    from softtargets.read import order as stream, view_loader
    from softtargets.format import sparse_store
    from softtargets.tools import provenance
    from softtargets.tools.verify import verify_store
    write_store(tmp_path / "s.zarr")
    edit_attrs(tmp_path / "s.zarr", complete="true")  # truthy, but not the boolean true
    url = str(tmp_path / "s.zarr")
    line = "metadata key 'complete' is \"true\", expected true or false (a JSON boolean)"
    for read in (st.LogitStore.open, st.StoreWriter.open, sparse_store.SparseStore.open,
                 sparse_store.open_any, stream.ChunkReader, provenance.store_info,
                 lambda u: view_loader.views_meta(u, None)):
        with pytest.raises(StoreMetadataError, match=re.escape(f"store {url!r}: {line}")):
            read(url)
    assert [(p.kind, p.message) for p in verify_store(url).problems] == [("metadata", line)]
