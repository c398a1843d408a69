"""SoftTargets: targets by sample id for every store kind, read through the checked readers."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import run_cli
from read_helpers import identity, write_dense, write_positions
from softtargets.format import sparse as sp
from softtargets.format import sparse_store as ss
from softtargets.read.distill import sparse_targets
from softtargets.errors import (ConfigError, SparseTemperatureError, StoreError,
                                StoreMismatchError)
from softtargets.read import DenseTarget, PositionTargets, SoftTargets, SparseTargets
from stage1_helpers import make_teacher, stage1_args


@pytest.fixture
def teachers(tmp_path, tiny_data):
    return (make_teacher(tmp_path / "a.pt", tiny_data, seed=0),
            make_teacher(tmp_path / "b.pt", tiny_data, seed=1))


def stage1(tiny_data, teachers, store, *extra):
    """A store of the 96-row tiny dataset (chunks of 8 rows) written by the CLI."""
    run_cli(*stage1_args(tiny_data, teachers[0], store, *extra))
    return zarr.open_group(str(store), mode="r")


def log_softmax(z, t):
    return torch.log_softmax(torch.as_tensor(np.asarray(z, np.float64)) / t, dim=-1)


def test_dense_targets_are_looked_up_by_sample_id_not_row(tmp_path):
    ids = np.array([7, 2, 9, 0, 4, 1, 8, 3, 6, 5])  # rows in a shuffled id order
    logits = ids[:, None] + np.arange(5) / 10.0  # (10, 5): row of id i is i, i+.1, ..., i+.4
    write_dense(tmp_path / "d.zarr", ids=ids, logits=logits, dataset=identity(12))
    t = SoftTargets(tmp_path / "d.zarr", temperature=3.0)
    assert (len(t), t.kind, t.num_classes, t.rule, t.positions) == (10, "dense", 5, None, None)
    assert t.meta.n == 10 and t.meta.dataset["name"] == "synthetic" and t.temperature == 3.0
    np.testing.assert_array_equal(t.sample_ids, np.arange(10))
    assert not t.sample_ids.flags.writeable  # lookups rely on it
    one = t[7]
    assert isinstance(one, DenseTarget) and one.temperature == 3.0 and one.log_probs is None
    assert one.logits.dtype == torch.float16 and one.logits.shape == (5,)
    assert one.logits.untyped_storage().nbytes() == 5 * 2  # its own copy, not the whole table
    np.testing.assert_array_equal(one.logits.float().numpy(),
                                  np.float16([7.0, 7.1, 7.2, 7.3, 7.4]))
    batch = t.batch(torch.tensor([3, 9, 3]))
    np.testing.assert_array_equal(batch.logits[:, 0].float().numpy(), [3.0, 9.0, 3.0])
    assert [float(x.logits[1]) for x in t][:3] == [float(np.float16(v)) for v in (0.1, 1.1, 2.1)]
    with pytest.raises(StoreMismatchError, match=r"has no target for sample id\(s\) \[11\] "
                       r"\(it has 10 samples, ids 0\.\.9\)"):
        t[11]
    with pytest.raises(ConfigError, match="targets.batch takes a 1-d sequence of integer"):
        t.batch(np.array([0.5]))
    with pytest.raises(ConfigError, match=r"targets\[i\] takes one integer sample id, got str"):
        t["3"]


def test_pickle_holds_the_url_and_options_only(tmp_path):
    ids = np.arange(8)
    logits = np.tile(np.arange(5.0), (8, 1)) + ids[:, None]
    write_dense(tmp_path / "d.zarr", ids=ids, logits=logits, dataset=identity(8))
    t = SoftTargets(tmp_path / "d.zarr", temperature=2.0)
    t.batch([0, 1])  # loaded here; the pickle still carries no targets
    assert t.__getstate__() == {"url": str(tmp_path / "d.zarr"), "options": t.options}
    again = pickle.loads(pickle.dumps(t))
    assert again._table is None and again.temperature == 2.0
    np.testing.assert_array_equal(again[5].logits.numpy(), t[5].logits.numpy())


def test_every_read_goes_through_the_chunk_checks(tmp_path):
    write_dense(tmp_path / "d.zarr", ids=np.arange(8), logits=np.arange(40.0).reshape(8, 5),
                dataset=identity(8))
    a, b = tmp_path / "d.zarr/logits/c/0/0", tmp_path / "d.zarr/logits/c/1/0"
    a.rename(tmp_path / "x")
    b.rename(a)
    (tmp_path / "x").rename(b)  # two whole, valid chunks swapped
    t = SoftTargets(tmp_path / "d.zarr")
    with pytest.raises(StoreError, match=r"chunk 0 \(rows 0\.\.3\) of 'logits' does not match "
                       "its digest"):
        t[0]


def test_bad_options_are_refused_at_construction(tmp_path, tiny_data, teachers):
    stage1(tiny_data, teachers, tmp_path / "d.zarr")
    with pytest.raises(ConfigError, match=r"temperature must be a finite number > 0, got 0"):
        SoftTargets(tmp_path / "d.zarr", temperature=0)
    with pytest.raises(ConfigError, match="rule='geometric' combines an ensemble's members, but "
                       r"store .* holds one teacher's logits; drop rule="):
        SoftTargets(tmp_path / "d.zarr", rule="geometric")
    with pytest.raises(ConfigError, match=r"tail must be one of \['rest', 'renormalise'\]"):
        SoftTargets(tmp_path / "d.zarr", tail="drop")
    with pytest.raises(ConfigError, match="holds no augmented views .*; view 1 does not exist"):
        SoftTargets(tmp_path / "d.zarr", view=1)
    with pytest.raises(ConfigError, match="SoftTargets takes a store path or URL, got int"):
        SoftTargets(3)
    with pytest.raises(StoreError, match="no store at"):
        SoftTargets(tmp_path / "missing.zarr")


@pytest.mark.parametrize("rule", [None, "arithmetic", "geometric"])
def test_ensemble_members_are_combined_at_t(tmp_path, tiny_data, teachers, rule):
    g = stage1(tiny_data, teachers, tmp_path / "e.zarr", "--teacher", teachers[1])
    t = SoftTargets(tmp_path / "e.zarr", temperature=4.0, rule=rule)
    assert t.rule == (rule or "arithmetic") and len(t) == 96  # the store's default rule
    z = g["member_logits"][:, [5, 60]].astype(np.float64)  # (2 members, 2 rows, 10)
    if t.rule == "arithmetic":  # log mean_m softmax(z_m / T)
        want = torch.log(log_softmax(z, 4.0).exp().mean(0))
    else:  # softmax(mean_m z_m / T)
        want = log_softmax(z.mean(0), 4.0)
    got = t.batch([5, 60])
    assert got.logits is None and got.log_probs.dtype == torch.float32
    np.testing.assert_allclose(got.log_probs.numpy(), want.numpy(), rtol=1e-6)


def test_combined_only_store_refuses_another_t(tmp_path, tiny_data, teachers):
    g = stage1(tiny_data, teachers, tmp_path / "c.zarr", "--teacher", teachers[1], "--combine",
               "arithmetic", "--store-combined-only", "-T", 4)
    t = SoftTargets(tmp_path / "c.zarr", temperature=4.0)
    np.testing.assert_allclose(t[3].log_probs.numpy(), log_softmax(g["logits"][3], 4.0).numpy(),
                               rtol=1e-6)
    with pytest.raises(ConfigError, match=r"holds the arithmetic combination at T=4 only .* "
                       "cannot be read at T=2"):
        SoftTargets(tmp_path / "c.zarr", temperature=2.0)


def test_views_store_reads_view_zero_or_the_chosen_view(tmp_path, tiny_data, teachers):
    g = stage1(tiny_data, teachers, tmp_path / "v.zarr", "--views", 3, "--augment", "shift=2")
    views = np.asarray(g["view_logits"][:])  # (96, 3, 10)
    plain = SoftTargets(tmp_path / "v.zarr", temperature=2.0)
    np.testing.assert_array_equal(plain.batch(range(96)).logits.numpy(), views[:, 0])
    second = SoftTargets(tmp_path / "v.zarr", temperature=2.0, view=2)
    np.testing.assert_array_equal(second[40].logits.numpy(), views[40, 2])
    assert not np.array_equal(views[:, 2], views[:, 0])
    with pytest.raises(ConfigError, match="holds 3 augmented views per sample; view 3 is not "
                       r"one of them: choose 0\.\.2"):
        SoftTargets(tmp_path / "v.zarr", view=3)


def test_ensemble_views_store_combines_the_chosen_view(tmp_path, tiny_data, teachers):
    g = stage1(tiny_data, teachers, tmp_path / "ev.zarr", "--teacher", teachers[1], "--views", 2)
    t = SoftTargets(tmp_path / "ev.zarr", temperature=2.0, rule="geometric", view=1)
    z = g["member_view_logits"][:, [9], 1].astype(np.float64)  # (2, 1, 10): view 1 of row 9
    np.testing.assert_allclose(t[9].log_probs.numpy(), log_softmax(z.mean(0), 2.0)[0].numpy(),
                               rtol=1e-6)
    view0 = SoftTargets(tmp_path / "ev.zarr", temperature=2.0, rule="geometric")
    z0 = g["member_logits"][:, [9]].astype(np.float64)
    np.testing.assert_allclose(view0[9].log_probs.numpy(), log_softmax(z0.mean(0), 2)[0].numpy(),
                               rtol=1e-6)


@pytest.mark.parametrize("kind", ["topk", "sampled"])
def test_sparse_targets_are_the_sparse_maths_at_t(tmp_path, tiny_data, teachers, kind):
    flag = ["--topk", 4] if kind == "topk" else ["--sample", 6, "--sample-temperature", 2]
    stage1(tiny_data, teachers, tmp_path / "s.zarr", *flag, "--temperatures", "2")
    ids, _, rows = ss.SparseStore.open(str(tmp_path / "s.zarr")).read_all()
    want = sparse_targets(rows, kind=kind, temperatures=(1.0, 2.0), temperature=2.0,
                          sample_temperature=2.0)
    t = SoftTargets(tmp_path / "s.zarr", temperature=2.0)
    assert t.kind == kind and len(t) == 96
    r = int(np.flatnonzero(ids == 17)[0])
    got = t[17]
    assert isinstance(got, SparseTargets) and got.temperature == 2.0
    for name in ("ids", "log_probs", "tail", "weights"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None and b is None) or torch.equal(a, b[r]), name
    with pytest.raises(SparseTemperatureError, match="at T=3 needs the tail mass at that "
                       r"temperature, but the store holds it only at T in \[1\.0, 2\.0\]"):
        SoftTargets(tmp_path / "s.zarr", temperature=3.0)


def test_topk_renormalise_reads_any_t(tmp_path, tiny_data, teachers):
    stage1(tiny_data, teachers, tmp_path / "s.zarr", "--topk", 3)
    _, _, rows = ss.SparseStore.open(str(tmp_path / "s.zarr")).read_all()
    t = SoftTargets(tmp_path / "s.zarr", temperature=7.0, tail="renormalise")
    got = t.batch([0, 1])
    assert got.tail is None
    z = torch.from_numpy(rows.logits[:2].astype(np.float64))  # sample ids 0, 1 are rows 0, 1
    np.testing.assert_allclose(got.log_probs.numpy(), torch.log_softmax(z / 7.0, 1).numpy(),
                               rtol=1e-6)


def write_sequences(url, keys, *, n_seq, classes=12, seed=0):
    """A per-position top-k store (K = 3) of rows keys (R, 2); returns its dense values."""
    z = np.random.default_rng(seed).normal(0, 2, size=(len(keys), classes)).astype(np.float32)
    write_positions(url, keys=keys, logits=z, dataset=identity(n_seq, "tokens"))
    return z


def test_per_position_store_is_read_as_sequences_in_position_order(tmp_path):
    keys = np.array([(s, p) for s in range(3) for p in range(4)])
    keys = keys[np.random.default_rng(1).permutation(len(keys))]  # rows in no particular order
    z = write_sequences(tmp_path / "p.zarr", keys, n_seq=3)
    t = SoftTargets(tmp_path / "p.zarr", temperature=2.0)
    assert (len(t), t.positions, t.kind) == (3, 4, "topk")
    np.testing.assert_array_equal(t.sample_ids, [0, 1, 2])
    seq = t[1]
    assert isinstance(seq, PositionTargets) and seq.sparse.ids.shape == (4, 3)
    want = sparse_targets(sp.to_topk(z, k=3, temperatures=(1.0, 2.0)), kind="topk",
                          temperatures=(1.0, 2.0), temperature=2.0)
    for p in range(4):
        r = int(np.flatnonzero((keys[:, 0] == 1) & (keys[:, 1] == p))[0])
        assert torch.equal(seq.sparse.ids[p], want.ids[r])
        assert torch.equal(seq.sparse.log_probs[p], want.log_probs[r])
        assert torch.equal(seq.sparse.tail[p], want.tail[r])
    batch = t.batch([2, 0])
    assert batch.sparse.ids.shape == (2, 4, 3) and batch.sparse.tail.shape == (2, 4)
    assert torch.equal(batch.sparse.ids[1], t[0].sparse.ids)


def test_per_position_store_with_a_gap_is_refused(tmp_path):
    keys = np.array([(s, p) for s in range(3) for p in range(4) if (s, p) != (1, 2)])
    write_sequences(tmp_path / "gap.zarr", keys, n_seq=3)
    t = SoftTargets(tmp_path / "gap.zarr", temperature=2.0)
    with pytest.raises(StoreError, match=r"sequence 1 \(sample_id\) has 3 positions \[0, 1, 3\], "
                       r"not 0\.\.3; every sequence needs one row per position 0\.\.L-1"):
        t[0]
    keys = np.array([(s, p if s != 2 else [0, 1, 2, 5][p]) for s in range(3) for p in range(4)])
    write_sequences(tmp_path / "off.zarr", keys, n_seq=3)
    with pytest.raises(StoreError, match=r"sequence 2 \(sample_id\) has 4 positions "
                       r"\[0, 1, 2, 5\], not 0\.\.3"):
        len(SoftTargets(tmp_path / "off.zarr", temperature=2.0))


def test_targets_move_to_a_device():
    t = DenseTarget(2.0, logits=torch.zeros(2, 3))
    assert t.to("cpu").logits.device.type == "cpu" and t.to("meta").logits.device.type == "meta"
    s = PositionTargets(SparseTargets("topk", torch.zeros(2, 4, 3, dtype=torch.long),
                                      torch.zeros(2, 4, 3), tail=torch.zeros(2, 4),
                                      temperature=2.0))
    moved = s.to("meta")
    assert moved.sparse.tail.device.type == "meta" and moved.temperature == 2.0
    with pytest.raises(ConfigError, match="either logits or log_probs, exactly one"):
        DenseTarget(1.0)


def test_missing_store_path_names_it(tmp_path):
    with pytest.raises(StoreError, match=str(Path(tmp_path / "nope.zarr")).replace(".", r"\.")):
        SoftTargets(tmp_path / "nope.zarr")
