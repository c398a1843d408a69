"""Combination rules against hand-computed values, and reading ensemble stores at any T."""

import math

import numpy as np
import pytest
import torch

from softtargets.config import DataConfig, EnsembleLogitsConfig, StudentTrainConfig
from softtargets.datasets.idx_files import load_split
from softtargets.read.distill import distillation_loss, soft_target_loss_from_log_probs
from softtargets.format.ensemble import (EnsembleTargets, check_rule, combine_log_probs, combine_probs,
                                  open_targets)
from softtargets.errors import ConfigError
from softtargets.write.ensemble_run import write_ensemble_logits
from softtargets.recipes.hinton2015.models import MLP, ModelSpec, save_checkpoint
from softtargets.format.store import LogitStore

LN = math.log
# two members, two rows: row 0 has 3 classes' worth of hand-checkable logits
Z = np.array([[[LN(1), LN(2), LN(5)], [0.0, LN(3), 0.0]],     # member 1: p = (1,2,5)/8, (1,3,1)/5
              [[LN(4), LN(2), LN(2)], [0.0, 0.0, LN(2)]]])    # member 2: p = (4,2,2)/8, (1,1,2)/4


def test_arithmetic_mean_by_hand():
    p = combine_probs(Z, rule="arithmetic", temperature=1.0)
    np.testing.assert_allclose(p[0], [5 / 16, 4 / 16, 7 / 16], rtol=1e-12)
    np.testing.assert_allclose(p[1], [(1 / 5 + 1 / 4) / 2, (3 / 5 + 1 / 4) / 2,
                                      (1 / 5 + 2 / 4) / 2], rtol=1e-12)


def test_geometric_mean_by_hand():
    p = combine_probs(Z, rule="geometric", temperature=1.0)
    g = np.sqrt([1 / 8 * 4 / 8, 2 / 8 * 2 / 8, 5 / 8 * 2 / 8])  # sqrt(p1 * p2), renormalised
    np.testing.assert_allclose(p[0], g / g.sum(), rtol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 5.0, 20.0])
def test_geometric_mean_is_softmax_of_mean_logits(temperature):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 6, size=(5, 40, 10))  # (M, rows, C)
    p = combine_probs(z, rule="geometric", temperature=temperature)
    zt = z.mean(0) / temperature
    ref = np.exp(zt - zt.max(1, keepdims=True))
    np.testing.assert_allclose(p, ref / ref.sum(1, keepdims=True), rtol=1e-10, atol=1e-15)
    # and exp(mean log p_m), renormalised, computed the long way
    logp = z / temperature - np.log(np.exp(z / temperature).sum(-1, keepdims=True))
    g = np.exp(logp.mean(0))
    np.testing.assert_allclose(p, g / g.sum(1, keepdims=True), rtol=1e-10, atol=1e-15)


def test_arithmetic_at_temperature_by_hand():
    z = np.array([[[0.0, LN(3)]], [[0.0, 0.0]]])  # (2, 1, 2)
    p = combine_probs(z, rule="arithmetic", temperature=2.0)
    r3 = math.sqrt(3)  # softmax([0, ln 3] / 2) = (1, sqrt 3) / (1 + sqrt 3)
    np.testing.assert_allclose(p[0], [(1 / (1 + r3) + 0.5) / 2, (r3 / (1 + r3) + 0.5) / 2],
                               rtol=1e-12)


@pytest.mark.parametrize("rule", ["arithmetic", "geometric"])
def test_member_order_does_not_matter(rule):
    z = np.random.default_rng(2).normal(0, 4, size=(4, 30, 10))
    a = combine_log_probs(z, rule=rule, temperature=3.0)
    b = combine_log_probs(z[[2, 0, 3, 1]], rule=rule, temperature=3.0)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_extreme_logits_do_not_underflow():
    z = np.array([[[0.0, 60000.0]], [[60000.0, 0.0]]])
    logp = combine_log_probs(z, rule="arithmetic", temperature=1.0)
    np.testing.assert_allclose(np.exp(logp), [[0.5, 0.5]], rtol=1e-12)
    assert np.isfinite(logp).all()


def test_unknown_rule_is_refused():
    with pytest.raises(ConfigError, match=r"unknown combination rule 'median'; allowed: "
                                          r"\['arithmetic', 'geometric'\]"):
        check_rule("median")
    with pytest.raises(ConfigError, match="unknown combination rule 'mean'"):
        combine_probs(Z, rule="mean", temperature=1.0)
    with pytest.raises(ConfigError, match="unknown combination rule 'median'"):
        EnsembleLogitsConfig(combine="median")
    with pytest.raises(ConfigError, match="unknown combination rule 'max'"):
        StudentTrainConfig(combine="max")
    with pytest.raises(ConfigError, match="needs --combine"):
        EnsembleLogitsConfig(combined_only=True)
    with pytest.raises(ConfigError, match="arithmetic needs -T"):
        EnsembleLogitsConfig(combine="arithmetic", combined_only=True)


def test_log_prob_loss_equals_logit_loss_for_one_teacher():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g) * 3, torch.randn(8, 10, generator=g) * 3
    y = torch.zeros(8, dtype=torch.long)
    for temp in (1.0, 4.0):
        a = soft_target_loss_from_log_probs(s, torch.log_softmax(t / temp, 1), temperature=temp)
        b = distillation_loss(s, t, y, temperature=temp, alpha=1.0)
        torch.testing.assert_close(a, b)


# --- stores ----------------------------------------------------------------------------------
def teachers(tmp_path, split, seeds=(0, 1, 2)):
    paths = []
    for seed in seeds:
        torch.manual_seed(seed)
        spec = ModelSpec(hidden=(16,), dropout=0.3)
        model = MLP(spec)
        path = tmp_path / f"t{seed}.pt"
        save_checkpoint(path, model=model, spec=spec, config={}, dataset=split.identity(),
                        class_names=split.class_names, metrics={})
        paths.append(str(path))
    return paths


def raw_logits(path, split):
    from softtargets.recipes.hinton2015.models import load_checkpoint
    with torch.no_grad():
        return load_checkpoint(path).model(torch.from_numpy(split.inputs())).numpy()


def write(tmp_path, data, paths, name, **kw):
    cfg = EnsembleLogitsConfig(data=data, teachers=tuple(paths), store=str(tmp_path / name),
                               chunk_rows=40, device="cpu", **kw)
    write_ensemble_logits(cfg, progress=False)
    return LogitStore.open(str(tmp_path / name))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One synthetic dataset, three teachers and their ensemble store for the whole module."""
    from conftest import make_dataset
    root = tmp_path_factory.mktemp("ens")
    make_dataset(root / "data")
    data = DataConfig(dataset="mnist", split="train", data_dir=str(root / "data"))
    split = load_split(data)
    paths = teachers(root, split)
    return data, split, paths, write(root, data, paths, "ens.zarr")


@pytest.fixture
def ensemble_store(shared):
    return shared[1:]


@pytest.fixture
def tiny_data(shared):
    return shared[0]


def test_store_read_is_exact_at_any_temperature(ensemble_store):
    split, paths, store = ensemble_store
    z = np.stack([raw_logits(p, split) for p in paths]).astype(np.float16)  # as stored
    for rule in ("arithmetic", "geometric"):
        for temperature in (1.0, 5.0, 20.0):
            ids, logp = open_targets(store, rule=rule, temperature=temperature).read_all()
            assert logp.dtype == np.float32 and logp.shape == (96, 10)
            ref = combine_log_probs(z[:, ids], rule=rule, temperature=temperature)
            np.testing.assert_allclose(logp, ref, rtol=1e-5, atol=1e-6)


def test_store_layout_and_v1_logits_are_the_member_mean(ensemble_store):
    split, paths, store = ensemble_store
    members = store.group["member_logits"]
    assert members.shape == (3, 96, 10) and members.chunks == (1, 40, 10)
    meta = store.meta.extra["ensemble"]
    assert [m["checkpoint"] for m in meta["members"]] == paths
    assert all(m["checkpoint_sha256"].startswith("sha256:") for m in meta["members"])
    assert store.meta.version == 1 and store.meta.teacher["members"] == 3
    z = np.asarray(members[:]).astype(np.float64)
    _, v1 = store.read_all()  # what a v1 reader sees: the geometric-mean target at every T
    np.testing.assert_array_equal(v1, z.mean(0).astype(np.float16))


def test_member_order_does_not_matter_in_stores(ensemble_store, tiny_data, tmp_path):
    _, paths, store = ensemble_store
    other = write(tmp_path, tiny_data, paths[::-1], "rev.zarr")
    for rule in ("arithmetic", "geometric"):
        a = open_targets(store, rule=rule, temperature=4.0).read_all()[1]
        b = open_targets(other, rule=rule, temperature=4.0).read_all()[1]
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_combined_only_arithmetic_refuses_another_temperature(ensemble_store, tiny_data,
                                                              tmp_path):
    split, paths, full = ensemble_store
    store = write(tmp_path, tiny_data, paths, "arith.zarr", combine="arithmetic",
                  combined_only=True, temperature=5.0)
    assert "member_logits" not in store.group and store.meta.version == 2
    assert store.meta.extra["combined"]["rule"] == "arithmetic"
    assert store.meta.extra["combined"]["temperature"] == 5.0
    got = open_targets(store, rule=None, temperature=5.0).read_all()[1]
    ref = open_targets(full, rule="arithmetic", temperature=5.0).read_all()[1]
    np.testing.assert_allclose(got, ref, atol=2e-3)  # float16 storage of T log p
    with pytest.raises(ConfigError, match=r"arithmetic combination at T=5 only .* cannot be read "
                                          r"at T=2"):
        open_targets(store, rule=None, temperature=2.0)
    with pytest.raises(ConfigError, match="holds only the arithmetic combination"):
        EnsembleTargets(store, rule="geometric", temperature=5.0)


def test_combined_only_geometric_is_exact_at_every_temperature(ensemble_store, tiny_data,
                                                               tmp_path):
    _, paths, full = ensemble_store
    store = write(tmp_path, tiny_data, paths, "geo.zarr", combine="geometric", combined_only=True)
    assert store.meta.version == 1 and store.meta.extra["combined"]["temperature"] is None
    for t in (1.0, 7.0):
        got = open_targets(store, rule="geometric", temperature=t).read_all()[1]
        ref = open_targets(full, rule="geometric", temperature=t).read_all()[1]
        np.testing.assert_allclose(got, ref, atol=1e-3)


def test_student_trains_from_ensemble_store(ensemble_store, tiny_data, tmp_path):
    from softtargets.recipes.hinton2015.train import train_student
    _, _, store = ensemble_store
    cfg = StudentTrainConfig(data=tiny_data, store=store.url, hidden=(16,), epochs=2,
                             batch_size=16, temperature=3.0, combine="geometric")
    m = train_student(cfg, out_dir=str(tmp_path / "s"), progress=False)
    assert m["role"] == "distilled" and m["source"]["combine"] == {"rule": "geometric",
                                                                   "members": 3}
    assert np.isfinite(m["train_loss"])
    first = store.meta.extra["ensemble"]["members"][0]["checkpoint"]
    one = write(tmp_path, tiny_data, [first], "one.zarr")
    assert "ensemble" not in one.meta.extra and "member_logits" not in one.group
    with pytest.raises(ConfigError, match="applies to ensemble stores"):
        train_student(StudentTrainConfig(data=tiny_data, store=one.url, epochs=1,
                                         combine="geometric"), out_dir=str(tmp_path / "x"))


def test_student_mse_loss_is_recorded_and_round_trips(ensemble_store, tiny_data, tmp_path):
    import json

    import torch

    from softtargets.config import from_dict, to_dict
    from softtargets.recipes.hinton2015.train import train_student
    _, _, store = ensemble_store
    cfg = StudentTrainConfig(data=tiny_data, store=store.url, hidden=(16,), epochs=1,
                             batch_size=16, temperature=3.0, loss="mse")
    assert from_dict(StudentTrainConfig, json.loads(json.dumps(to_dict(cfg)))).loss == "mse"
    m = train_student(cfg, out_dir=str(tmp_path / "s"), progress=False)
    assert m["config"]["loss"] == "mse" and np.isfinite(m["train_loss"])
    saved = torch.load(tmp_path / "s" / "student.pt", weights_only=False)
    assert saved["config"]["loss"] == "mse"
    with pytest.raises(ConfigError, match="loss must be 'kl' .* got 'l1'"):
        StudentTrainConfig(loss="l1")


def test_other_dataset_still_refused(ensemble_store, tiny_data):
    from softtargets.errors import StoreMismatchError
    from softtargets.datasets.idx import IDXDataset
    from softtargets.read import DistillDataset, SoftTargets
    _, _, store = ensemble_store
    fewer = IDXDataset("mnist", data_dir=tiny_data.data_dir, limit=50)
    with pytest.raises(StoreMismatchError, match="n differs"):
        DistillDataset(fewer, SoftTargets(store.url, rule="arithmetic", temperature=2.0))


def test_damaged_member_chunk_is_refused(tiny_data, tmp_path):
    import shutil
    from softtargets.errors import StoreError
    split = load_split(tiny_data)
    write(tmp_path, tiny_data, teachers(tmp_path, split, seeds=(0, 1)), "dmg.zarr")
    shutil.rmtree(tmp_path / "dmg.zarr" / "member_logits" / "c" / "1")  # member 1's chunks
    view = open_targets(LogitStore.open(str(tmp_path / "dmg.zarr")), rule="arithmetic",
                        temperature=2.0)
    with pytest.raises(StoreError, match=r"chunk 0 of member_logits has missing or non-finite "
                                         r"rows for members \[1\]"):
        view.read_chunk(0)
