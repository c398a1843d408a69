"""Stage 1 for ensembles and MC dropout through the CLI, and every bad input they refuse."""

import json

import numpy as np
import pytest
import torch

from softtargets.config import DataConfig
from softtargets.datasets.idx_files import load_split
from softtargets.write.passes import mc_seed
from softtargets.recipes.hinton2015.models import MLP, ModelSpec, save_checkpoint
from softtargets.format.store import LogitStore

from conftest import run_cli as run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic data and teachers: two good ones, one with 5 classes, one with reordered names,
    one producing NaN, one without dropout."""
    from conftest import make_dataset
    root = tmp_path_factory.mktemp("members")
    make_dataset(root / "data")
    data = DataConfig(dataset="mnist", split="train", data_dir=str(root / "data"))
    split = load_split(data)
    names = split.class_names

    def save(name, *, seed=0, classes=10, class_names=names, dropout=0.3, nan=False):
        torch.manual_seed(seed)
        spec = ModelSpec(hidden=(16,), classes=classes, dropout=dropout)
        model = MLP(spec)
        if nan:
            with torch.no_grad():
                model.net[-1].bias[3] = float("nan")
        save_checkpoint(root / name, model=model, spec=spec, config={}, dataset=split.identity(),
                        class_names=class_names, metrics={})
        return root / name

    paths = {"a": save("a.pt", seed=0), "b": save("b.pt", seed=1),
             "five": save("five.pt", classes=5, class_names=names[:5]),
             "renamed": save("renamed.pt", class_names=names[::-1]),
             "nan": save("nan.pt", nan=True), "plain": save("plain.pt", dropout=0.0)}
    args = ["--dataset", "mnist", "--data-dir", data.data_dir, "--quiet", "--chunk-rows", 40]
    return root, args, paths


def test_two_teachers_via_cli_and_spec_file(setup, tmp_path):
    root, args, p = setup
    out = run("teacher-logits", *args, "--teacher", p["a"], "--teacher", p["b"],
              "--store", tmp_path / "e.zarr").output
    assert "96 x 10 float16 logits from 2 members" in out
    spec = tmp_path / "ens.json"
    spec.write_text(json.dumps({"teachers": [str(p["a"]), str(p["b"])]}))
    run("teacher-logits", *args, "--ensemble", spec, "--store", tmp_path / "s.zarr")
    a, b = LogitStore.open(str(tmp_path / "e.zarr")), LogitStore.open(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(a.group["member_logits"][:], b.group["member_logits"][:])
    members = a.meta.extra["ensemble"]["members"]
    assert [m["checkpoint"] for m in members] == [str(p["a"]), str(p["b"])]
    assert members[0]["kind"] == "softtargets" and members[0]["arch"] == "mlp 784-16-10"
    assert "members:    2 in member_logits [2, 96, 10] chunks [1, 40, 10], default rule " \
           "arithmetic" in run("inspect", tmp_path / "e.zarr").output
    info = json.loads(run("inspect", "--json", tmp_path / "e.zarr").output)
    assert info["ensemble"]["chunks"] == [1, 40, 10]


def test_mc_dropout_is_seeded_and_stored_as_members(setup, tmp_path):
    root, args, p = setup
    for name in ("m1.zarr", "m2.zarr"):
        run("teacher-logits", *args, "--teacher", p["a"], "--mc-dropout", 3, "--mc-seed", 7,
            "--store", tmp_path / name)
    s1, s2 = (LogitStore.open(str(tmp_path / n)) for n in ("m1.zarr", "m2.zarr"))
    z1, z2 = s1.group["member_logits"][:], s2.group["member_logits"][:]
    assert z1.shape == (3, 96, 10)
    np.testing.assert_array_equal(z1, z2)  # same seed, same masks
    assert not np.array_equal(z1[0], z1[1])  # passes differ
    members = s1.meta.extra["ensemble"]["members"]
    assert [m["mc_pass"] for m in members] == [0, 1, 2] and members[0]["mc_seed"] == 7
    assert mc_seed(7, 0, 0) != mc_seed(7, 1, 0) != mc_seed(7, 0, 1)


def test_mc_dropout_combined_only_and_student(setup, tmp_path):
    root, args, p = setup
    run("teacher-logits", *args, "--teacher", p["a"], "--mc-dropout", 2, "--combine",
        "arithmetic", "--store-combined-only", "-T", 4, "--store", tmp_path / "c.zarr")
    store = LogitStore.open(str(tmp_path / "c.zarr"))
    assert "member_logits" not in store.group and store.meta.version == 2
    assert "combined:   arithmetic mean of 2 members, valid at T=4 only" in \
        run("inspect", tmp_path / "c.zarr").output
    student = ["student", "--dataset", "mnist", "--data-dir", args[3], "--hidden", "8",
               "--epochs", 1, "--quiet", "--store", tmp_path / "c.zarr"]
    run(*student, "-T", 4, "--out", tmp_path / "ok")
    res = run(*student, "-T", 2, "--out", tmp_path / "bad", ok=False)
    assert res.exit_code == 1
    assert "ConfigError" in res.output and "at T=4 only" in res.output
    res = run(*student, "-T", 4, "--combine", "median", "--out", tmp_path / "bad", ok=False)
    assert res.exit_code == 1 and "unknown combination rule 'median'" in res.output


def test_one_mc_pass_is_still_stochastic(setup, tmp_path):
    root, args, p = setup
    run("teacher-logits", *args, "--teacher", p["a"], "--mc-dropout", 1, "--store",
        tmp_path / "one.zarr")
    run("teacher-logits", *args, "--teacher", p["a"], "--store", tmp_path / "det.zarr")
    one, det = (LogitStore.open(str(tmp_path / n)) for n in ("one.zarr", "det.zarr"))
    assert one.group["member_logits"].shape == (1, 96, 10)
    assert not np.array_equal(one.read_all()[1], det.read_all()[1])


def test_mc_dropout_needs_dropout_layers(setup, tmp_path):
    root, args, p = setup
    res = run("teacher-logits", *args, "--teacher", p["plain"], "--mc-dropout", 2,
              "--store", tmp_path / "x.zarr", ok=False)
    assert res.exit_code == 1 and "has no dropout layers" in res.output


@pytest.mark.parametrize("other, message", [
    ("five", r"ensemble members disagree: 'member teacher 2 \(.*five.pt\)' predicts 5 classes"),
    ("renamed", r"ensemble members disagree: .*renamed.pt.* predicts 10 classes \['9', '8'"),
])
def test_members_must_agree_on_classes(setup, tmp_path, other, message):
    root, args, p = setup
    res = run("teacher-logits", *args, "--teacher", p["a"], "--teacher", p[other],
              "--store", tmp_path / "x.zarr", ok=False)
    assert res.exit_code == 1 and "CheckpointError" in res.output
    import re
    assert re.search(message, res.output), res.output
    assert not (tmp_path / "x.zarr").exists()  # refused before anything was written


def test_member_with_nan_is_refused_by_name(setup, tmp_path):
    root, args, p = setup
    res = run("teacher-logits", *args, "--teacher", p["a"], "--teacher", p["nan"],
              "--store", tmp_path / "x.zarr", ok=False)
    assert res.exit_code == 1 and "LogitValueError" in res.output
    assert "ensemble member 2: member teacher 2" in res.output and "nan.pt" in res.output
    meta = json.loads((tmp_path / "x.zarr" / "zarr.json").read_text())
    assert meta["attributes"]["softtargets"]["complete"] is False  # never finalized


def test_unknown_rule_and_bad_spec(setup, tmp_path):
    root, args, p = setup
    res = run("teacher-logits", *args, "--teacher", p["a"], "--teacher", p["b"], "--combine",
              "median", "--store", tmp_path / "x.zarr", ok=False)
    assert res.exit_code == 1 and "unknown combination rule 'median'" in res.output
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"teachers": [str(p["a"])], "members": 3}))
    res = run("teacher-logits", *args, "--ensemble", spec, "--store", tmp_path / "x.zarr",
              ok=False)
    assert res.exit_code == 1 and "unknown keys ['members']" in res.output


# --- one write session: --resume after SIGKILL and torchrun ranks ------------------------------

MEMBER_RUNS = {"ensemble": lambda t: ["--teacher", t[1]],
               "mc-dropout": lambda t: ["--mc-dropout", 2, "--mc-seed", 5]}
VIEWS = {"ensemble-views": lambda t: ["--teacher", t[1], "--views", 2, "--augment",
                                      "shift=1,flip=1"]}


@pytest.fixture
def member_setup(tiny_data, tmp_path):
    """A dropout teacher and a second teacher; stage-1 args of an ensemble or MC run."""
    from stage1_helpers import make_teacher, stage1_args
    teachers = [make_teacher(tmp_path / f"t{i}.pt", tiny_data, seed=i, dropout=0.3)
                for i in range(2)]

    def args(kind, store, *extra):
        runs = {**MEMBER_RUNS, **VIEWS}
        return stage1_args(tiny_data, teachers[0], store, *runs[kind](teachers), *extra)
    return args


def member_chunks(store):
    d = store / "member_logits" / "c"
    return sum(1 for p in d.rglob("*") if p.is_file()) if d.exists() else 0


@pytest.mark.parametrize("kind", list(MEMBER_RUNS))
def test_members_sigkill_then_resume_is_bit_identical(member_setup, tmp_path, kind):
    import signal
    from stage1_helpers import chunk_files, start_stage1, wait_for
    ref, store = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    run(*member_setup(kind, ref))  # uninterrupted: 2 members x 12 chunks of 8 rows
    proc = start_stage1(member_setup(kind, store), delay=0.15)
    try:  # killed while the second member writes its chunks
        wait_for(lambda: member_chunks(store) >= 15, what="15 member chunks written")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = member_chunks(store)
    assert 15 <= written < 24 and not (store / "logits" / "c").exists()
    res = run(*member_setup(kind, store), ok=False)  # no --resume: refused
    assert res.exit_code == 1 and "(or --resume to continue an interrupted run)" in res.output
    before = {p: p.stat().st_mtime_ns for p in (store / "member_logits" / "c").rglob("0")}
    run(*member_setup(kind, store, "--resume"))
    after = {p: p.stat().st_mtime_ns for p in (store / "member_logits" / "c").rglob("0")}
    kept = [p for p in before if after.get(p) == before[p]]
    assert len(kept) >= written - 2 and member_chunks(store) == 24  # verified chunks kept
    assert chunk_files(store) == chunk_files(ref)  # every chunk object byte-identical
    a, b = LogitStore.open(str(store)), LogitStore.open(str(ref))
    np.testing.assert_array_equal(a.group["member_logits"][:], b.group["member_logits"][:])
    assert a.read_all()[1].tobytes() == b.read_all()[1].tobytes()
    assert not (tmp_path / "s.zarr.lock").exists()


@pytest.mark.parametrize("kind", [*MEMBER_RUNS, *VIEWS])
def test_members_two_process_torchrun_matches_one_process(member_setup, tmp_path, kind):
    from stage1_helpers import chunk_files
    from test_distributed import torchrun
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    run(*member_setup(kind, one, "--shard-rows", 16))
    proc = torchrun(member_setup(kind, two, "--shard-rows", 16))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("teacher-logits: 96 x 10 float16 logits") == 1  # rank 0 only
    assert chunk_files(two) == chunk_files(one)
    a, b = LogitStore.open(str(two)), LogitStore.open(str(one))
    assert a.meta.complete and a.meta.extra["shard_rows"] == 16
    np.testing.assert_array_equal(a.group["member_logits"][:], b.group["member_logits"][:])
    np.testing.assert_array_equal(a.read_all()[1], b.read_all()[1])
    if kind in VIEWS:  # every member's views, and their parameters, through the session
        assert a.group["member_view_logits"].shape == (2, 96, 2, 10)
        np.testing.assert_array_equal(a.group["member_view_logits"][:],
                                      b.group["member_view_logits"][:])
        np.testing.assert_array_equal(a.group["view_params"][:], b.group["view_params"][:])
