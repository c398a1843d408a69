"""verify and inspect: every store kind checks out with its real numbers; every bad input gives
its exact problem, chunk and rows."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import edit_attrs, make_dataset, run_cli
from stage1_helpers import make_teacher, stage1_args
from test_sparse_store import values as sparse_values
from test_sparse_store import write as write_sparse

from softtargets.cli import cli
from softtargets.config import DataConfig
from softtargets.datasets.idx_files import load_split
from softtargets.format.store import StoreWriter
from softtargets.tools.verify import verify_store


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
    report = verify_store(str(store))  # the chunks' digests are bound to the dataset attribute
    assert [(p.kind, p.message) for p in report.problems] == [
        ("digest", "no chunk of any array matches its digest (12 chunks): the digests are bound "
                   "to the store's `dataset` attributes, which were edited (or the whole store "
                   "was rewritten by other software)")]
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
    shape = {"sample_id": ",", "logits": ", 10"}
    assert sorted(lines[2:4]) == [f"  metadata: array {name!r} has chunks (16{shape[name]}), "
                                  f"expected ({chunk_rows}{shape[name]}) from metadata chunk_rows "
                                  f"{chunk_rows}" for name in ("logits", "sample_id")]
    assert not any("missing" in line for line in lines)


def test_shard_rows_that_disagree_with_the_arrays_are_named(tiny_data, tmp_path):
    url = write_tiny_store(tmp_path / "sh.zarr", tiny_data, shard_rows=48)
    edit_attributes(url, shard_rows=32)
    shape = {"sample_id": ",", "logits": ", 10"}
    assert sorted(p.message for p in verify_store(str(url)).problems) == [
        f"array {name!r} has shards (48{shape[name]}), expected (32{shape[name]}) from metadata "
        "shard_rows 32" for name in ("logits", "sample_id")]


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
    assert ("chunk 5 (rows 80..95): logits: 1 row(s) hold NaN/Inf (never written, deleted or "
            "damaged): rows [85]") in msgs
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
                   "codecs:     bytes -> crc32c (compressor none)",
                   "objects:    logits 6/6, sample_id 6/6 present", "dataset:    mnist/train n=96",
                   "teacher:    test sha sha256:1111", "created:    "):
        assert needle in text, (needle, text)
    info = json.loads(run("inspect", "--json", store).output)
    s = info["storage"]
    assert s["arrays"]["logits"]["objects"] == 6 and s["expected_objects_per_array"] == 6
    assert s["raw_bytes"] == 96 * 10 * 2 + 96 * 8 and s["bytes"] > s["data_bytes"] > 0
    assert s["compression_ratio"] == round(s["raw_bytes"] / s["data_bytes"], 3)


# --- every store kind: verify OK and inspect's real numbers ---

# name -> (extra teacher-logits arguments, {array: (shape, dtype, objects)}, inspect shape line);
# 96 rows in chunks of 8 (stage1_args): 12 chunks; sharded: 3 shards of 32 rows
KINDS = {
    "dense": ((), {"logits": ((96, 10), "float16", 12), "sample_id": ((96,), "int64", 12)},
              "logits:     96 x 10 float16, 8 rows/chunk"),
    "sharded": (("--shard-rows", 32), {"logits": ((96, 10), "float16", 3),
                                       "sample_id": ((96,), "int64", 3)},
                "logits:     96 x 10 float16, 8 rows/chunk, 32 rows/shard (sharding codec)"),
    "views": (("--views", 3), {"logits": ((96, 10), "float16", 12),
                               "sample_id": ((96,), "int64", 12),
                               "view_logits": ((96, 3, 10), "float16", 12),
                               "view_params": ((96, 3, 5), "float32", 12)},
              "logits:     96 x 10 float16, 8 rows/chunk"),
    "ensemble": (("--teacher", "T2"), {"logits": ((96, 10), "float16", 12),
                                       "member_logits": ((2, 96, 10), "float16", 24),
                                       "sample_id": ((96,), "int64", 12)},
                 "logits:     96 x 10 float16, 8 rows/chunk"),
    "ensemble-views": (("--teacher", "T2", "--views", 2),
                       {"logits": ((96, 10), "float16", 12),
                        "member_logits": ((2, 96, 10), "float16", 24),
                        "member_view_logits": ((2, 96, 2, 10), "float16", 24),
                        "sample_id": ((96,), "int64", 12),
                        "view_params": ((96, 2, 5), "float32", 12)},
                       "logits:     96 x 10 float16, 8 rows/chunk"),
    "combined": (("--teacher", "T2", "--combine", "arithmetic", "--store-combined-only", "-T", 4),
                 {"logits": ((96, 10), "float16", 12), "sample_id": ((96,), "int64", 12)},
                 "logits:     96 x 10 float16, 8 rows/chunk"),
    "topk": (("--topk", 4, "--temperatures", "1,4"),
             {"lse": ((96,), "float32", 12), "sample_id": ((96,), "int64", 12),
              "tail_mass": ((96, 2), "float32", 12), "topk_ids": ((96, 4), "uint8", 12),
              "topk_logits": ((96, 4), "float16", 12)},
             "topk:       96 x K=4 of C=10, float16 values, uint8 ids, 8 rows/chunk"),
    "sampled": (("--sample", 5, "--temperatures", "1,4", "--sample-temperature", 4),
                {"lse": ((96,), "float32", 12), "sample_id": ((96,), "int64", 12),
                 "sampled_counts": ((96, 5), "uint8", 12), "sampled_ids": ((96, 5), "uint8", 12),
                 "sampled_logits": ((96, 5), "float16", 12),
                 "tail_mass": ((96, 2), "float32", 12)},
                "sampled:    96 x K=5 of C=10 (5 draws at T=4, seed 0), float16 values, uint8 "
                "ids, uint8 counts, 8 rows/chunk"),
    # per-position rows (sparse_store API): 50 samples x 2 positions, 300 classes, chunks of 7
    "per-position": (None, {"lse": ((100,), "float32", 15), "position": ((100,), "int64", 15),
                            "sample_id": ((100,), "int64", 15),
                            "tail_mass": ((100, 2), "float32", 15),
                            "topk_ids": ((100, 8), "uint16", 15),
                            "topk_logits": ((100, 8), "float16", 15)},
                     "topk:       100 x K=8 of C=300, float16 values, uint16 ids, one row per "
                     "(sample_id, position), 7 rows/chunk"),
}


@pytest.fixture(scope="module")
def kind_stores(tmp_path_factory):
    """One small complete store of every kind, written once for this module (do not damage:
    copy with `copy_store`)."""
    root = tmp_path_factory.mktemp("kinds")
    make_dataset(root / "data")
    data = DataConfig(dataset="mnist", split="train", data_dir=str(root / "data"))
    t1, t2 = make_teacher(root / "t1.pt", data), make_teacher(root / "t2.pt", data, seed=1)
    for name, (extra, _arrays, _line) in KINDS.items():
        if extra is None:
            write_sparse(root / f"{name}.zarr", z=sparse_values(n=100),
                         ids=np.repeat(np.arange(50), 2), positions=np.tile(np.arange(2), 50))
            continue
        args = [t2 if a == "T2" else a for a in extra]
        run_cli(*stage1_args(data, t1, root / f"{name}.zarr", *args))
    return root


def copy_store(kind_stores, name, tmp_path):
    shutil.copytree(kind_stores / f"{name}.zarr", tmp_path / f"{name}.zarr")
    return tmp_path / f"{name}.zarr"


def chunk_bytes(store: Path, name: str) -> int:
    return sum(p.stat().st_size for p in (store / name / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_verifies_and_inspects_with_its_real_numbers(kind_stores, name):
    _extra, arrays, shape_line = KINDS[name]
    store = kind_stores / f"{name}.zarr"
    rows = arrays["sample_id"][0][0]
    chunks = math.ceil(rows / (7 if name == "per-position" else 8))
    res = run_cli("verify", store)
    rep = json.loads(run_cli("verify", "--json", store).output)
    assert rep["ok"] and rep["chunks"] == rep["chunks_ok"] == chunks
    assert sorted(rep["arrays"]) == sorted(arrays) and rep["arrays"][0] == "sample_id"
    assert res.output.splitlines()[1].startswith(
        f"  {chunks}/{chunks} chunks decode and pass the row checks of {len(arrays)} arrays (")
    info = json.loads(run_cli("inspect", "--json", store).output)["storage"]
    assert sorted(info["arrays"]) == sorted(arrays)
    for array, (shape, dtype, objects) in arrays.items():
        got = info["arrays"][array]
        assert (tuple(got["shape"]), got["dtype"]) == (shape, dtype), array
        assert got["objects"] == got["expected_objects"] == objects, array
        assert got["bytes"] == chunk_bytes(store, array) > 0, array
        assert got["raw_bytes"] == math.prod(shape) * np.dtype(dtype).itemsize, array
        assert got["codecs"][-1] == "crc32c" or "crc32c" in got["codecs"][0], array
    assert info["data_bytes"] == sum(chunk_bytes(store, a) for a in arrays)
    assert info["raw_bytes"] == sum(math.prod(s) * np.dtype(d).itemsize
                                    for s, d, _ in arrays.values())
    assert info["bytes"] == sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    text = run_cli("inspect", store).output.splitlines()
    assert text[1] == shape_line
    assert text[3] == "objects:    " + ", ".join(
        f"{a} {objects}/{objects}" for a, (_s, _d, objects) in sorted(arrays.items())) + " present"
    assert sum(line.startswith("array:      ") for line in text) == len(arrays)


# --- damage of sparse, per-position and ensemble stores: the rule, chunk and rows named ---

def messages(url, **kw):
    return [(p.kind, p.message) for p in verify_store(str(url), **kw).problems]


def set_rows(url, name, rows, edit):
    """Rewrite rows `rows` of array `name` with edit(values) (valid chunks, invalid content)."""
    a = zarr.open_array(str(url / name), mode="r+")
    values = a[rows]
    edit(values)
    a[rows] = values


def test_topk_rules_name_the_array_chunk_and_rows(tmp_path):
    write_sparse(tmp_path / "t.zarr", ids=np.arange(30))  # 30 rows, K=8 of 300, chunks of 7
    url = tmp_path / "t.zarr"
    set_rows(url, "topk_ids", slice(0, 7), lambda v: v.__setitem__((3, 1), v[3, 0]))
    set_rows(url, "topk_ids", slice(7, 14), lambda v: v.__setitem__((1, 0), 300))
    set_rows(url, "topk_logits", slice(14, 21), lambda v: v.__setitem__((2, slice(0, 2)),
                                                                          v[2, [1, 0]]))
    set_rows(url, "lse", slice(21, 28), lambda v: v.__setitem__(0, np.inf))
    set_rows(url, "tail_mass", slice(28, 30), lambda v: v.__setitem__((1, 1), 1.5))
    assert messages(url) == [
        ("class_id", "chunk 0 (rows 0..6): topk_ids: 1 row(s) list a class id twice: rows [3]"),
        ("class_id", "chunk 1 (rows 7..13): topk_ids: 1 row(s) have class ids >= num_classes "
                     "(300): rows [8]"),
        ("order", "chunk 2 (rows 14..20): topk_logits: 1 row(s) hold values not sorted in "
                  "descending order: rows [16]"),
        ("non_finite", "chunk 3 (rows 21..27): lse: 1 row(s) hold a NaN/Inf lse (never written, "
                       "deleted or damaged): rows [21]"),
        ("tail_mass", "chunk 4 (rows 28..29): tail_mass: 1 row(s) hold tail masses that are "
                      "NaN/Inf or outside [0, 1] (never written, deleted or damaged): rows [29]"),
        ("missing_ids", "20 of 50 dataset rows have no logits: sample ids [30, 31, 32, 33, 34, "
                        "35, 36, 37, 38, 39] and 10 more")]
    assert verify_store(str(url), allow_subset=True).chunks_ok == 0


def test_sampled_rules_check_counts_order_and_padding(tmp_path):
    write_sparse(tmp_path / "s.zarr", kind="sampled", ids=np.arange(30))
    url = tmp_path / "s.zarr"
    counts = zarr.open_array(str(url / "sampled_counts"), mode="r")[:]  # (30, 8)
    padded = int(np.flatnonzero((counts == 0).any(axis=1))[0])  # a row with fewer than 8 ids
    assert ((counts > 0).sum(axis=1) >= 2).all()
    set_rows(url, "sampled_counts", slice(0, 1), lambda v: v.__setitem__((0, 0), v[0, 0] + 1))
    set_rows(url, "sampled_ids", slice(7, 8), lambda v: v.__setitem__((0, slice(0, 2)),
                                                                        v[0, [1, 0]]))
    set_rows(url, "sampled_ids", slice(padded, padded + 1), lambda v: v.__setitem__((0, 7), 5))
    set_rows(url, "sampled_logits", slice(14, 15), lambda v: v.__setitem__((0, 0), np.nan))
    got = messages(url, allow_subset=True)
    chunk = f"chunk {padded // 7} (rows {padded // 7 * 7}..{padded // 7 * 7 + 6})"
    assert ("counts", "chunk 0 (rows 0..6): sampled_counts: 1 row(s) have counts not summing to "
                      "draws (8) (never written, deleted or damaged): rows [0]") in got
    assert ("order", "chunk 1 (rows 7..13): sampled_ids: 1 row(s) hold drawn ids not strictly "
                     "increasing: rows [7]") in got
    assert ("padding", f"{chunk}: sampled_ids: 1 row(s) have padding entries (count 0) with a "
                       f"nonzero id: rows [{padded}]") in got
    assert ("non_finite", "chunk 2 (rows 14..20): sampled_logits: 1 row(s) hold NaN/Inf values "
                          "of drawn ids (never written, deleted or damaged): rows [14]") in got
    assert len(got) == 4


def test_per_position_rules_and_coverage_per_sample(kind_stores, tmp_path):
    url = copy_store(kind_stores, "per-position", tmp_path)  # row r: sample r // 2, position r % 2
    set_rows(url, "position", slice(0, 7), lambda v: v.__setitem__(1, 0))  # (0, 0) twice
    set_rows(url, "position", slice(7, 14), lambda v: v.__setitem__(3, -3))
    set_rows(url, "sample_id", slice(98, 100), lambda v: v.__setitem__(slice(None), 48))
    set_rows(url, "position", slice(98, 100), lambda v: v.__setitem__(slice(None), [2, 3]))
    edited = ("does not match its digest: the chunk was moved, swapped or duplicated, copied "
              "from another store, or edited; restore the store or rerun stage 1")
    assert messages(url) == [
        ("digest", f"chunk 0 (rows 0..6) of 'position' {edited}"),
        ("position", "chunk 1 (rows 7..13): position: 1 row(s) have negative positions (-1 = "
                     "never written): rows [10]"),
        ("digest", f"chunk 14 (rows 98..99) of 'sample_id' {edited}"),
        ("digest", f"chunk 14 (rows 98..99) of 'position' {edited}"),
        ("duplicate", "1 (sample_id, position) pair(s) occur more than once: [(0, 0)] at rows "
                      "[0, 1]"),
        ("missing_ids", "1 of 50 dataset rows have no logits: sample ids [49]")]
    assert [k for k, _ in messages(url, allow_subset=True)] == [
        "digest", "position", "digest", "digest", "duplicate"]


def test_ensemble_member_objects_and_values_are_checked(kind_stores, tmp_path):
    url = copy_store(kind_stores, "ensemble", tmp_path)
    (url / "member_logits" / "c" / "1" / "2" / "0").unlink()
    a = zarr.open_array(str(url / "member_logits"), mode="r+")
    block = a[0:1, 40:48]
    block[0, 3, 7] = np.nan
    a[0:1, 40:48] = block
    assert messages(url) == [
        ("missing_object", "chunk 2 (rows 16..23): member_logits object 'member_logits/c/1/2/0' "
                           "is missing (deleted, or never written by a crashed writer)"),
        ("non_finite", "chunk 5 (rows 40..47): member_logits: 1 row(s) hold NaN/Inf (never "
                       "written, deleted or damaged): rows [43]")]


def test_missing_sparse_object_is_named(kind_stores, tmp_path):
    url = copy_store(kind_stores, "topk", tmp_path)
    (url / "tail_mass" / "c" / "3" / "0").unlink()
    rep = verify_store(str(url))
    assert [(p.kind, p.chunk, p.message) for p in rep.problems] == [
        ("missing_object", 3, "chunk 3 (rows 24..31): tail_mass object 'tail_mass/c/3/0' is "
                              "missing (deleted, or never written by a crashed writer)")]
    assert (rep.chunks, rep.chunks_ok) == (12, 11)


# --- metadata that lies, and paths that are not stores, through the CLI ---

def test_verify_reports_every_metadata_problem_and_exits_1(kind_stores, tmp_path):
    url = copy_store(kind_stores, "dense", tmp_path)
    edit_attrs(url, complete=1, chunk_rows=0)
    res = run("verify", url)
    assert res.exit_code == 1
    assert res.stdout.splitlines() == [
        f"verify: {url}: FAILED (2 problems)",
        "  no chunk checked until the metadata problems below are fixed; dense store, 96 rows x "
        "10 classes; dataset mnist/train n=96",
        "  metadata: metadata key 'complete' is 1, expected true or false (a JSON boolean)",
        "  metadata: metadata key 'chunk_rows' is 0, expected a positive integer"]
    assert res.stderr == (f"Error: VerifyError: store {str(url)!r} failed verification with 2 "
                          "problem(s); first: metadata key 'complete' is 1, expected true or "
                          "false (a JSON boolean)\n")
    res = run("student", "--store", url, "--epochs", 1)  # a reader: the first problem, one line
    assert res.exit_code == 1 and res.output == (
        f"Error: StoreMetadataError: store {str(url)!r}: metadata key 'complete' is 1, expected "
        "true or false (a JSON boolean) (and 1 more metadata problem(s); `softtargets verify` "
        "lists them)\n")


def test_verify_of_an_array_inside_a_store_names_the_store(kind_stores):
    url = str(kind_stores / "sharded.zarr")
    res = run("verify", f"{url}/logits")
    assert res.exit_code == 1 and res.output == (
        f"Error: StoreError: {url + '/logits'!r} is the array 'logits' inside the store {url!r}, "
        f"not a store; pass the store path {url!r}\n")
