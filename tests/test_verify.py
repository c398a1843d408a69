"""verify and inspect (issue 4): every bad input gives its exact problem, chunk and rows."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from softtargets.cli import cli
from softtargets.data import load_split
from softtargets.store import StoreWriter
from softtargets.verify import verify_store


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_tiny_store(url, data_cfg, *, chunk_rows=16, shard_rows=None, ids=None):
    """A complete store on the synthetic split (96 rows, 6 chunks of 16), logits = row index."""
    split = load_split(data_cfg)
    n = len(split)
    ids = np.arange(n) if ids is None else ids
    w = StoreWriter.create(str(url), n=n, class_names=split.class_names, dataset=split.identity(),
                           teacher={"arch": "test", "checkpoint_sha256": "sha256:" + "1" * 64},
                           config={}, chunk_rows=chunk_rows, shard_rows=shard_rows)
    logits = np.repeat(np.arange(n, dtype=np.float32)[:, None] / 8, 10, axis=1)  # (N, C)
    for i in range(w.num_units):
        sl = w.unit_slice(i)
        w.write_unit(i, sample_ids=ids[sl], logits=logits[sl])
    w.finalize()
    return url


@pytest.fixture
def store(tiny_data, tmp_path):
    return write_tiny_store(tmp_path / "s.zarr", tiny_data)


def flip_byte(path: Path, offset: int = 12) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_clean_store_verifies_with_dataset(store, tiny_data):
    res = run("verify", store, "--dataset", "mnist", "--data-dir", tiny_data.data_dir)
    assert res.exit_code == 0, res.output
    assert "verify: " in res.output and ": OK" in res.output
    assert "6/6 chunks decode" in res.output and "fingerprint checked against mnist/train n=96" \
        in res.output
    rep = json.loads(run("verify", store, "--json").output)
    assert rep["ok"] is True and rep["chunks"] == 6 and rep["problems"] == []


def test_flipped_bytes_name_the_chunk_and_rows(store):
    flip_byte(store / "logits" / "c" / "2" / "0")
    res = run("verify", store)
    assert res.exit_code == 1
    assert ("decode: chunk 2 (rows 32..47): logits cannot be decoded, the stored bytes are "
            "damaged (ValueError: Stored and computed checksum do not match") in res.output
    assert "Error: VerifyError: store" in res.stderr
    assert "failed verification with 1 problem(s); first: chunk 2 (rows 32..47)" in res.stderr
    rep = json.loads(run("verify", store, "--json").stdout)  # stdout stays pure JSON
    assert [(p["kind"], p["chunk"], p["rows"]) for p in rep["problems"]] == [("decode", 2,
                                                                              [32, 47])]


def test_deleted_chunk_is_reported_as_missing_object(store):
    (store / "sample_id" / "c" / "4").unlink()
    rep = verify_store(str(store))
    assert not rep.ok
    assert rep.problems[0].message == ("chunk 4 (rows 64..79): sample_id object 'sample_id/c/4' "
                                       "is missing (deleted, or never written by a crashed "
                                       "writer)")
    assert rep.problems[0].chunk == 4 and rep.problems[0].rows == (64, 79)
    assert rep.problems[-1].kind == "missing_ids"
    assert rep.problems[-1].message.startswith("16 of 96 dataset rows have no logits: sample ids "
                                               "[64, 65,")


def test_edited_attributes_claiming_another_dataset_are_caught(store, tiny_data):
    zj = store / "zarr.json"
    doc = json.loads(zj.read_text())
    real = doc["attributes"]["softtargets"]["dataset"]["fingerprint"]
    doc["attributes"]["softtargets"]["dataset"].update(
        name="fashion-mnist", fingerprint="sha256:9a042e8212e0c6a38b8ea6ba123e50651f3c16bfe012a381"
        "e6ccf24bc05fbb5f")
    zj.write_text(json.dumps(doc))
    assert verify_store(str(store)).ok  # the bytes are intact: only the dataset check sees it
    res = run("verify", store, "--dataset", "mnist", "--data-dir", tiny_data.data_dir)
    assert res.exit_code == 1
    assert ("dataset: store claims fashion-mnist/train n=96 limit=None fingerprint "
            "sha256:9a042e8212e0c6a38b8ea6ba123e50651f3c16bfe012a381e6ccf24bc05fbb5f, but the "
            f"given dataset is mnist/train n=96 limit=None fingerprint {real} (name, fingerprint "
            "differ): the store was not computed on this dataset or its attributes were edited"
            ) in res.output


def edit_attributes(store: Path, **changes) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["softtargets"].update(changes)
    (store / "zarr.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("chunk_rows", [8, 32])
def test_chunk_rows_that_disagree_with_the_arrays_are_named_not_blamed_on_rows(store,
                                                                               chunk_rows):
    edit_attributes(store, chunk_rows=chunk_rows)
    res = run("verify", store)
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0] == f"verify: {store}: FAILED (2 problems)"
    assert lines[2:4] == [f"  metadata: the metadata's chunk_rows ({chunk_rows}) disagrees with "
                          f"the chunk grid of array {name!r} (16 rows); the attributes were "
                          "edited or the store is damaged" for name in ("logits", "sample_id")]
    assert not any("missing" in line for line in lines)


def test_shard_rows_that_disagree_with_the_arrays_are_named(tiny_data, tmp_path):
    url = write_tiny_store(tmp_path / "sh.zarr", tiny_data, shard_rows=48)
    edit_attributes(url, shard_rows=32)
    assert [p.message for p in verify_store(str(url)).problems] == [
        f"the metadata's shard_rows (32) disagrees with the shard grid of array {name!r} "
        "(48 rows); the attributes were edited or the store is damaged"
        for name in ("logits", "sample_id")]


def test_duplicate_ids_and_non_finite_rows(tiny_data, tmp_path):
    ids = np.arange(96)
    ids[50] = 3
    url = write_tiny_store(tmp_path / "d.zarr", tiny_data, ids=ids)
    import zarr
    a = zarr.open_array(str(url / "logits"), mode="r+")
    block = a[80:96]
    block[5, 2] = np.nan
    a[80:96] = block
    rep = verify_store(str(url))
    msgs = [p.message for p in rep.problems]
    assert "chunk 5 (rows 80..95): 1 row(s) hold NaN/Inf logits: rows [85]" in msgs
    assert "1 sample id(s) occur more than once: ids [3] at rows [3, 50]" in msgs
    assert "1 of 96 dataset rows have no logits: sample ids [50]" in msgs


def test_sharded_store_flipped_byte_names_the_inner_chunk(tiny_data, tmp_path):
    url = write_tiny_store(tmp_path / "sh.zarr", tiny_data, shard_rows=48)
    assert verify_store(str(url)).ok
    flip_byte(url / "logits" / "c" / "1" / "0", offset=20)  # first inner chunk of shard 1
    rep = verify_store(str(url))
    assert [(p.kind, p.chunk) for p in rep.problems][:1] == [("decode", 3)]


def test_incomplete_store_fails_verify(tiny_data, tmp_path):
    split = load_split(tiny_data)
    w = StoreWriter.create(str(tmp_path / "i.zarr"), n=96, class_names=split.class_names,
                           dataset=split.identity(), teacher={}, config={}, chunk_rows=48)
    w.write_unit(0, sample_ids=np.arange(48), logits=np.zeros((48, 10)))
    rep = verify_store(str(tmp_path / "i.zarr"))
    assert [p.kind for p in rep.problems] == ["incomplete", "missing_object", "missing_object",
                                              "missing_ids"]


def test_inspect_reports_provenance_and_storage(store):
    text = run("inspect", store).output
    for needle in ("(softtargets.logits v1, dense, complete)", "96 x 10 float16, 16 rows/chunk",
                   "codecs:     bytes -> zstd(level=3) -> crc32c (compressor zstd)",
                   "objects:    logits 6/6, sample_id 6/6 present", "dataset:    mnist/train n=96",
                   "teacher:    test sha sha256:1111", "created:    "):
        assert needle in text, (needle, text)
    info = json.loads(run("inspect", "--json", store).output)
    s = info["storage"]
    assert s["arrays"]["logits"]["objects"] == 6 and s["expected_objects_per_array"] == 6
    assert s["raw_bytes"] == 96 * 10 * 2 + 96 * 8 and s["bytes"] > s["data_bytes"] > 0
    assert s["compression_ratio"] == round(s["raw_bytes"] / s["data_bytes"], 3)
