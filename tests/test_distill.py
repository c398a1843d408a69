import math

import pytest
import torch

from softtargets.distill import distillation_loss, soft_target_loss
from softtargets.errors import ConfigError

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


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ConfigError, match=f"temperature T must be > 0, got {temperature}"):
        soft_target_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=temperature)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_must_be_in_unit_interval(alpha):
    with pytest.raises(ConfigError, match=rf"alpha .* must be in \[0, 1\], got {alpha}"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]),
                          temperature=1.0, alpha=alpha)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"student logits \(2, 3\) and teacher logits \(2, 4\)"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4), temperature=1.0)
