"""Sparse conversions (numpy): exact kept probabilities, tail masses, sampling, refusals."""

import numpy as np
import pytest

from softtargets.format import sparse as sp
from softtargets.errors import ConfigError, LogitValueError, SparseTemperatureError

TEMPS = (1.0, 4.0, 20.0)


def lm_logits(rows=64, classes=1000, seed=0):
    """Peaked, LM-like logits: a Zipf-like prior plus noise plus a few large values per row."""
    rng = np.random.default_rng(seed)
    prior = -1.1 * np.log(np.arange(1, classes + 1))
    z = prior + rng.normal(0, 1.5, size=(rows, classes))
    hot = rng.integers(0, classes, size=(rows, 3))
    z[np.arange(rows)[:, None], hot] += rng.uniform(6, 12, size=(rows, 3))
    return z.astype(np.float32)


def test_topk_kept_probabilities_are_exact_at_t1():
    z = lm_logits()
    rows = sp.to_topk(z, k=32, temperatures=TEMPS)
    dense = sp.dense_probs(z, temperature=1.0)  # softmax of the float16 values, float64
    np.testing.assert_array_equal(np.sort(rows.ids, 1), np.sort(np.argsort(-dense, 1)[:, :32], 1))
    kept = np.exp(rows.logits.astype(np.float64) - rows.lse[:, None])
    np.testing.assert_allclose(kept, np.take_along_axis(dense, rows.ids, 1), rtol=2e-6, atol=0)
    np.testing.assert_array_equal(rows.logits, np.take_along_axis(z.astype(np.float16), rows.ids, 1))
    assert rows.ids.dtype == np.int64 and rows.logits.dtype == np.float16
    assert (np.diff(rows.logits.astype(np.float32), axis=1) <= 0).all()  # sorted descending


@pytest.mark.parametrize("temperature", TEMPS)
def test_tail_mass_and_listed_probabilities_at_stored_temperatures(temperature):
    z = lm_logits(seed=1)
    rows = sp.to_topk(z, k=8, temperatures=TEMPS)
    dense = sp.dense_probs(z, temperature=temperature)
    kept = np.take_along_axis(dense, rows.ids, 1)
    j = TEMPS.index(temperature)
    np.testing.assert_allclose(rows.tail[:, j], 1.0 - kept.sum(1), rtol=1e-5, atol=1e-7)
    log_p = sp.listed_log_probs(rows, temperatures=TEMPS, temperature=temperature)
    np.testing.assert_allclose(np.exp(log_p), kept, rtol=1e-5, atol=0)
    full = sp.reconstruct(rows, num_classes=1000, temperatures=TEMPS, temperature=temperature)
    np.testing.assert_allclose(full.sum(1), 1.0, atol=1e-6)  # float32 tail


def test_tiny_tail_keeps_relative_precision():
    z = np.zeros((1, 50), np.float32)
    z[0, :4] = 40.0  # tail at T=1: 46 e^0 / (4 e^40 + 46) ~ 4.9e-17, far below float32 epsilon
    rows = sp.to_topk(z, k=4, temperatures=(1.0,))
    expected = 46.0 / (4.0 * np.exp(40.0) + 46.0)
    assert rows.tail[0, 0] == pytest.approx(expected, rel=1e-6)
    z[0, :4] = 200.0  # tail ~ e^-200: below float32, stored as 0, reconstructed finite
    rows = sp.to_topk(z, k=4, temperatures=(1.0,))
    assert rows.tail[0, 0] == 0.0
    full = sp.reconstruct(rows, num_classes=50, temperatures=(1.0,), temperature=1.0)
    assert 0 < full[0, 10] < 1e-45 and np.isfinite(sp.kl_rows(sp.dense_probs(z, temperature=1.0),
                                                              full)).all()


def test_k_at_least_c_keeps_everything_with_zero_tail():
    z = lm_logits(rows=4, classes=10)
    rows = sp.to_topk(z, k=128, temperatures=TEMPS)
    assert rows.ids.shape == (4, 10) and (rows.tail == 0).all()
    full = sp.reconstruct(rows, num_classes=10, temperatures=TEMPS, temperature=4.0)
    kl = sp.kl_rows(sp.dense_probs(z, temperature=4.0), full)
    assert np.abs(kl).max() < 1e-6


def test_ties_are_broken_by_lower_class_id():
    z = np.array([[1, 5, 5, 5, 5, 0], [3, 3, 3, 3, 3, 3]], np.float32)
    rows = sp.to_topk(z, k=3, temperatures=(1.0,))
    np.testing.assert_array_equal(rows.ids, [[1, 2, 3], [0, 1, 2]])


def test_unstored_temperature_is_refused_and_renormalise_is_explicit():
    rows = sp.to_topk(lm_logits(rows=3), k=8, temperatures=(1.0, 4.0))
    with pytest.raises(SparseTemperatureError, match=r"T=20 .*only at T in \[1.0, 4.0\].*--tail renormalise"):
        sp.listed_log_probs(rows, temperatures=(1.0, 4.0), temperature=20.0)
    with pytest.raises(SparseTemperatureError, match="rest"):
        sp.tail_at(rows, temperatures=(1.0, 4.0), temperature=20.0)
    renorm = np.exp(sp.renormalised_log_probs(rows, temperature=20.0))
    np.testing.assert_allclose(renorm.sum(1), 1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="temperatures must be finite and > 0"):
        sp.check_temperatures((1.0, -4.0))
    z = lm_logits(rows=2, classes=20)
    z[1, 3] = np.nan
    with pytest.raises(LogitValueError, match=r"non-finite logits .* rows \[1\]"):
        sp.to_topk(z, k=4, temperatures=(1.0,))
    assert sp.check_temperatures((20, 4)) == (1.0, 4.0, 20.0)
    assert [sp.smallest_uint(c) for c in (9, 255, 256, 31999, 70000)] == [
        "uint8", "uint8", "uint16", "uint16", "uint32"]


def sampled(z, *, draws=16, seed=3, sample_ids=None, temperatures=TEMPS, tau=1.0):
    ids = np.arange(len(z)) if sample_ids is None else sample_ids
    return sp.to_sampled(z, draws=draws, temperatures=temperatures, seed=seed, sample_ids=ids,
                         sample_temperature=tau)


def test_sampled_rows_are_distinct_ids_with_counts_and_exact_tail():
    z = lm_logits(rows=20, classes=300)
    rows = sampled(z)
    assert rows.ids.shape == (20, 16) and (rows.counts.sum(1) == 16).all()
    for r in range(20):
        listed = rows.ids[r][rows.mask[r]]
        assert (np.diff(listed) > 0).all()  # distinct, increasing
        assert (rows.ids[r][~rows.mask[r]] == 0).all()
        p = sp.dense_probs(z[r:r + 1], temperature=4.0)[0]
        assert rows.tail[r, 1] == pytest.approx(1 - p[listed].sum(), rel=1e-5, abs=1e-7)
    log_p = sp.listed_log_probs(rows, temperatures=TEMPS, temperature=1.0)
    dense = np.take_along_axis(sp.dense_probs(z, temperature=1.0), rows.ids, 1)
    np.testing.assert_allclose(np.exp(log_p)[rows.mask], dense[rows.mask], rtol=2e-6)


def test_sampling_depends_on_seed_and_sample_id_only():
    z = lm_logits(rows=10, classes=300)
    a = sampled(z, sample_ids=np.arange(100, 110))
    perm = np.random.default_rng(0).permutation(10)
    b = sampled(z[perm], sample_ids=np.arange(100, 110)[perm])  # other order, other blocks
    np.testing.assert_array_equal(a.ids[perm], b.ids)
    np.testing.assert_array_equal(a.counts[perm], b.counts)
    c = sampled(z, sample_ids=np.arange(100, 110), seed=4)
    assert not np.array_equal(a.ids, c.ids)


@pytest.mark.parametrize("temperature,tau", [(1.0, 1.0), (4.0, 1.0), (1.0, 4.0)])
def test_sampled_weights_are_unbiased(temperature, tau):
    """Mean of the weights over 3000 independent rows of one distribution -> p_T (fixed seed)."""
    n = 3000
    flat = np.random.default_rng(5).normal(0, 1.5, size=(1, 40)).astype(np.float32)
    z = np.repeat(flat, n, axis=0)
    rows = sampled(z, draws=4, sample_ids=np.arange(n), tau=tau)
    w = sp.sampled_weights(rows, temperatures=TEMPS, temperature=temperature,
                           sample_temperature=tau)  # (n, K)
    dense_w = np.zeros((n, 40))
    np.add.at(dense_w, (np.repeat(np.arange(n), rows.ids.shape[1]), rows.ids.ravel()), w.ravel())
    mean, se = dense_w.mean(0), dense_w.std(0, ddof=1) / np.sqrt(n)
    p = sp.dense_probs(z[:1], temperature=temperature)[0]
    z_scores = np.abs(mean - p) / np.maximum(se, 1e-12)
    assert z_scores.max() < 4.5, z_scores.max()
    assert np.abs(mean - p).sum() < 0.1  # measured 0.027-0.071 with this seed
    # the top-4 set is biased: its renormalised probabilities miss p by far more than that
    top = sp.to_topk(z[:1], k=4, temperatures=TEMPS)
    biased = np.zeros(40)
    biased[top.ids[0]] = np.exp(sp.renormalised_log_probs(top, temperature=temperature)[0])
    assert np.abs(biased - p).sum() > 4 * np.abs(mean - p).sum()
