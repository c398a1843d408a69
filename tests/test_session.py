"""Crash-safe, resumable, locked stage 1: SIGKILL mid-run, --resume, refusals."""

import json
import os
import signal

import numpy as np
import pytest
import zarr
from conftest import run_cli
from stage1_helpers import chunk_files, make_teacher, stage1_args, start_stage1, wait_for

from softtargets.errors import IncompleteStoreError
from softtargets.format.store import LogitStore


@pytest.fixture
def setup(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "teacher.pt", tiny_data)
    ref = tmp_path / "ref.zarr"
    run_cli(*stage1_args(tiny_data, teacher, ref))  # uninterrupted: 12 chunks of 8 rows
    return tiny_data, teacher, ref


def n_chunks(store):
    d = store / "logits" / "c"
    return len(list(d.iterdir())) if d.exists() else 0


def kill_mid_run(tiny_data, teacher, store, *, after: int = 4):
    proc = start_stage1(stage1_args(tiny_data, teacher, store), delay=0.4)
    try:
        wait_for(lambda: n_chunks(store) >= after, what=f"{after} chunks written")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc


def test_sigkill_then_resume_is_bit_identical(setup, tmp_path):
    tiny_data, teacher, ref = setup
    store = tmp_path / "s.zarr"
    proc = kill_mid_run(tiny_data, teacher, store)
    written = n_chunks(store)
    assert 4 <= written < 12
    with pytest.raises(IncompleteStoreError, match="is incomplete"):
        LogitStore.open(str(store))
    lease = json.loads((tmp_path / "s.zarr.lock").read_text())
    assert lease["pid"] == proc.pid  # the dead writer's lease is left behind
    info = run_cli("inspect", store).output
    assert "INCOMPLETE (writer crashed or running)" in info
    assert f"objects:    logits {written}/12, sample_id " in info

    res = run_cli(*stage1_args(tiny_data, teacher, store), ok=False)  # no --resume: refused
    assert res.exit_code == 1 and "StoreExistsError" in res.output
    assert "(or --resume to continue an interrupted run)" in res.output

    before = {p: os.stat(store / "logits" / "c" / p / "0").st_mtime_ns
              for p in os.listdir(store / "logits" / "c")}
    run_cli(*stage1_args(tiny_data, teacher, store, "--resume"))
    after = {p: os.stat(store / "logits" / "c" / p / "0").st_mtime_ns
             for p in os.listdir(store / "logits" / "c")}
    # chunks complete before the kill were verified and kept, not recomputed
    kept = [p for p in before if before[p] == after[p]]
    assert len(kept) >= written - 2 and len(after) == 12
    assert chunk_files(store) == chunk_files(ref)  # every chunk object byte-identical
    a, b = LogitStore.open(str(store)).read_all(), LogitStore.open(str(ref)).read_all()
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].tobytes() == b[1].tobytes()
    assert not (tmp_path / "s.zarr.lock").exists()


def test_resume_rewrites_a_damaged_chunk(setup, tmp_path):
    tiny_data, teacher, ref = setup
    store = tmp_path / "s.zarr"
    kill_mid_run(tiny_data, teacher, store, after=3)
    raw = bytearray((store / "logits" / "c" / "1" / "0").read_bytes())
    raw[10] ^= 0xFF
    (store / "logits" / "c" / "1" / "0").write_bytes(bytes(raw))
    run_cli(*stage1_args(tiny_data, teacher, store, "--resume"))
    assert chunk_files(store) == chunk_files(ref)


def test_resume_with_other_teacher_dataset_or_settings_is_refused(setup, tmp_path):
    tiny_data, teacher, ref = setup
    other = make_teacher(tmp_path / "other.pt", tiny_data, seed=1)
    store = tmp_path / "s.zarr"
    kill_mid_run(tiny_data, teacher, store, after=2)
    cases = [
        (teacher, ["--batch-size", "64"], "its setting batch_size is 1024 but this run's is 64"),
        (teacher, ["--limit", "64"], "its dataset n is 96 but this run's is 64"),
        (teacher, ["--compressor", "blosc"],
         "its setting compressor is None but this run's is 'blosc'"),
        (other, [], "its teacher checkpoint_sha256 is 'sha256:"),
    ]
    for ckpt, change, message in cases:
        res = run_cli(*stage1_args(tiny_data, ckpt, store, "--resume", *change), ok=False)
        assert res.exit_code == 1 and "ResumeMismatchError: cannot resume store" in res.output
        assert message in res.output, (change, res.output)
    run_cli(*stage1_args(tiny_data, teacher, store, "--resume"))  # the original settings still resume
    assert chunk_files(store) == chunk_files(ref)


def test_resume_of_a_complete_store_changes_nothing(setup):
    tiny_data, teacher, ref = setup
    before = chunk_files(ref)
    meta_before = zarr.open_group(str(ref), mode="r").attrs["softtargets"]
    run_cli(*stage1_args(tiny_data, teacher, ref, "--resume"))
    assert chunk_files(ref) == before
    assert zarr.open_group(str(ref), mode="r").attrs["softtargets"] == meta_before


def test_second_writer_on_the_same_path_is_refused(setup, tmp_path):
    tiny_data, teacher, ref = setup
    store = tmp_path / "s.zarr"
    first = start_stage1(stage1_args(tiny_data, teacher, store), delay=0.4)
    try:
        wait_for(lambda: n_chunks(store) >= 1, what="the first writer to start")
        for extra in ([], ["--overwrite"], ["--resume"]):
            res = run_cli(*stage1_args(tiny_data, teacher, store, *extra), ok=False)
            assert res.exit_code == 1, extra
            assert f"StoreLockedError: store {str(store)!r} is being written by pid {first.pid}" \
                in res.output
            assert "if that process is dead, rerun with --break-lock" in res.output
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the killed writer's lease is stale (pid dead on this host): --resume takes over
    run_cli(*stage1_args(tiny_data, teacher, store, "--resume"))
    assert chunk_files(store) == chunk_files(ref)


def test_exception_mid_run_never_finalizes_and_resume_completes_shards(setup, tmp_path,
                                                                       monkeypatch):
    tiny_data, teacher, _ref = setup
    ref, store = tmp_path / "ref-sh.zarr", tmp_path / "sh.zarr"
    run_cli(*stage1_args(tiny_data, teacher, ref, "--shard-rows", 16))
    from softtargets.write import session as session_mod
    real_write = session_mod.WriteSession.write
    calls = []

    def failing_write(self, index, **kw):
        calls.append(index)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        real_write(self, index, **kw)

    monkeypatch.setattr(session_mod.WriteSession, "write", failing_write)
    res = run_cli(*stage1_args(tiny_data, teacher, store, "--shard-rows", 16), ok=False)
    assert res.exit_code == 1 and isinstance(res.exception, OSError)
    monkeypatch.setattr(session_mod.WriteSession, "write", real_write)
    assert zarr.open_group(str(store), mode="r").attrs["softtargets"]["complete"] is False
    assert not (tmp_path / "sh.zarr.lock").exists()  # an exception releases the lease
    assert len(list((store / "logits" / "c").iterdir())) == 2  # 2 of 6 shards written
    run_cli(*stage1_args(tiny_data, teacher, store, "--shard-rows", 16, "--resume"))
    assert chunk_files(store) == chunk_files(ref)
    assert LogitStore.open(str(store)).meta.complete


def test_resume_after_a_kill_before_the_arrays_existed(setup, tmp_path):
    tiny_data, teacher, ref = setup
    store = tmp_path / "s.zarr"
    store.mkdir()  # as if killed between creating the group and its arrays
    doc = json.loads((ref / "zarr.json").read_text())
    doc["attributes"]["softtargets"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(doc))
    run_cli(*stage1_args(tiny_data, teacher, store, "--resume"))
    assert chunk_files(store) == chunk_files(ref)
    assert LogitStore.open(str(store)).meta.complete


def test_resume_sweeps_temp_files_of_a_killed_write(setup, tmp_path):
    tiny_data, teacher, ref = setup
    store = tmp_path / "s.zarr"
    import shutil
    shutil.copytree(ref, store)
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["softtargets"]["complete"] = False
    (store / "zarr.json").write_text(json.dumps(doc))
    (store / "logits" / "c" / "5" / "0").rename(store / "logits" / "c" / "5" / "0.ab12.partial")
    info = run_cli("inspect", store).output
    assert "objects:    logits 11/12, sample_id 12/12 present" in info
    run_cli(*stage1_args(tiny_data, teacher, store, "--resume"))
    assert not list(store.rglob("*.partial"))
    assert chunk_files(store) == chunk_files(ref)


def test_resume_rewrites_a_swapped_unit_and_one_without_its_digest(setup, tmp_path):
    """Both units decode and hold in-range, finite values: only their digests tell."""
    tiny_data, teacher, ref = setup
    store = tmp_path / "s.zarr"
    kill_mid_run(tiny_data, teacher, store, after=4)
    c = store / "logits" / "c"
    (c / "0" / "0").rename(tmp_path / "zero")
    (c / "1" / "0").rename(c / "0" / "0")
    (tmp_path / "zero").rename(c / "1" / "0")
    (store / "digests" / "sample_id" / "c" / "2" / "0").unlink()  # unit 2 "never finished"
    run_cli(*stage1_args(tiny_data, teacher, store, "--resume"))
    assert chunk_files(store) == chunk_files(ref)
    LogitStore.open(str(store)).read_all()


def test_a_writer_whose_lease_is_taken_over_stops_with_one_line(tiny_data, tmp_path,
                                                                monkeypatch):
    import re
    from slow import slow_forwards
    teacher = make_teacher(tmp_path / "teacher.pt", tiny_data)
    store = tmp_path / "s.zarr"
    args = stage1_args(tiny_data, teacher, store, "--views", 2, "--limit", 24)
    first = start_stage1(args, delay=1.0)
    try:
        wait_for(lambda: (store / "sample_id" / "c" / "0").exists(), what="the first unit")
        with slow_forwards(0.5):  # the second writer holds the lease for a while
            run_cli(*args, "--break-lock", "--overwrite")
    finally:
        out, err = first.communicate(timeout=60)
    assert first.returncode == 1 and out == ""
    assert re.fullmatch(
        rf"Error: StoreLockedError: this writer's lease '{re.escape(str(store))}.lock' was taken "
        rf"over by pid {os.getpid()} on host '[^']+' \(started [0-9T:-]+Z, last heartbeat \d+ s "
        r"ago\); stopping so two writers never write the same store\n", err), err
    assert ": OK" in run_cli("verify", store).output


def test_a_write_into_a_store_deleted_by_the_new_lease_holder_names_the_holder(tiny_data,
                                                                               tmp_path):
    import shutil
    from softtargets.config import LogitsConfig
    from softtargets.errors import StoreLockedError
    from softtargets.write.lock import StoreLock
    from softtargets.write.session import RowArray, WriteSession
    cfg = LogitsConfig(data=tiny_data, store=str(tmp_path / "s.zarr"), chunk_rows=8)
    extra = RowArray("view_logits", (2, 10), "float16", ("row", "view", "class"))
    session = WriteSession(cfg, n=16, class_names=tuple("abcdefghij"), teacher={},
                           dataset={"name": "mnist", "split": "train", "n": 96}, arrays=(extra,))
    rows = {"sample_ids": np.arange(8), "logits": np.zeros((8, 10)),
            "rows": {"view_logits": np.zeros((8, 2, 10))}}
    with pytest.raises(StoreLockedError, match=rf"lease '.*s.zarr.lock' was taken over by pid "
                       rf"{os.getpid()} on host .*; stopping so two writers never write"):
        with session:
            session.write(0, **rows)
            StoreLock(cfg.store, break_lock=True).acquire()  # another --break-lock --overwrite,
            shutil.rmtree(cfg.store)  # caught between deleting this store and creating its own
            session.write(1, **rows)
    assert not (tmp_path / "s.zarr").exists()  # nothing written after the takeover


def test_resume_without_a_store_says_it_wrote_a_new_one(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "teacher.pt", tiny_data)
    store = tmp_path / "s.zarr"
    out = run_cli(*stage1_args(tiny_data, teacher, store, "--resume")).output
    assert out.endswith(f"-> {store} (--resume: there was no store to resume, so a new one was "
                        "written)\n") and "resumed" not in out
    out = run_cli(*stage1_args(tiny_data, teacher, store, "--resume")).output
    assert out.endswith(f"-> {store} (resumed: verified chunks kept)\n")
    assert LogitStore.open(str(store)).meta.complete


def test_views_narrow_the_default_chunk_rows(tmp_path):
    # C=5: a float16 logits row is 10 bytes, the default chunk 2 MiB / 10 = 209715 rows; with
    # V=64 a view_params row is 64 x 5 float32 = 1280 bytes, 128 logits rows: 209715 // 128
    from softtargets import LogitWriter, Views
    from softtargets.datasets import from_tensors
    data = from_tensors(np.zeros((3000, 4, 4), np.float32), np.zeros(3000, np.int64),
                        num_classes=5)
    plain = LogitWriter(str(tmp_path / "p.zarr"), dataset=data)
    views = LogitWriter(str(tmp_path / "v.zarr"), dataset=data, views=Views(count=64))
    try:
        assert plain.session.writer.meta.chunk_rows == 3000
        # at most 209715 // 128 = 1638 rows a chunk, balanced: 3000 rows in 2 chunks of 1500
        assert views.session.writer.meta.chunk_rows == 1500
    finally:
        plain.abort()
        views.abort()
