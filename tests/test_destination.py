"""--overwrite deletes only a softtargets store's own objects; everything else is refused intact."""

import json
import re
from pathlib import Path

import pytest
import zarr
from conftest import run_cli
from stage1_helpers import make_teacher, stage1_args
from test_store import GOLDEN_LOGITS, write_store

from softtargets.augment import views
from softtargets.format import ensemble

from softtargets.format import sparse_store, store as st
from softtargets.format.destination import delete_array, is_format_key, sweep_partial_files
from softtargets.errors import ForeignDataError, StoreWriteError


def snapshot(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `path` (or of `path` itself)."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_a_regular_file_is_refused_and_kept(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    notes = tmp_path / "f.txt"
    notes.write_text("my notes")
    res = run_cli(*stage1_args(tiny_data, teacher, notes, "--overwrite"), ok=False)
    assert res.exit_code == 1
    assert res.output == (f"Error: ForeignDataError: refusing to overwrite '{notes}': it is a "
                          "file, not a softtargets store; move it or choose another --store\n")
    assert notes.read_text() == "my notes"


def test_foreign_zarr_group_and_array_are_refused_and_kept(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", attributes={"owner": "me"})
    group.create_array("weights", shape=(4,), dtype="int32")[:] = 7
    zarr.create_array(str(tmp_path / "a.zarr"), shape=(3,), dtype="int8")[:] = 1
    before = {name: snapshot(tmp_path / name) for name in ("g.zarr", "a.zarr")}
    with pytest.raises(ForeignDataError, match=r"g.zarr': it is a Zarr group but not a "
                       r"softtargets store \(attributes\['softtargets'\]\['format'\] is not "
                       r"'softtargets.logits'\); move it"):
        write_store(tmp_path / "g.zarr", overwrite=True)
    with pytest.raises(ForeignDataError, match=r"a.zarr': it is a Zarr array, not a softtargets "
                       "store; move it"):
        write_store(tmp_path / "a.zarr", overwrite=True)
    assert {name: snapshot(tmp_path / name) for name in before} == before


def test_a_store_holding_user_files_is_refused_and_kept(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    (path / "notes.txt").write_text("mine")
    (path / "logits" / "c" / "mine").mkdir()
    (path / "logits" / "c" / "mine" / "a.npy").write_bytes(b"x")
    (path / "logits" / "c" / "0" / "0.bak").write_bytes(b"y")
    before = snapshot(path)
    with pytest.raises(ForeignDataError, match=r"it holds 'logits/c/0/0.bak', 'logits/c/mine', "
                       r"'notes.txt', which softtargets did not create; move it or choose"):
        write_store(path, overwrite=True)
    assert snapshot(path) == before
    assert st.LogitStore.open(str(path)).read_all()[1].tolist() == GOLDEN_LOGITS.tolist()


def test_an_incomplete_store_and_its_temp_files_are_replaced(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path, finalize=False)
    (path / "logits" / "c" / "0" / "0.0123abcd.partial").write_bytes(b"half")
    (path / "zarr.9f9f.partial").write_bytes(b"half")
    write_store(path, logits=GOLDEN_LOGITS * 0, overwrite=True)
    assert not list(path.rglob("*.partial"))
    assert not st.LogitStore.open(str(path)).read_all()[1].any()


@pytest.mark.parametrize("key,ok", [
    ("zarr.json", True), ("logits/zarr.json", True), ("logits/c/3/0", True),
    ("sample_id/c/12", True), ("member_view_logits/c/0/2/0/0", True),
    ("view_params/c/1/0/0.1a2b.partial", True), ("zarr.abc123.partial", True),
    ("notes.txt", False), ("logits/notes.txt", False), ("logits/c/0/x", False),
    ("mine/zarr.json", False), ("logits/c", False), ("notes.partial", False),
    ("digests/zarr.json", True), ("digests/logits/zarr.json", True),
    ("digests/member_logits/c/1/2/0", True), ("digests/notes.txt", False),
    ("digests/mine/c/0/0", False), ("digests/digests/zarr.json", False),
])
def test_format_keys(key, ok):
    assert is_format_key(key) is ok


def test_store_arrays_name_every_array_of_the_format():
    names = {st.LOGITS, st.SAMPLE_ID, ensemble.MEMBER_LOGITS, views.VIEW_LOGITS,
             views.VIEW_PARAMS, views.MEMBER_VIEW_LOGITS, sparse_store.POSITION,
             sparse_store.LSE, sparse_store.TAIL}
    for kind in sparse_store.KINDS:
        names |= {n for n in sparse_store.array_names(kind) if n}
    assert names <= set(st.STORE_ARRAYS)
    assert len(st.STORE_ARRAYS) == len(set(st.STORE_ARRAYS)) == 14


def test_delete_array_deletes_its_objects_only(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    group = zarr.open_group(str(path), mode="r+")
    st.add_row_array(group, ensemble.MEMBER_LOGITS, n=5, row_shape=(3,), chunk_rows=2,
                     dtype="float16", codecs=st.compressor_codecs("zstd"), fill_value=0.0,
                     dimension_names=("member", "row", "class"), members=2)[:] = 1
    delete_array(str(path), ensemble.MEMBER_LOGITS)  # with its digests
    assert sorted(p.name for p in path.iterdir()) == ["digests", "logits", "sample_id",
                                                      "zarr.json"]
    assert sorted(p.name for p in (path / "digests").iterdir()) == ["logits", "sample_id",
                                                                   "zarr.json"]
    (path / "logits" / "keep.txt").write_text("mine")
    with pytest.raises(ForeignDataError, match=r"refusing to delete array 'logits' of '.*s.zarr': "
                       r"it holds 'logits/keep.txt', which softtargets did not create"):
        delete_array(str(path), st.LOGITS)
    assert (path / "logits" / "zarr.json").is_file() and (path / "logits" / "keep.txt").is_file()


def test_sweep_deletes_only_the_writers_temp_files(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    (path / "logits" / "c" / "1" / "0.77aa.partial").write_bytes(b"half")
    (path / "notes.partial").write_text("mine")
    assert sweep_partial_files(str(path)) == 1
    assert (path / "notes.partial").read_text() == "mine"
    assert not (path / "logits" / "c" / "1" / "0.77aa.partial").exists()


def test_a_foreign_lease_file_is_refused_and_kept(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    lease = tmp_path / "s.zarr.lock"
    lease.write_text(json.dumps({"mine": True}))
    res = run_cli(*stage1_args(tiny_data, teacher, tmp_path / "s.zarr", "--break-lock"), ok=False)
    assert res.exit_code == 1
    assert res.output == (
        f"Error: ForeignDataError: refusing to take the lease '{lease}' of store "
        f"'{tmp_path / 's.zarr'}': that path holds something that is not a softtargets lease "
        "(JSON with pid, host, token), which softtargets did not create; move it or choose "
        "another --store\n")
    assert json.loads(lease.read_text()) == {"mine": True}


@pytest.mark.parametrize("where", ["below-a-file", "proc", "sys"])
def test_unwritable_destinations_give_one_line(tiny_data, tmp_path, where):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    (tmp_path / "file.txt").write_text("x")
    store, why = {
        "below-a-file": (tmp_path / "file.txt" / "s.zarr",
                         re.escape(f"'{tmp_path / 'file.txt'}' is a file, not a directory")),
        "proc": (Path("/proc/x.zarr"), "No such file or directory in '/proc'"),
        "sys": (Path("/sys/x.zarr"), "(Permission denied|Operation not permitted) in '/sys'"),
    }[where]
    line = (f"cannot write store '{re.escape(str(store))}': {why}; choose a --store in a "
            "writable directory")
    for extra in ((), ("--topk", 3)):  # through the lease (dense) and without one (sparse)
        res = run_cli(*stage1_args(tiny_data, teacher, store, *extra), ok=False)
        assert res.exit_code == 1
        assert re.fullmatch(f"Error: StoreWriteError: {line}\n", res.output), res.output
    with pytest.raises(StoreWriteError, match=line):
        write_store(store)
    assert (tmp_path / "file.txt").read_text() == "x"
