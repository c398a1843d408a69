"""The CLI end to end through click's CliRunner: happy paths and every bad input."""

import dataclasses
import json

import numpy as np
import pytest
import zarr

from conftest import run_cli as run
from softtargets.datasets import idx_files as data_mod


def data_args(cfg, limit=None):
    out = ["--dataset", cfg.dataset, "--data-dir", cfg.data_dir]
    return out + (["--limit", limit] if limit else [])


@pytest.fixture
def pipeline(tiny_data, tmp_path):
    """teacher -> teacher-logits on the synthetic dataset; returns (data args, run dir)."""
    d = data_args(tiny_data)
    r = tmp_path / "run"
    run("train-teacher", *d, "--hidden", "32,32", "--epochs", 10, "--batch-size", 16, "--dropout", 0.2,
        "--out", r / "teacher.pt", "--quiet")
    run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", r / "teacher-logits.zarr",
        "--chunk-rows", 40, "--quiet")
    return d, r


def test_pipeline_on_synthetic_data(pipeline):
    d, r = pipeline
    res = run("student", *d, "--hidden", "32,32", "--epochs", 10, "--batch-size", 16, "-T", 4,
              "--alpha", 0.7, "--store", r / "teacher-logits.zarr", "--out", r / "student",
              "--quiet")
    assert "distilled: mlp 784-32-32-10 (T=4, alpha=0.7), 10 epochs on 96 rows" in res.output
    run("baseline", *d, "--hidden", "32,32", "--epochs", 8, "--batch-size", 16,
        "--out", r / "baseline", "--quiet")
    m = json.loads((r / "student" / "metrics.json").read_text())
    assert m["role"] == "distilled" and m["test_n"] == 48
    assert m["test_errors"] < 48 * 0.5  # chance would be ~43 errors
    assert m["source"]["teacher"]["checkpoint_sha256"].startswith("sha256:")
    table = run("summary", r).output
    assert "| teacher |" in table and "| baseline student |" in table
    assert "distilled student (T=4, alpha=0.7)" in table
    info = run("inspect", r / "teacher-logits.zarr").output
    assert "96 x 10 float16, 40 rows/chunk" in info and "complete" in info
    meta = json.loads(run("inspect", "--json", r / "teacher-logits.zarr").output)
    assert meta["dataset"]["name"] == "mnist" and meta["complete"] is True


def test_streamed_student_matches_in_memory_rows(pipeline):
    d, r = pipeline
    common = [*d, "--hidden", "32,32", "--epochs", 2, "--batch-size", 16, "--quiet",
              "--store", r / "teacher-logits.zarr"]
    res = run("student", *common, "--loader", "stream", "--out", r / "streamed")
    assert "distilled: mlp 784-32-32-10 (T=20, alpha=0.9), 2 epochs on 96 rows" in res.output
    m = json.loads((r / "streamed" / "metrics.json").read_text())
    assert m["config"]["loader"] == "stream" and len(m["history"]) == 2
    assert np.isfinite(m["train_loss"]) and m["config"]["loss"] == "kl"
    res = run("student", *common, "--loss", "mse", "--out", r / "mse")
    assert "(T=20, alpha=0.9, loss mse), 2 epochs" in res.output
    assert json.loads((r / "mse" / "metrics.json").read_text())["config"]["loss"] == "mse"
    res = run("student", *common, "--loader", "disk", "--out", r / "x", ok=False)
    assert res.exit_code == 2 and "'disk' is not one of" in res.output


def test_existing_store_is_refused_then_overwritten(pipeline):
    d, r = pipeline
    store = r / "teacher-logits.zarr"
    before = zarr.open_group(str(store), mode="r")["logits"][:]
    res = run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", store, ok=False)
    assert res.exit_code == 1
    assert "StoreExistsError" in res.output and "pass --overwrite" in res.output
    np.testing.assert_array_equal(zarr.open_group(str(store), mode="r")["logits"][:], before)
    run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", store, "--overwrite",
        "--quiet")


def test_store_of_another_split_is_refused(pipeline):
    d, r = pipeline
    run("teacher-logits", *d, "--split", "test", "--teacher", r / "teacher.pt",
        "--store", r / "test.zarr", "--quiet")
    res = run("student", *d, "--store", r / "test.zarr", "--epochs", 1, "--out", r / "s", ok=False)
    assert res.exit_code == 1
    assert "StoreMismatchError" in res.output and "computed on mnist/test" in res.output
    assert not (r / "s").exists()


def test_incomplete_store_is_refused(pipeline):
    d, r = pipeline
    g = zarr.open_group(str(r / "teacher-logits.zarr"), mode="r+")
    g.attrs["softtargets"] = {**g.attrs["softtargets"], "complete": False}
    res = run("student", *d, "--store", r / "teacher-logits.zarr", "--epochs", 1,
              "--out", r / "s", ok=False)
    assert "IncompleteStoreError" in res.output and "rerun stage 1" in res.output


def test_truncated_store_is_refused(pipeline):
    d, r = pipeline
    (r / "teacher-logits.zarr" / "logits" / "c" / "1" / "0").unlink()
    res = run("student", *d, "--store", r / "teacher-logits.zarr", "--epochs", 1,
              "--out", r / "s", ok=False)
    assert "chunk 1 has missing or invalid rows" in res.output


def test_checkpoint_of_wrong_class_count(pipeline, tmp_path):
    import torch
    d, r = pipeline
    payload = torch.load(r / "teacher.pt", weights_only=True)
    payload["model"]["classes"] = 7
    torch.save(payload, tmp_path / "seven.pt")
    res = run("teacher-logits", *d, "--teacher", tmp_path / "seven.pt",
              "--store", tmp_path / "x.zarr", ok=False)
    assert "CheckpointError" in res.output and "predicts 7 classes but the dataset has 10" in res.output
    assert not (tmp_path / "x.zarr").exists()


def test_sparse_stores_from_the_cli(pipeline):
    """--topk / --sample stores, students from them, and the refusals."""
    d, r = pipeline
    student = ["student", *d, "--hidden", "32,32", "--epochs", 10, "--batch-size", 16,
               "--alpha", 0.7, "--quiet"]
    res = run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", r / "top.zarr",
              "--topk", 3, "--temperatures", "1,4", "--quiet")
    assert "96 x 10 topk (K=3)" in res.output
    run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", r / "smp.zarr",
        "--sample", 8, "--sample-temperature", 4, "--sample-seed", 5, "--quiet")
    g = zarr.open_group(str(r / "smp.zarr"), mode="r")
    spec = g.attrs["softtargets"]["sparse"]
    assert spec["seed"] == 5 and spec["temperatures"] == [1.0, 4.0] and spec["draws"] == 8
    assert g["sampled_ids"].shape == (96, 8)
    for name in ("top", "smp"):
        run(*student, "-T", 4, "--store", r / f"{name}.zarr", "--out", r / name)
        m = json.loads((r / name / "metrics.json").read_text())
        assert m["role"] == "distilled" and m["test_errors"] < 48 * 0.5
    res = run(*student, "-T", 20, "--store", r / "top.zarr", "--out", r / "t20", ok=False)
    assert res.exit_code == 1 and "SparseTemperatureError" in res.output
    assert "only at T in [1.0, 4.0]" in res.output and not (r / "t20").exists()
    run(*student, "-T", 20, "--tail", "renormalise", "--store", r / "top.zarr", "--out", r / "t20")
    res = run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", r / "x.zarr",
              "--topk", 3, "--sample", 3, ok=False)
    assert "ConfigError" in res.output and "not both" in res.output
    res = run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", r / "x.zarr",
              "--topk", 3, "--shard-rows", 16, ok=False)
    assert res.exit_code == 1 and res.output.startswith(
        "Error: StoreError: sparse stores are not sharded (got shard_rows=16)")
    res = run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--teacher", r / "teacher.pt",
              "--store", r / "x.zarr", "--topk", 3, ok=False)
    assert "ConfigError" in res.output and "convert its combined log-probs" in res.output
    info = run("inspect", r / "top.zarr").output
    assert "sparse:     topk K=3 draws=None tail at T=[1.0, 4.0] from logits" in info


@pytest.mark.parametrize("flag, value, message", [
    *(("-T", t, f"temperature T must be finite and > 0, got {shown}; the paper uses T in [1, 20]")
      for t, shown in (("inf", "inf"), ("nan", "nan"), (0, "0.0"), (-1, "-1.0"))),
    ("--alpha", 1.5, "alpha (weight of the soft-target term) must be in [0, 1], got 1.5; "
                     "1 = soft targets only, 0 = hard labels only"),
    ("--alpha", "nan", "alpha (weight of the soft-target term) must be in [0, 1], got nan; "
                       "1 = soft targets only, 0 = hard labels only"),
])
def test_bad_temperature_and_alpha(tiny_data, tmp_path, flag, value, message):
    res = run("student", *data_args(tiny_data), flag, value, "--store", tmp_path / "none.zarr",
              "--out", tmp_path / "s", ok=False)
    assert res.exit_code == 1 and res.output == f"Error: ConfigError: {message}\n"


def test_random_bytes_teacher_is_not_a_checkpoint(tiny_data, tmp_path):
    (tmp_path / "t.pt").write_bytes(bytes(range(256)) * 16)
    res = run("teacher-logits", *data_args(tiny_data), "--teacher", tmp_path / "t.pt", "--store",
              tmp_path / "s.zarr", ok=False)
    assert res.exit_code == 1
    assert res.output == (f"Error: CheckpointError: '{tmp_path / 't.pt'}' is not a softtargets or "
                          "torch checkpoint: the safe loader (weights only) cannot read it "
                          "(UnpicklingError: Unsupported operand 0); pass a checkpoint written by "
                          "`softtargets train-teacher`\n")
    assert not (tmp_path / "s.zarr").exists()


def test_missing_dataset(tmp_path):
    res = run("train-teacher", "--dataset", "kmnist", "--data-dir", tmp_path, "--out",
              tmp_path / "t.pt", ok=False)
    assert res.exit_code == 1 and "DatasetNotFoundError" in res.output
    assert "softtargets data --dataset kmnist" in res.output
    res = run("data", "--dataset", "kmnist", "--data-dir", tmp_path, "--no-download", ok=False)
    assert "missing" in res.output


def test_missing_store(tiny_data, tmp_path):
    res = run("student", *data_args(tiny_data), "--store", tmp_path / "none.zarr",
              "--out", tmp_path / "s", ok=False)
    assert "no store at" in res.output and "teacher-logits" in res.output


def test_data_command_on_real_fashion_mnist(fashion):
    res = run("data", "--dataset", "fashion-mnist", "--no-download")
    assert "train 60000 rows sha256:9a042e8212e0" in res.output


def test_end_to_end_on_real_fashion_mnist_slice(fashion, tmp_path):
    """teacher -> teacher-logits -> student on 3000 real rows; the student beats chance widely."""
    r = tmp_path
    d = ["--limit", 3000]
    run("train-teacher", *d, "--epochs", 4, "--out", r / "teacher.pt", "--quiet")
    run("teacher-logits", *d, "--teacher", r / "teacher.pt", "--store", r / "t.zarr", "--quiet")
    run("student", *d, "--epochs", 4, "--store", r / "t.zarr", "--out", r / "student", "--quiet")
    m = json.loads((r / "student" / "metrics.json").read_text())
    assert m["test_n"] == 10000 and m["train_rows"] == 3000
    assert m["test_accuracy"] > 0.65, m["test_accuracy"]  # chance is 0.10


@pytest.mark.slow
def test_full_pipeline_on_fashion_mnist(fashion, tmp_path):
    """The default pipeline on all 60,000 rows with short schedules (make test-slow)."""
    r = tmp_path
    run("train-teacher", "--epochs", 3, "--out", r / "teacher.pt", "--quiet")
    run("teacher-logits", "--teacher", r / "teacher.pt", "--store", r / "t.zarr", "--quiet")
    run("student", "--epochs", 3, "--store", r / "t.zarr", "--out", r / "student", "--quiet")
    m = json.loads((r / "student" / "metrics.json").read_text())
    assert m["test_accuracy"] > 0.80, m["test_accuracy"]


def test_existing_teacher_checkpoint_is_kept(pipeline):
    d, r = pipeline
    before = (r / "teacher.pt").read_bytes()
    res = run("train-teacher", *d, "--epochs", 1, "--out", r / "teacher.pt", ok=False)
    assert "CheckpointError" in res.output and "already exists; pass --overwrite" in res.output
    assert (r / "teacher.pt").read_bytes() == before
    (r / "notes.txt").write_text("mine")
    res = run("train-teacher", *d, "--epochs", 1, "--out", r / "notes.txt", "--overwrite",
              ok=False)
    assert res.exit_code == 1 and res.output == (
        f"Error: ForeignDataError: refusing to overwrite '{r / 'notes.txt'}': it is not a "
        "softtargets checkpoint, so softtargets did not create it; move it or choose another "
        "--out\n")
    assert (r / "notes.txt").read_text() == "mine"


def test_default_paths_follow_the_dataset(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run("train-teacher", *data_args(tiny_data), "--hidden", "8", "--epochs", 1, "--quiet")
    assert (tmp_path / "runs" / "mnist" / "teacher.pt").is_file()


def test_val_rows_on_every_step(tiny_data, tmp_path):
    """--val-rows 16: teacher, store and student use the first 80 rows, report errors on the last
    16, and record val_rows; a student without it, or a teacher that saw those rows, is refused."""
    import re
    import torch
    from softtargets.recipes.hinton2015.models import load_checkpoint
    d, v, r = data_args(tiny_data), ["--val-rows", 16], tmp_path / "run"
    res = run("train-teacher", *d, *v, "--hidden", "32,32", "--epochs", 3, "--batch-size", 16,
              "--dropout", 0.2, "--out", r / "teacher.pt", "--quiet")
    assert "3 epochs on 80 rows" in res.output and "/16 validation errors" in res.output
    teacher = json.loads((r / "teacher.json").read_text())
    held = data_mod.load_validation(dataclasses.replace(tiny_data, val_rows=16))
    with torch.no_grad():
        pred = load_checkpoint(r / "teacher.pt").model(torch.from_numpy(held.inputs())).argmax(1)
    assert teacher["val_errors"] == int((pred.numpy() != held.labels).sum())
    assert (teacher["train_rows"], teacher["val_n"]) == (80, 16)
    assert teacher["config"]["data"]["val_rows"] == 16
    run("teacher-logits", *d, *v, "--teacher", r / "teacher.pt", "--store", r / "t.zarr", "--quiet")
    meta = json.loads(run("inspect", "--json", r / "t.zarr").output)
    assert (meta["n"], meta["dataset"]["val_rows"], meta["teacher"]["trained_on"]["val_rows"]) \
        == (80, 16, 16)
    assert "checked against mnist/train n=80" in run("verify", r / "t.zarr", *d[:4]).output
    common = [*d, "--hidden", "16", "--epochs", 1, "--batch-size", 16, "--quiet"]
    res = run("student", *common, *v, "--store", r / "t.zarr", "--out", r / "student")
    assert "1 epochs on 80 rows" in res.output and "/16 validation errors" in res.output
    run("baseline", *common, *v, "--out", r / "baseline")
    assert json.loads((r / "baseline" / "metrics.json").read_text())["val_n"] == 16
    assert "gap closed, (baseline - distilled) / (baseline - teacher): test " \
        in run("summary", r).output
    res = run("student", *common, "--store", r / "t.zarr", "--out", r / "s2", ok=False)
    assert res.exit_code == 1 and not (r / "s2").exists()
    assert re.fullmatch(r"Error: StoreMismatchError: store '\S+t.zarr' was computed on "
                        r"mnist/train \(n=80, val_rows=16, fingerprint sha256:\w+\) but is used "
                        r"with mnist/train \(n=96, val_rows=0, fingerprint sha256:\w+\): val_rows "
                        r"differs; pass the store's --val-rows 16 or rewrite it with "
                        r"teacher-logits --val-rows 0\n", res.output), res.output
    run("train-teacher", *d, "--hidden", "8", "--epochs", 1, "--out", r / "all.pt", "--quiet")
    res = run("teacher-logits", *d, *v, "--teacher", r / "all.pt", "--store", r / "leak.zarr",
              ok=False)
    assert res.exit_code == 1 and not (r / "leak.zarr").exists()
    assert res.output == (f"Error: ValidationLeakError: teacher '{r / 'all.pt'}' was trained on "
                          "the first 96 rows of mnist/train, which include the validation rows "
                          "80..95 held out by --val-rows 16; train it with --val-rows 16 too\n")
    res = run("teacher-logits", *d, *v, "--teacher", r / "teacher.pt", "--teacher", r / "all.pt",
              "--store", r / "leak.zarr", ok=False)  # an ensemble member that saw the rows
    assert res.exit_code == 1 and not (r / "leak.zarr").exists()
    assert res.output.startswith(f"Error: ValidationLeakError: member teacher 2 ({r / 'all.pt'}) "
                                 "was trained on the first 96 rows of mnist/train")
    res = run("teacher-logits", *d, *v, "--split", "test", "--teacher", r / "teacher.pt",
              "--store", r / "test.zarr", ok=False)
    assert res.exit_code == 1 and res.output == (
        "Error: ConfigError: --val-rows 16 holds out rows of the train split; drop it for the "
        "'test' split\n")
