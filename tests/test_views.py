"""Augmented views: deterministic parameters, exact replay, the store, refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from softtargets.config import LogitsConfig
from softtargets.datasets.idx_files import load_split
from softtargets.errors import ConfigError
from softtargets.recipes.hinton2015.models import load_checkpoint
from softtargets.format.store import LogitStore, read_meta
from softtargets.write.idx_teacher import write_teacher_logits
from softtargets.read.view_loader import ViewData
from softtargets.augment.views import AugmentSpec, apply_views, draw_params, parse_spec

SPEC = AugmentSpec(shift=2, rotate=10.0, scale=1.2, flip=1)


def test_params_depend_only_on_seed_sample_view() -> None:
    ids = np.arange(40)
    whole = draw_params(SPEC, seed=3, sample_ids=ids, views=4)  # (40, 4, 5)
    parts = np.concatenate([draw_params(SPEC, seed=3, sample_ids=ids[s:s + 7], views=4)
                            for s in range(0, 40, 7)])
    np.testing.assert_array_equal(whole, parts)
    reversed_ = draw_params(SPEC, seed=3, sample_ids=ids[::-1], views=4)[::-1]
    np.testing.assert_array_equal(whole, reversed_)
    assert (whole[:, 0] == [0, 0, 0, 1, 0]).all()  # view 0 is clean
    assert not np.array_equal(whole, draw_params(SPEC, seed=4, sample_ids=ids, views=4))
    assert np.abs(whole[:, 1:, :2]).max() == 2 and np.abs(whole[:, :, 2]).max() <= 10
    assert set(np.unique(whole[:, :, 4])) == {0.0, 1.0}


def test_apply_is_exact_and_shift_is_a_shift() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28)).astype(np.uint8)
    params = draw_params(SPEC, seed=1, sample_ids=np.arange(6), views=3)[:, 2]
    a, b = apply_views(images, params), apply_views(images.copy(), params.copy())
    assert torch.equal(a, b)
    clean = apply_views(images, np.array([[0, 0, 0, 1, 0]] * 6, dtype=np.float32))
    np.testing.assert_array_equal(clean.numpy(), images.reshape(6, -1) / np.float32(255))
    shifted = apply_views(images[:1], np.array([[1, -2, 0, 1, 0]], dtype=np.float32))
    out = shifted.reshape(28, 28).numpy()
    np.testing.assert_array_equal(out[1:, :26], images[0, :27, 2:] / np.float32(255))
    assert (out[0] == 0).all() and (out[:, 26:] == 0).all()


def test_spec_round_trip_and_refusals(tmp_path: Path) -> None:
    spec = parse_spec("shift=3,rotate=5,scale=1.1,flip=1")
    assert spec == AugmentSpec(shift=3, rotate=5.0, scale=1.1, flip=1)
    assert AugmentSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    path = tmp_path / "aug.json"
    path.write_text(json.dumps(spec.to_json()))
    assert parse_spec(str(path)) == spec
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        parse_spec("wobble=3")
    with pytest.raises(ConfigError, match="rotate must be in"):
        parse_spec("rotate=90")
    with pytest.raises(ConfigError, match="not a number"):
        parse_spec("shift=x")
    with pytest.raises(ConfigError, match="--views must be a positive"):
        LogitsConfig(views=0)
    with pytest.raises(ConfigError, match="unknown keys"):
        AugmentSpec.from_json({"shift": 1, "zoom": 2})


def _teacher(tmp_path: Path, data) -> str:
    """A tiny seeded teacher checkpoint (untrained weights are fine for replay)."""
    from stage1_helpers import make_teacher
    return str(make_teacher(tmp_path / "teacher.pt", data))


def test_loader_replay_reproduces_stored_logits(tmp_path: Path, tiny_data) -> None:
    teacher = _teacher(tmp_path, tiny_data)
    cfg = LogitsConfig(data=tiny_data, teacher=teacher, store=str(tmp_path / "v.zarr"),
                       chunk_rows=32, device="cpu", views=4,
                       augment="shift=2,rotate=10,scale=1.2,flip=1", view_seed=5)
    meta = write_teacher_logits(cfg, progress=False)
    assert meta.complete and meta.extra["views"]["views"] == 4
    assert meta.extra["views"]["augment"]["rotate"] == 10.0
    _, group = read_meta(cfg.store)
    assert group["view_logits"].shape == (96, 4, 10) and group["view_params"].shape == (96, 4, 5)
    # v1 readers still work: logits is view 0 (clean)
    ids, logits = LogitStore.open(cfg.store).read_all()
    np.testing.assert_array_equal(logits, group["view_logits"][:][:, 0])
    # params independent of chunking: a second store with another chunk size has the same ones
    cfg2 = dataclasses.replace(cfg, store=str(tmp_path / "v2.zarr"), chunk_rows=50)
    write_teacher_logits(cfg2, progress=False)
    np.testing.assert_array_equal(group["view_params"][:], read_meta(cfg2.store)[1]["view_params"][:])
    # the key check: the teacher re-run on every rebuilt input gives the stored logits back
    model = load_checkpoint(teacher).model.eval()
    data = ViewData(load_split(tiny_data), cfg.store)
    seen = set()
    for epoch in range(6):
        chosen = data.draw_views(epoch=epoch, seed=1)
        seen.update(zip(range(96), chosen.tolist()))
        for x, y, t in data.batches(batch_size=40, epoch=epoch, seed=1):
            with torch.no_grad():
                again = model(x).numpy().astype(np.float16)
            np.testing.assert_array_equal(again, t.numpy().astype(np.float16))
    assert len({v for _, v in seen}) == 4  # every view was drawn
    assert not np.array_equal(data.draw_views(epoch=0, seed=1), data.draw_views(epoch=1, seed=1))


def test_views_refuse_sparse(tmp_path: Path, tiny_data) -> None:
    teacher = _teacher(tmp_path, tiny_data)
    cfg = LogitsConfig(data=tiny_data, teacher=teacher, store=str(tmp_path / "v.zarr"),
                       device="cpu", views=2, topk=3)
    with pytest.raises(ConfigError, match="--views stores are dense"):
        write_teacher_logits(cfg, progress=False)


def test_cli_writes_views_and_refuses_zero(tmp_path: Path, tiny_data) -> None:
    from click.testing import CliRunner

    from softtargets.cli import cli
    from stage1_helpers import stage1_args
    teacher = _teacher(tmp_path, tiny_data)
    store = tmp_path / "c.zarr"
    res = CliRunner().invoke(cli, stage1_args(tiny_data, Path(teacher), store, "--views", "3",
                                               "--augment", "shift=1,flip=1"))
    assert res.exit_code == 0, res.output
    meta, group = read_meta(str(store))
    assert meta.extra["views"]["augment"] == AugmentSpec(shift=1, flip=1).to_json()
    assert group["view_logits"].shape == (96, 3, 10)
    res = CliRunner().invoke(cli, stage1_args(tiny_data, Path(teacher), tmp_path / "d.zarr",
                                               "--views", "0"))
    assert res.exit_code == 1 and "--views must be a positive" in res.output
    res = CliRunner().invoke(cli, stage1_args(tiny_data, Path(teacher), tmp_path / "e.zarr",
                                               "--views", "2", "--augment", "rotate=x"))
    assert res.exit_code == 1 and "not a number" in res.output


def test_cli_mixed_views_of_one_teacher_and_an_ensemble_replay(tmp_path: Path,
                                                               tiny_data) -> None:
    from softtargets.datasets.idx import IDXDataset
    from softtargets.read import DistillDataset, SoftTargets

    from conftest import run_cli
    from stage1_helpers import stage1_args
    teacher = Path(_teacher(tmp_path, tiny_data))
    mixed = ("--views", "3", "--augment", "shift=1", "--mix", "mixup,1.0,1.0")
    run_cli(*stage1_args(tiny_data, teacher, tmp_path / "one.zarr", *mixed))
    run_cli(*stage1_args(tiny_data, teacher, tmp_path / "two.zarr", "--teacher", str(teacher),
                         *mixed))
    model = load_checkpoint(str(teacher)).model.eval()
    data = IDXDataset.from_split(load_split(tiny_data))
    for name in ("one", "two"):
        targets = SoftTargets(str(tmp_path / f"{name}.zarr"), view="replay")
        assert targets.meta.extra["views"]["mix"] == {"kind": "mixup", "alpha": 1.0, "prob": 1.0}
        params = targets.view_params(np.arange(96))  # (96, 3, P): views 1, 2 mixed
        assert (params[:, 1:, 5] >= 0).all() and (params[:, 0, 5] == -1).all()
        x, _, t = DistillDataset.collate([DistillDataset(data, targets, seed=2)[i]
                                          for i in range(96)])
        with torch.no_grad():
            again = model(x.flatten(1))  # (96, 10); two copies of one teacher: its own logits
        want = t.logits.float() if t.logits is not None else t.log_probs
        got = again if t.logits is not None else torch.log_softmax(again, 1)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=3e-3)


def test_student_trains_from_views_store(tmp_path: Path, tiny_data) -> None:
    from softtargets.config import StudentTrainConfig
    from softtargets.recipes.hinton2015.train import train_student
    teacher = _teacher(tmp_path, tiny_data)
    cfg = LogitsConfig(data=tiny_data, teacher=teacher, store=str(tmp_path / "v.zarr"),
                       device="cpu", views=3, augment="shift=1,rotate=5")
    write_teacher_logits(cfg, progress=False)
    m = train_student(StudentTrainConfig(data=tiny_data, store=cfg.store, hidden=(16,), epochs=2,
                                         batch_size=32), out_dir=str(tmp_path / "s"),
                      progress=False)
    assert len(m["history"]) == 2 and np.isfinite(m["history"][-1]["train_loss"])
    m = train_student(StudentTrainConfig(data=tiny_data, store=cfg.store, hidden=(16,),
                                         epochs=1), out_dir=str(tmp_path / "s2"),
                      rows=np.arange(10), progress=False)
    assert m["train_rows"] == 10
    m = train_student(StudentTrainConfig(data=tiny_data, store=cfg.store, hidden=(16,), epochs=1,
                                         loader="stream", mixup=0.4),
                      out_dir=str(tmp_path / "s3"), progress=False)  # streamed views + mixup
    assert m["train_rows"] == 96 and np.isfinite(m["train_loss"])
    with pytest.raises(ConfigError, match="applies to ensemble stores"):
        train_student(StudentTrainConfig(data=tiny_data, store=cfg.store, hidden=(16,),
                                         epochs=1, combine="geometric"),
                      out_dir=str(tmp_path / "s4"), progress=False)


# --- user augmentations ----------------------------------------------------------------------

def test_user_augmentation_is_drawn_stored_and_replayed(tmp_path: Path, tiny_data) -> None:
    teacher = _teacher(tmp_path, tiny_data)
    cfg = LogitsConfig(data=tiny_data, teacher=teacher, store=str(tmp_path / "u.zarr"),
                       chunk_rows=32, device="cpu", views=3, augment="shift=1,user=user_augs:dim")
    meta = write_teacher_logits(cfg, progress=False)
    info = meta.extra["views"]
    assert info["param_names"][-1] == "user_augs:dim.factor"
    params = read_meta(cfg.store)[1]["view_params"][:]  # (96, 3, 6)
    assert params.shape == (96, 3, 6) and np.isnan(params[:, 0, 5]).all()  # clean view 0
    assert ((params[:, 1:, 5] >= 0.5) & (params[:, 1:, 5] <= 1.0)).all()
    # the built-in columns do not move when a user augmentation is added
    plain = draw_params(AugmentSpec(shift=1), seed=0, sample_ids=np.arange(96), views=3)
    np.testing.assert_array_equal(params[..., :5], plain)
    model = load_checkpoint(teacher).model.eval()
    data = ViewData(load_split(tiny_data), cfg.store)
    for x, _, t in data.batches(batch_size=50, epoch=2, seed=0):
        with torch.no_grad():
            np.testing.assert_array_equal(model(x).numpy().astype(np.float16),
                                          t.numpy().astype(np.float16))


def test_user_augmentation_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="is not 'module:attribute'"):
        parse_spec("user=nocolon")
    with pytest.raises(ConfigError, match="cannot be imported .* PYTHONPATH"):
        parse_spec("user=no_such_module_xyz:aug")
    with pytest.raises(ConfigError, match="is a int, not a softtargets.augment.views.Augmentation"):
        parse_spec("user=user_augs:not_an_augmentation")
    spec = parse_spec("shift=1,user=user_augs:dim")
    with pytest.raises(ConfigError, match="view parameters have 5 columns, the augment spec "
                                          "expects 6"):
        apply_views(np.zeros((1, 28, 28), np.uint8), np.zeros((1, 5), np.float32), spec=spec)


# --- sharding and --resume (the write session) ------------------------------------------

def test_views_store_sharded_equals_unsharded(tmp_path: Path, tiny_data) -> None:
    teacher = _teacher(tmp_path, tiny_data)
    base = LogitsConfig(data=tiny_data, teacher=teacher, store=str(tmp_path / "a.zarr"),
                        chunk_rows=8, device="cpu", views=2, augment="shift=2,flip=1")
    write_teacher_logits(base, progress=False)
    sharded = dataclasses.replace(base, store=str(tmp_path / "b.zarr"), shard_rows=32)
    meta = write_teacher_logits(sharded, progress=False)
    assert meta.extra["shard_rows"] == 32 and meta.extra["views"]["views"] == 2
    a, b = read_meta(base.store)[1], read_meta(sharded.store)[1]
    for name in ("logits", "view_logits", "view_params"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert len(list((tmp_path / "b.zarr" / "view_logits" / "c").iterdir())) == 3  # 96 / 32
    data = ViewData(load_split(tiny_data), sharded.store)  # the loader reads sharded views
    assert sum(len(y) for _, y, _ in data.batches(batch_size=40, epoch=0, seed=0)) == 96


def test_views_resume_after_sigkill_is_bit_identical(tmp_path: Path, tiny_data) -> None:
    import signal

    from stage1_helpers import chunk_files, stage1_args, start_stage1, wait_for

    from conftest import run_cli
    teacher = Path(_teacher(tmp_path, tiny_data))
    views = ("--views", "3", "--augment", "shift=2,rotate=5")
    ref, store = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    run_cli(*stage1_args(tiny_data, teacher, ref, *views))

    def written() -> int:
        d = store / "sample_id" / "c"
        return len(list(d.iterdir())) if d.exists() else 0

    proc = start_stage1(stage1_args(tiny_data, teacher, store, *views), delay=0.4)
    try:
        wait_for(lambda: written() >= 3, what="3 units written")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert 3 <= written() < 12
    run_cli(*stage1_args(tiny_data, teacher, store, *views, "--resume"))
    assert chunk_files(store) == chunk_files(ref)  # logits, view_logits, view_params, sample_id
    assert read_meta(str(store))[0].complete


def test_verify_checks_the_views_arrays(tmp_path: Path, tiny_data) -> None:
    from softtargets.tools.verify import verify_store
    teacher = _teacher(tmp_path, tiny_data)
    cfg = LogitsConfig(data=tiny_data, teacher=teacher, store=str(tmp_path / "v.zarr"),
                       chunk_rows=32, device="cpu", views=2, augment="shift=1,user=user_augs:dim")
    write_teacher_logits(cfg, progress=False)
    assert verify_store(cfg.store).ok  # NaN user parameters of the clean view are not damage
    store = tmp_path / "v.zarr"
    raw = bytearray((store / "view_logits" / "c" / "1" / "0" / "0").read_bytes())
    raw[5] ^= 0xFF
    (store / "view_logits" / "c" / "1" / "0" / "0").write_bytes(bytes(raw))
    (store / "view_params" / "c" / "2" / "0" / "0").unlink()
    report = verify_store(cfg.store)
    kinds = {(p.kind, p.chunk) for p in report.problems}
    assert kinds == {("decode", 1), ("missing_object", 2)}
    assert "view_logits cannot be decoded" in report.text()
    assert ("chunk 2 (rows 64..95): view_params object 'view_params/c/2/0/0' is missing"
            in report.text())
