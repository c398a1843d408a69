"""The CLI on the user's own data and models: --data SPEC, --teacher-factory, --student-factory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_dataset
from dataset_helpers import write_cifar10, write_images, write_tokens
from conftest import run_cli as run
from softtargets.cli.data import DataOptions, load_data
from softtargets.errors import ConfigError
from softtargets.format.store import read_meta
from softtargets.read import DistillDataset, SoftTargets
from user_models import IMAGE, VOCAB

pytest.importorskip("PIL.Image")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An image folder of 2 classes x 6 PNGs (8x8 RGB)."""
    write_images(tmp_path / "images", {"a": 6, "b": 6}, size=IMAGE[1::-1])
    return tmp_path / "images"


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    """A flat uint16 token file: 4 sequences of 8 tokens (+1 for the last target)."""
    rng = np.random.default_rng(1)
    return write_tokens(tmp_path / "train.bin", rng.integers(0, VOCAB, 4 * 8 + 1).astype("<u2"))


TOKEN_ARGS = ("--seq-len", 8, "--vocab-size", VOCAB)


def test_image_folder_dense_store_and_own_student(images, tmp_path):
    store, out = tmp_path / "img.zarr", tmp_path / "student"
    res = run("teacher-logits", "--data", f"imagefolder:{images}", "--teacher-factory",
              "user_models:image_teacher", "--store", store, "--chunk-rows", 8, "--quiet")
    assert res.output.startswith("teacher-logits: 12 x 2 float16 logits in ")
    meta, _ = read_meta(str(store))
    assert meta.kind == "dense" and meta.n == 12 and meta.class_names == ("a", "b")
    assert meta.dataset["name"] == "images" and meta.dataset["n"] == 12
    assert "verify:" in run("verify", store).output
    res = run("student", "--data", f"imagefolder:{images}", "--student-factory",
              "user_models:image_student", "--store", store, "--out", out, "--epochs", 3,
              "--batch-size", 4, "-T", 2, "--optimizer", "adam", "--lr", 0.01, "--quiet")
    assert res.output.startswith("student: user_models:image_student (T=2, alpha=0.9), 3 "
                                 "epochs on 12 rows in ")
    assert "(no test split) -> " in res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["loader"] == "memory" and m["train_rows"] == 12 and len(m["train_losses"]) == 3
    assert m["train_losses"][-1] < m["train_losses"][0]
    ckpt = torch.load(out / "student.pt", weights_only=True)
    assert ckpt["factory"] == "user_models:image_student"
    assert ckpt["state_dict"]["net.1.weight"].shape == (8, int(np.prod(IMAGE)))
    state = torch.load(out / "train-state.pt", weights_only=True)  # after the last epoch
    assert state["position"] == {"epoch": 3, "delivered": 0} and len(state["history"]) == 3
    assert [row["train_loss"] for row in state["history"]] == m["train_losses"]
    again = run("student", "--data", f"imagefolder:{images}", "--student-factory",
                "user_models:image_student", "--store", store, "--out", out, "--epochs", 3,
                "--batch-size", 4, "-T", 2, "--optimizer", "adam", "--lr", 0.01, "--quiet",
                "--resume")  # nothing left to train: the saved weights and losses come back
    assert json.loads((out / "metrics.json").read_text())["train_losses"] == m["train_losses"]
    assert "(no test split) -> " in again.output


def test_teacher_weights_are_loaded(images, tmp_path):
    """--teacher-weights: the student's checkpoint (a state dict under "state_dict") of the same
    module serves as a teacher's weights; the store's logits are that module's."""
    from user_models import image_teacher
    weights = tmp_path / "w.pt"
    model = image_teacher()
    torch.nn.init.zeros_(model.net[3].weight)
    torch.nn.init.constant_(model.net[3].bias, 0.5)
    torch.save({"state_dict": model.state_dict()}, weights)
    store = tmp_path / "w.zarr"
    run("teacher-logits", "--data", f"imagefolder:{images}", "--teacher-factory",
        "user_models:image_teacher", "--teacher-weights", weights, "--store", store, "--quiet")
    meta, group = read_meta(str(store))
    assert np.all(np.asarray(group["logits"][:]) == np.float16(0.5))


def test_tokens_topk_store_streamed_to_own_student(tokens, tmp_path):
    store, out = tmp_path / "tok.zarr", tmp_path / "lm"
    res = run("teacher-logits", "--data", f"tokens:{tokens}", *TOKEN_ARGS, "--teacher-factory",
              "user_models:token_teacher", "--topk", 4, "--temperatures", "1,2", "--store", store,
              "--quiet")
    assert res.output.startswith(f"teacher-logits: 32 x {VOCAB} topk (K=4) in ")
    meta, _ = read_meta(str(store))
    assert meta.extra["sparse"]["position"] and meta.extra["sparse"]["k"] == 4
    assert "verify:" in run("verify", store).output
    res = run("student", "--data", f"tokens:{tokens}", *TOKEN_ARGS, "--student-factory",
              "user_models:token_student", "--store", store, "--out", out, "-T", 2,
              "--epochs", 2, "--batch-size", 2, "--loader", "stream", "--quiet")
    assert "2 epochs on 4 rows" in res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["loader"] == "stream" and len(m["train_losses"]) == 2
    assert all(np.isfinite(m["train_losses"]))


def test_idx_student_factory_reports_test_errors(tmp_path):
    """An IDX name with --student-factory: the generic loop, test errors on the test split."""
    make_dataset(tmp_path / "data", n_train=32, n_test=16)
    d = ("--data", "mnist", "--data-dir", tmp_path / "data")
    store = tmp_path / "idx.zarr"
    run("teacher-logits", *d, "--teacher-factory", "user_models:idx_teacher", "--store", store,
        "--quiet")
    res = run("student", *d, "--student-factory", "user_models:idx_teacher", "--store", store,
              "--out", tmp_path / "s", "--epochs", 1, "--batch-size", 8, "--quiet")
    assert "/16 test errors (" in res.output
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["test_n"] == 16 and 0 <= m["test_errors"] <= 16


def test_cifar10_store_and_student_test_errors(tmp_path):
    write_cifar10(tmp_path / "c", per_batch=4, n_test=3)
    d, store = ("--data", f"cifar10:{tmp_path / 'c'}"), tmp_path / "c.zarr"
    res = run("teacher-logits", *d, "--teacher-factory", "user_models:cifar_net", "--store",
              store, "--quiet")
    assert res.output.startswith("teacher-logits: 20 x 10 float16 logits in ")
    res = run("student", *d, "--student-factory", "user_models:cifar_net", "--store", store,
              "--out", tmp_path / "s", "--epochs", 1, "--batch-size", 8, "--quiet")
    assert "/3 test errors (" in res.output
    wrong = run("teacher-logits", "--data", f"cifar100:{tmp_path / 'c'}", "--teacher-factory",
                "user_models:cifar_net", "--store", tmp_path / "x.zarr", ok=False)
    assert wrong.output == (f"Error: ConfigError: --data cifar100:{tmp_path / 'c'} holds "
                            f"cifar10; use cifar10:{tmp_path / 'c'}\n")


def test_factory_dataset_and_plain_dataset_with_num_classes():
    assert len(load_data("user_models:tensors", DataOptions())) == 24
    plain = load_data("user_models:plain", DataOptions(num_classes=3))
    assert plain.num_classes == 3 and len(plain) == 24 and plain.name == "user_models:plain"


def test_dataset_alias_must_agree(tmp_path):
    res = run("teacher-logits", "--data", "mnist", "--dataset", "kmnist", ok=False)
    assert res.exit_code == 1
    assert res.output == ("Error: ConfigError: --data 'mnist' and --dataset 'kmnist' disagree; "
                          "--dataset is an alias of --data for IDX names, pass only one\n")


ALLOWED = ("an IDX name (fashion-mnist, kmnist, mnist), imagefolder:PATH, cifar10:PATH, "
           "cifar100:PATH, tokens:PATH or module:factory")


def test_cifar_mixed_views_replay_the_teachers_input(tmp_path):
    write_cifar10(tmp_path / "c", per_batch=4, n_test=3)
    store = tmp_path / "mixed.zarr"
    run("teacher-logits", "--data", f"cifar10:{tmp_path / 'c'}", "--teacher-factory",
        "user_models:cifar_net", "--store", store, "--views", 3, "--augment", "flip=1",
        "--mix", "cutmix,0.5,1", "--quiet")
    targets = SoftTargets(str(store), view="replay")
    assert targets.meta.extra["views"]["mix"] == {"kind": "cutmix", "alpha": 0.5, "prob": 1.0}
    assert targets.meta.extra["views"]["views"] == 3
    data = load_data(f"cifar10:{tmp_path / 'c'}", DataOptions())
    from user_models import cifar_net
    x, _, t = DistillDataset.collate([DistillDataset(data, targets, seed=4)[i] for i in range(20)])
    with torch.no_grad():  # the factory seeds its weights: the command's teacher
        again = cifar_net()(x)
    np.testing.assert_allclose(again.numpy(), t.logits.float().numpy(), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("args, message", [
    (("--mix", "mixup"), "--mix 'mixup' mixes stored views: pass --views V too"),
    (("--views", 2, "--mix", "blend"), "Mix kind must be one of ['mixup', 'cutmix'], got 'blend'"),
    (("--views", 2, "--mix", "mixup,x"), "--mix 'mixup,x': ALPHA and PROB must be numbers, e.g. "
     "mixup,1.0,0.5"),
])
def test_bad_mix_one_line(images, tmp_path, args, message):
    res = run("teacher-logits", "--data", f"imagefolder:{images}", "--teacher-factory",
              "user_models:image_teacher", *args, "--store", tmp_path / "s.zarr", ok=False)
    assert res.output == f"Error: ConfigError: {message}\n"
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("spec, extra, message", [
    ("svhn", (), f"--data 'svhn' is not a dataset softtargets knows; use {ALLOWED}"),
    ("zip:/x/y", (), f"--data 'zip:/x/y' is not a dataset softtargets knows; use {ALLOWED}"),
    ("imagefolder:", (), "--data 'imagefolder:' names no path; use imagefolder:PATH"),
    ("imagefolder:{tmp}/none", (), "--data imagefolder:{tmp}/none: {tmp}/none does not exist; "
     "give the folder of your data"),
    ("tokens:{tmp}/t.bin", (), "--data tokens:{tmp}/t.bin needs --seq-len L (tokens per "
     "sequence)"),
    ("no_such_module:make", (), "--data 'no_such_module:make': cannot import module "
     "'no_such_module': No module named 'no_such_module'; is it on PYTHONPATH?"),
    ("user_models:missing", (), "--data 'user_models:missing': module 'user_models' has no "
     "'missing'"),
    ("user_models:NOT_CALLABLE", (), "--data 'user_models:NOT_CALLABLE' is a int, not a "
     "callable; name a zero-argument function"),
    ("user_models:not_a_dataset", (), "--data 'user_models:not_a_dataset' returned int, not a "
     "dataset; return a softtargets dataset or a map-style dataset (__len__, __getitem__ -> "
     "(input, label))"),
    ("user_models:plain", (), "--data 'user_models:plain' returned a list without a class "
     "count; pass --num-classes C (or return softtargets.datasets.wrap(ds, num_classes=C))"),
    ("imagefolder:{tmp}", ("--limit", 4), "--limit applies to the IDX datasets, not --data "
     "'imagefolder:{tmp}'; drop it (or give a smaller dataset)"),
])
def test_bad_spec_one_line(tmp_path, spec, extra, message):
    (tmp_path / "t.bin").write_bytes(b"\0" * 64)
    tmp = str(tmp_path)
    res = run("teacher-logits", "--data", spec.format(tmp=tmp), *extra, "--teacher-factory",
              "user_models:image_teacher", "--store", tmp_path / "s.zarr", ok=False)
    assert res.exit_code == 1
    assert res.output == f"Error: ConfigError: {message.format(tmp=tmp)}\n"
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("args, message", [
    (("--teacher-factory", "user_models:not_a_module"), "--teacher-factory "
     "'user_models:not_a_module' returned str, not a torch nn.Module"),
    ((), "a --data dataset of your own needs a teacher: --teacher-factory module:factory "
     "[--teacher-weights PATH] or --teacher FILE (a softtargets checkpoint, TorchScript or "
     "torch.export file, or hf:DIR)"),
    (("--teacher-weights", "w.pt"), "--teacher-weights is the state dict of a --teacher-factory "
     "module; pass --teacher-factory module:factory too"),
    (("--teacher-factory", "user_models:image_teacher", "--break-lock", "--compile"),
     "--break-lock, --compile do not apply to --data imagefolder:{tmp} / --teacher-factory (written "
     "through softtargets.write.write_logits); drop them, or use an IDX dataset with a "
     "softtargets teacher checkpoint"),
])
def test_bad_teacher_one_line(images, tmp_path, args, message):
    res = run("teacher-logits", "--data", f"imagefolder:{images}", *args, "--store",
              tmp_path / "s.zarr", ok=False)
    assert res.exit_code == 1
    assert res.output == f"Error: ConfigError: {message.format(tmp=images)}\n"
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("args, message", [
    ((), "the built-in students train on the IDX datasets; for --data 'imagefolder:{tmp}' "
     "pass --student-factory module:factory"),
    (("--student-factory", "user_models:not_a_module"), "--student-factory "
     "'user_models:not_a_module' returned str, not a torch nn.Module"),
    (("--student-factory", "user_models:image_student", "--mixup", 0.2),
     "--mixup does not apply to --student-factory students; drop it"),
])
def test_bad_student_one_line(images, tmp_path, args, message):
    res = run("student", "--data", f"imagefolder:{images}", *args, "--store",
              tmp_path / "s.zarr", "--out", tmp_path / "out", ok=False)
    assert res.exit_code == 1
    assert res.output == f"Error: ConfigError: {message.format(tmp=images)}\n"
    assert not (tmp_path / "out").exists()


def test_optimizer_refused_for_builtin_student():
    res = run("student", "--optimizer", "adam", ok=False)
    assert res.exit_code == 1
    assert res.output == ("Error: ConfigError: --optimizer applies to --student-factory "
                          "students; the built-in students use SGD with momentum (drop "
                          "--optimizer)\n")


def test_helps_describe_data():
    top = run("--help").output
    assert "--data SPEC" in top and "imagefolder:PATH" in top and "--student-factory" in top
    for command in ("teacher-logits", "student"):
        text = run(command, "--help").output
        assert "--data SPEC" in text and "tokens:PATH" in text and "784" not in text
    with pytest.raises(ConfigError, match="needs --seq-len"):
        load_data("tokens:/", DataOptions())
