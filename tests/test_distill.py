import math

import numpy as np
import pytest
import torch

from softtargets.format import sparse
from softtargets.read.distill import (distillation_loss, sampled_soft_target_loss, soft_target_loss,
                                 sparse_distillation_loss, sparse_targets, topk_soft_target_loss)
from softtargets.errors import ConfigError, SparseTemperatureError

LN3 = math.log(3.0)
# p_t = softmax([ln 3, 0]) = [0.75, 0.25]; p_s = softmax([0, 0]) = [0.5, 0.5]
KL = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812...


def test_soft_term_against_hand_computed_kl():
    s = torch.zeros(1, 2)
    t = torch.tensor([[LN3, 0.0]])
    assert soft_target_loss(s, t, temperature=1.0).item() == pytest.approx(0.1308120, abs=1e-6)
    assert KL == pytest.approx(0.1308120, abs=1e-6)
    # At T=2 the same distributions need logits 2x larger; the loss is then scaled by T^2 = 4.
    t2 = torch.tensor([[2 * LN3, 0.0]])
    assert soft_target_loss(s, t2, temperature=2.0).item() == pytest.approx(4 * KL, abs=1e-5)


def test_combined_loss_hand_computed():
    s = torch.zeros(1, 2)
    t = torch.tensor([[2 * LN3, 0.0]])
    y = torch.tensor([0])
    got = distillation_loss(s, t, y, temperature=2.0, alpha=0.5).item()
    assert got == pytest.approx(0.5 * 4 * KL + 0.5 * math.log(2.0), abs=1e-5)  # 0.608198
    assert got == pytest.approx(0.608198, abs=1e-5)


def test_alpha_endpoints():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    ce = torch.nn.functional.cross_entropy(s, y)
    assert distillation_loss(s, t, y, temperature=3.0, alpha=0.0).item() == pytest.approx(ce.item())
    assert distillation_loss(s, t, y, temperature=3.0, alpha=1.0).item() == pytest.approx(
        soft_target_loss(s, t, temperature=3.0).item())


def test_batch_mean_and_identical_logits_give_zero():
    s = torch.randn(8, 10)
    assert soft_target_loss(s, s.clone(), temperature=5.0).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(8, 10)
    whole = soft_target_loss(s, t, temperature=4.0)
    halves = (soft_target_loss(s[:4], t[:4], temperature=4.0)
              + soft_target_loss(s[4:], t[4:], temperature=4.0)) / 2
    assert whole.item() == pytest.approx(halves.item(), rel=1e-5)


def test_t_squared_keeps_gradient_magnitude_independent_of_t():
    """Hinton et al. eq. 3: dC/dz ~ (z - v) / (N T^2) for large T, so T^2 * C has a T-free gradient."""
    torch.manual_seed(0)
    t = torch.randn(16, 10)
    grads = {}
    for temperature in (10.0, 100.0):
        s = torch.randn(16, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
        soft_target_loss(s, t, temperature=temperature).backward()
        grads[temperature] = s.grad.norm().item()
    assert grads[100.0] == pytest.approx(grads[10.0], rel=0.02)
    # and the high-temperature limit is matching zero-mean logits: grad = (s - t - mean) / (N * C)
    s = torch.randn(16, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
    soft_target_loss(s, t, temperature=1000.0).backward()
    d = s.detach() - t
    d = d - d.mean(dim=1, keepdim=True)
    torch.testing.assert_close(s.grad, d / (16 * 10), rtol=1e-2, atol=1e-5)


def test_fp16_teacher_logits_are_accepted():
    s = torch.randn(3, 4)
    t = torch.randn(3, 4).half()
    assert torch.isfinite(soft_target_loss(s, t, temperature=2.0))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ConfigError, match=f"temperature T must be finite and > 0, got "
                       f"{temperature}; the paper uses T in"):
        soft_target_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_must_be_in_unit_interval(alpha):
    with pytest.raises(ConfigError, match=rf"alpha .* must be in \[0, 1\], got {alpha}"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]),
                          temperature=1.0, alpha=alpha)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\)"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4), temperature=1.0)


# ---- sparse targets ----

def sparse_rows(z, *, kind, k, temps=(1.0, 4.0), ids=None, seed=0):
    if kind == "topk":
        return sparse.to_topk(z, k=k, temperatures=temps)
    ids = np.arange(len(z)) if ids is None else ids
    return sparse.to_sampled(z, draws=k, temperatures=temps, seed=seed, sample_ids=ids)


@pytest.mark.parametrize("tail", ["rest", "renormalise"])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_topk_with_every_class_equals_the_dense_loss(tail, temperature):
    z = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * 3
    s = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    rows = sparse_rows(z.numpy(), kind="topk", k=10)
    t = sparse_targets(rows, kind="topk", temperatures=(1.0, 4.0), temperature=temperature,
                       tail=tail)
    dense = soft_target_loss(s, z.half().float(), temperature=temperature)
    got = topk_soft_target_loss(s, t, temperature=temperature)
    assert torch.isfinite(got) and got.item() == pytest.approx(dense.item(), rel=1e-5)


def test_rest_bucket_hand_computed():
    z = np.log(np.array([[0.5, 0.3, 0.1, 0.1]]))  # teacher p; keep the top 2, tail 0.2
    s = torch.log(torch.tensor([[0.25, 0.25, 0.25, 0.25]]))
    t = sparse_targets(sparse_rows(z, kind="topk", k=2), kind="topk", temperatures=(1.0, 4.0),
                       temperature=1.0)
    want = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert topk_soft_target_loss(s, t, temperature=1.0).item() == pytest.approx(want, rel=1e-3)
    r = sparse_targets(sparse_rows(z, kind="topk", k=2), kind="topk", temperatures=(1.0, 4.0),
                       temperature=1.0, tail="renormalise")
    want = 0.625 * math.log(0.625 / 0.5) + 0.375 * math.log(0.375 / 0.5)
    assert topk_soft_target_loss(s, r, temperature=1.0).item() == pytest.approx(want, rel=1e-3)


def test_unstored_temperature_is_refused_not_silent():
    rows = sparse_rows(np.random.default_rng(0).normal(size=(3, 20)), kind="topk", k=4)
    with pytest.raises(SparseTemperatureError, match=r"T=20 .*only at T in \[1.0, 4.0\]"):
        sparse_targets(rows, kind="topk", temperatures=(1.0, 4.0), temperature=20.0)
    ok = sparse_targets(rows, kind="topk", temperatures=(1.0, 4.0), temperature=20.0,
                        tail="renormalise")
    assert ok.tail is None
    srows = sparse_rows(np.random.default_rng(0).normal(size=(3, 20)), kind="sampled", k=4)
    with pytest.raises(SparseTemperatureError, match="T=20"):
        sparse_targets(srows, kind="sampled", temperatures=(1.0, 4.0), temperature=20.0,
                       sample_temperature=1.0)
    with pytest.raises(ConfigError, match="tail must be one of"):
        sparse_targets(rows, kind="topk", temperatures=(1.0,), temperature=1.0, tail="drop")


def mean_grad(student, targets, loss_fn, temperature):
    s = student.clone().requires_grad_(True)  # (n, C), one copy of the student row per sample
    loss_fn(s, targets, temperature=temperature).backward()
    g = s.grad * len(s)  # per-row gradients of the batch mean
    return g.mean(0), g.std(0) / math.sqrt(len(s))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_sampled_gradient_is_unbiased_and_topk_is_not(temperature):
    """Fixed seeds; 4000 rows of one teacher distribution, 6 draws each (C = 30)."""
    n, c = 4000, 30
    z = np.repeat(np.random.default_rng(2).normal(0, 1, size=(1, c)), n, axis=0)
    student = torch.randn(1, c, generator=torch.Generator().manual_seed(3)).repeat(n, 1)
    s = student[:1].clone().requires_grad_(True)
    soft_target_loss(s, torch.from_numpy(z[:1]).half().float(), temperature=temperature).backward()
    exact = s.grad[0]
    t = sparse_targets(sparse_rows(z, kind="sampled", k=6, seed=9), kind="sampled",
                       temperatures=(1.0, 4.0), temperature=temperature, sample_temperature=1.0)
    mean, se = mean_grad(student, t, sampled_soft_target_loss, temperature)
    assert ((mean - exact).abs() / se.clamp_min(1e-9)).max() < 4.5
    top = sparse_targets(sparse_rows(z[:1], kind="topk", k=6), kind="topk",
                         temperatures=(1.0, 4.0), temperature=temperature, tail="renormalise")
    s = student[:1].clone().requires_grad_(True)
    topk_soft_target_loss(s, top, temperature=temperature).backward()
    bias = (s.grad[0] - exact).abs().sum()
    assert bias > 3 * (mean - exact).abs().sum()  # top-k is biased, the sampled estimate is not


def test_sampled_loss_estimates_the_kl():
    n, c = 3000, 30
    z = np.repeat(np.random.default_rng(4).normal(0, 1, size=(1, c)), n, axis=0)
    student = torch.randn(1, c, generator=torch.Generator().manual_seed(5)).repeat(n, 1)
    t = sparse_targets(sparse_rows(z, kind="sampled", k=6, seed=1), kind="sampled",
                       temperatures=(1.0, 4.0), temperature=4.0, sample_temperature=1.0)
    est = sampled_soft_target_loss(student, t, temperature=4.0).item()
    exact = soft_target_loss(student[:1], torch.from_numpy(z[:1]).half().float(),
                             temperature=4.0).item()
    assert est == pytest.approx(exact, rel=0.1)


def test_sparse_distillation_loss_mixes_hard_labels():
    z = np.random.default_rng(0).normal(size=(4, 10))
    s = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    t = sparse_targets(sparse_rows(z, kind="topk", k=3), kind="topk", temperatures=(1.0, 4.0),
                       temperature=4.0)
    got = sparse_distillation_loss(s, t, y, temperature=4.0, alpha=0.7).item()
    want = (0.7 * topk_soft_target_loss(s, t, temperature=4.0)
            + 0.3 * torch.nn.functional.cross_entropy(s, y)).item()
    assert got == pytest.approx(want, rel=1e-6)
    picked = t[torch.tensor([2, 0])]
    assert torch.equal(picked.ids, t.ids[[2, 0]]) and torch.equal(picked.tail, t.tail[[2, 0]])
