"""Attacks a receiving team could meet: whole, valid chunks in the wrong place.

Each attack swaps, duplicates or transplants storage objects of a finished store (crc32c still
passes for every one of them) and asserts the exact refusal, for every store kind, in memory,
streamed and through the CLI.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import make_dataset, run_cli
from stage1_helpers import make_teacher
from softtargets.format import ensemble
from softtargets.config import DataConfig
from softtargets.datasets.idx_files import load_split
from softtargets.errors import StoreError
from softtargets.format.sparse_store import SparseStore
from softtargets.format.store import LogitStore
from softtargets.read.order import ChunkReader
from softtargets.tools.verify import verify_store
from softtargets.read.view_loader import ViewData

ROWS = 16  # chunk rows: 96 train rows -> 6 chunks, 48 test rows -> 3
KINDS = {  # kind -> (extra stage-1 flags, the array whose chunks are attacked, member)
    "dense": ((), "logits", None),
    "sharded": (("--shard-rows", 32), "logits", None),
    "ensemble": (("--teacher", "{t2}"), "member_logits", 1),
    "views": (("--views", 3, "--augment", "shift=1"), "view_logits", None),
    "topk": (("--topk", 3), "topk_logits", None),
    "sampled": (("--sample", 4), "sampled_logits", None),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """One finished store of every kind on the train split, and one of the test split each."""
    root = tmp_path_factory.mktemp("tamper")
    make_dataset(root / "data")
    data = DataConfig(dataset="mnist", split="train", data_dir=str(root / "data"))
    t1 = make_teacher(root / "t1.pt", data, seed=0)
    t2 = make_teacher(root / "t2.pt", data, seed=1)
    out = {"data": root / "data"}
    for kind, (flags, _, _) in KINDS.items():
        for split in ("train", "test"):
            store = root / f"{kind}-{split}.zarr"
            extra = [str(f).format(t2=t2) for f in flags]
            run_cli("teacher-logits", "--dataset", "mnist", "--data-dir", root / "data",
                    "--split", split, "--teacher", t1, *extra, "--store", store,
                    "--chunk-rows", ROWS, "--device", "cpu", "--quiet")
            out[f"{kind}-{split}"] = store
    return out


def copy(stores: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    dest = tmp_path / f"{kind}.zarr"
    shutil.copytree(stores[f"{kind}-train"], dest)
    return dest


def object_path(store: Path, name: str, row: int, member: int | None = None) -> Path:
    """The file holding `row` of array `name` (a chunk, or its shard)."""
    array = zarr.open_array(str(store / name), mode="r")
    rows = array.shards[0 if member is None else 1] if array.shards else \
        array.chunks[0 if member is None else 1]
    lead = () if member is None else (member,)
    coords = (*lead, row // rows) + (0,) * (array.ndim - len(lead) - 1)
    return store / name / array.metadata.encode_chunk_key(coords)


def swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def read_everything(store: Path, kind: str, data_dir: Path) -> None:
    """Every in-memory read path of this kind of store, whole store."""
    if kind in ("topk", "sampled"):
        SparseStore.open(str(store)).read_all()
    elif kind == "views":
        ViewData(load_split(DataConfig(dataset="mnist", data_dir=str(data_dir))), str(store))
    elif kind == "ensemble":
        ensemble.open_targets(LogitStore.open(str(store)), rule="arithmetic",
                              temperature=2.0).read_all()
    else:
        LogitStore.open(str(store)).read_all()


def stream_everything(store: Path, kind: str) -> None:
    """The streaming reader (dense kinds): decode every chunk of every streamed array."""
    names = {"views": ("logits", "view_logits", "view_params")}.get(kind, ("logits",))
    reader = ChunkReader(str(store), names)
    for i in range(reader.store.num_chunks):
        ids = np.empty(ROWS, np.int64)
        outs = [np.empty((ROWS, *reader.row_layout(n)[0]), reader.row_layout(n)[1])
                for n in names]
        reader.read_into(i, ids, *outs)


def refused(store: Path, kind: str, data_dir: Path, pattern: str) -> None:
    """Refused by every reader of the kind, and reported by verify."""
    report = verify_store(str(store))
    # verify names the digest, or an earlier rule that the moved chunk breaks (a missing object,
    # sampled padding that no longer lines up with its counts) for the same chunk
    chunks = {int(c) for c in re.findall(r"chunk (\d+)", pattern)}
    assert any(re.search(pattern, p.message) or p.chunk in chunks for p in report.problems), \
        report.text()
    with pytest.raises(StoreError, match=pattern):
        read_everything(store, kind, data_dir)
    if kind not in ("topk", "sampled", "ensemble"):
        with pytest.raises(StoreError, match=pattern):
            stream_everything(store, kind)


def mismatch(name: str, chunk: int, member: int | None = None) -> str:
    who = f"'{name}'" if member is None else f"'{name}' \\(member {member}\\)"
    first = chunk * ROWS
    return (rf"chunk {chunk} \(rows {first}\.\.{first + ROWS - 1}\) of {who} does not match "
            "its digest")


@pytest.mark.parametrize("kind", list(KINDS))
def test_untouched_stores_read_everywhere(stores, kind):
    assert verify_store(str(stores[f"{kind}-train"])).ok
    read_everything(stores[f"{kind}-train"], kind, stores["data"])
    if kind not in ("topk", "sampled", "ensemble"):
        stream_everything(stores[f"{kind}-train"], kind)


@pytest.mark.parametrize("kind", list(KINDS))
def test_swapped_value_chunks_are_refused(stores, kind, tmp_path):
    store = copy(stores, kind, tmp_path)
    _, name, member = KINDS[kind]
    unit = 2 * ROWS if kind == "sharded" else ROWS  # swap objects 0 and 1 (chunks or shards)
    swap(object_path(store, name, 0, member), object_path(store, name, unit, member))
    refused(store, kind, stores["data"], mismatch(name, 0, member))


@pytest.mark.parametrize("kind", list(KINDS))
def test_swapped_sample_id_chunks_are_refused(stores, kind, tmp_path):
    store = copy(stores, kind, tmp_path)
    unit = 2 * ROWS if kind == "sharded" else ROWS
    swap(object_path(store, "sample_id", 0), object_path(store, "sample_id", unit))
    # the row checks see nothing wrong (ids in range, finite values): the digest does
    refused(store, kind, stores["data"], mismatch("sample_id", 0))


@pytest.mark.parametrize("kind", list(KINDS))
def test_duplicated_chunk_is_refused(stores, kind, tmp_path):
    store = copy(stores, kind, tmp_path)
    _, name, member = KINDS[kind]
    unit = 2 * ROWS if kind == "sharded" else ROWS
    shutil.copyfile(object_path(store, name, 0, member), object_path(store, name, unit, member))
    chunk = 2 if kind == "sharded" else 1
    refused(store, kind, stores["data"], mismatch(name, chunk, member))


@pytest.mark.parametrize("kind", list(KINDS))
def test_chunks_of_a_test_split_store_are_refused(stores, kind, tmp_path):
    """The whole first unit of every array, digests included, from the test-split store: ids
    0..15 and valid values, so only the digests' binding to the dataset catches it."""
    store = copy(stores, kind, tmp_path)
    foreign = stores[f"{kind}-test"]
    for path in sorted(foreign.rglob("zarr.json")):
        meta = json.loads(path.read_text())
        if meta["node_type"] != "array" or meta["dimension_names"][0] == "member":
            continue  # groups; the member arrays are covered by the other attacks
        name = str(path.parent.relative_to(foreign))
        src = object_path(foreign, name, 0)
        shutil.copyfile(src, object_path(store, name, 0))
    refused(store, kind, stores["data"], mismatch("sample_id", 0))


def test_deleted_chunk_with_zero_fill_value_is_refused(stores, tmp_path):
    """A deleted chunk reads as the fill value; edited to 0 it would pass the NaN check. The
    metadata check refuses the fill value at open, before any chunk is read."""
    store = copy(stores, "dense", tmp_path)
    meta = store / "logits" / "zarr.json"
    meta.write_text(meta.read_text().replace('"fill_value": "NaN"', '"fill_value": 0.0'))
    object_path(store, "logits", ROWS).unlink()
    refused(store, "dense", stores["data"], r"array 'logits' has fill_value 0\.0, expected nan: a deleted chunk reads as the "
                                           "fill value, which must fail the row checks")


def test_student_refuses_a_swapped_store_in_memory_and_streamed(stores, tmp_path):
    store = copy(stores, "dense", tmp_path)
    swap(object_path(store, "logits", 0), object_path(store, "logits", 2 * ROWS))
    for loader in ("memory", "stream"):
        res = run_cli("student", "--dataset", "mnist", "--data-dir", stores["data"], "--store",
                      store, "--epochs", 1, "--quiet", "--loader", loader, "--out", tmp_path / loader,
                      ok=False)
        assert res.exit_code == 1
        assert res.output.count("\n") == 1, res.output
        # the streamed order is shuffled: either chunk of the pair may be met first
        assert re.search(rf"^Error: StoreError: .*({mismatch('logits', 0)}|"
                         rf"{mismatch('logits', 2)})", res.output), res.output
