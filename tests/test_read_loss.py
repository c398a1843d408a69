"""distillation_loss of the read API against hand-computed values, one per target type."""

import math

import pytest
import torch

from softtargets.errors import ConfigError
from softtargets.read import DenseTarget, PositionTargets, SparseTargets, distillation_loss

LN = math.log
UNIFORM4 = torch.zeros(1, 4)  # student logits whose softmax is 1/4 per class at any T


def test_dense_logits_at_t_by_hand():
    # teacher [0, 2 ln 3] / T=2 -> p = (1/4, 3/4); student [0, 0] -> q = (1/2, 1/2)
    target = DenseTarget(2.0, logits=torch.tensor([[0.0, 2 * LN(3)]]))
    student = torch.zeros(1, 2, requires_grad=True)
    loss = distillation_loss(student, target, torch.tensor([1]), temperature=2.0, alpha=0.5)
    kl = 0.25 * LN(0.25 / 0.5) + 0.75 * LN(0.75 / 0.5)
    assert loss.item() == pytest.approx(0.5 * 4 * kl + 0.5 * LN(2), rel=1e-6)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_dense_log_probs_by_hand():
    target = DenseTarget(2.0, log_probs=torch.tensor([[LN(0.25), LN(0.75)]]))
    loss = distillation_loss(torch.zeros(1, 2), target, torch.tensor([0]), temperature=2.0,
                             alpha=1.0)
    assert loss.item() == pytest.approx(4 * (0.25 * LN(0.5) + 0.75 * LN(1.5)), rel=1e-6)


def test_topk_rest_bucket_by_hand():
    # listed classes 0 and 2 with p = 0.5, 0.2; the other two hold 0.3; student q = 1/4 each
    target = SparseTargets("topk", torch.tensor([[0, 2]]), torch.tensor([[LN(0.5), LN(0.2)]]),
                           tail=torch.tensor([0.3]), temperature=1.0)
    loss = distillation_loss(UNIFORM4, target, torch.tensor([0]), temperature=1.0, alpha=1.0)
    kl = 0.5 * LN(0.5 / 0.25) + 0.2 * LN(0.2 / 0.25) + 0.3 * LN(0.3 / 0.5)
    assert loss.item() == pytest.approx(kl, rel=1e-6)


def test_topk_renormalised_by_hand():
    # teacher renormalised over {0, 2}: (5/7, 2/7); student (1, 5, 3, 7)/16 -> (1/4, 3/4) there
    target = SparseTargets("topk", torch.tensor([[0, 2]]),
                           torch.tensor([[LN(5 / 7), LN(2 / 7)]]), temperature=1.0)
    student = torch.tensor([[0.0, LN(5), LN(3), LN(7)]])
    loss = distillation_loss(student, target, torch.tensor([1]), temperature=1.0, alpha=1.0)
    kl = 5 / 7 * LN((5 / 7) / 0.25) + 2 / 7 * LN((2 / 7) / 0.75)
    assert loss.item() == pytest.approx(kl, rel=1e-6)


def test_sampled_weights_by_hand_with_t_squared():
    target = SparseTargets("sampled", torch.tensor([[1, 3]]), torch.tensor([[LN(0.5), LN(0.1)]]),
                           weights=torch.tensor([[0.6, 0.4]]), temperature=2.0)
    loss = distillation_loss(UNIFORM4, target, torch.tensor([2]), temperature=2.0, alpha=0.25)
    soft = 0.6 * (LN(0.5) - LN(0.25)) + 0.4 * (LN(0.1) - LN(0.25))
    assert loss.item() == pytest.approx(0.25 * 4 * soft + 0.75 * LN(4), rel=1e-6)


def positions():
    """One sequence of two positions over 4 classes, top-k targets with a rest bucket."""
    return PositionTargets(SparseTargets(
        "topk", torch.tensor([[[0, 2], [1, 3]]]),
        torch.log(torch.tensor([[[0.5, 0.2], [0.6, 0.1]]])),
        tail=torch.tensor([[0.3, 0.3]]), temperature=1.0))


KL0 = 0.5 * LN(2) + 0.2 * LN(0.8) + 0.3 * LN(0.6)  # position 0 against a uniform student
KL1 = 0.6 * LN(2.4) + 0.1 * LN(0.4) + 0.3 * LN(0.6)  # position 1


def test_per_position_mean_over_positions_and_mask_by_hand():
    student, labels = torch.zeros(1, 2, 4), torch.tensor([[0, 3]])
    both = distillation_loss(student, positions(), labels, temperature=1.0, alpha=0.5)
    assert both.item() == pytest.approx(0.5 * (KL0 + KL1) / 2 + 0.5 * LN(4), rel=1e-6)
    first = distillation_loss(student, positions(), labels, temperature=1.0, alpha=1.0,
                              mask=torch.tensor([[True, False]]))
    assert first.item() == pytest.approx(KL0, rel=1e-6)


def test_refusals_are_one_line():
    dense = DenseTarget(2.0, logits=torch.zeros(1, 4))
    y = torch.tensor([0])
    with pytest.raises(ConfigError, match=r"the targets were read at T=2 but the loss is at "
                       r"T=3; read them with SoftTargets\(\.\.\., temperature=3\)"):
        distillation_loss(UNIFORM4, dense, y, temperature=3.0, alpha=0.5)
    with pytest.raises(ConfigError, match="mask= selects positions of sequences; it applies to "
                       "per-position targets only, not DenseTarget"):
        distillation_loss(UNIFORM4, dense, y, temperature=2.0, alpha=0.5,
                          mask=torch.tensor([True]))
    with pytest.raises(ConfigError, match="mask selects no position"):
        distillation_loss(torch.zeros(1, 2, 4), positions(), torch.zeros(1, 2, dtype=torch.long),
                          temperature=1.0, alpha=1.0, mask=torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match=r"per-position targets of shape \(1, 2\) need student "
                       r"logits \(B, L, C\) and labels \(B, L\) of that \(B, L\), got "
                       r"\(1, 3, 4\)"):
        distillation_loss(torch.zeros(1, 3, 4), positions(), torch.zeros(1, 3, dtype=torch.long),
                          temperature=1.0, alpha=1.0)
    with pytest.raises(ConfigError, match=r"student logits \(2, 4\) do not match sparse targets "
                       "of 1 rows"):
        distillation_loss(torch.zeros(2, 4), positions().sparse[0, :1], torch.tensor([0, 1]),
                          temperature=1.0, alpha=1.0)
    with pytest.raises(ConfigError, match="targets must be a DenseTarget, SparseTargets or "
                       "PositionTargets"):
        distillation_loss(UNIFORM4, torch.zeros(1, 4), y, temperature=1.0, alpha=1.0)
    with pytest.raises(ConfigError, match=r"alpha .* must be in \[0, 1\], got 2"):
        distillation_loss(UNIFORM4, dense, y, temperature=2.0, alpha=2)


def test_mse_dense_logits_by_hand():
    # s = [1, 0], t = [0, 2]: mean over classes of (1^2 + 2^2) = 2.5; CE(y=1, [1, 0]) = ln(1+e)
    target = DenseTarget(4.0, logits=torch.tensor([[0.0, 2.0]]))
    student = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = distillation_loss(student, target, torch.tensor([1]), temperature=4.0, alpha=0.5,
                             loss="mse")
    assert loss.item() == pytest.approx(0.5 * 2.5 + 0.5 * LN(1 + math.e), rel=1e-6)
    loss.backward()  # d/ds of 0.5 * mean((s - t)^2) alone: (s - t) / 2 = [0.5, -1]
    ce_grad = torch.softmax(torch.tensor([1.0, 0.0]), 0) - torch.tensor([0.0, 1.0])
    assert student.grad[0].tolist() == pytest.approx((torch.tensor([0.5, -1.0])
                                                      + 0.5 * ce_grad).tolist(), rel=1e-6)


def test_mse_ignores_temperature_for_logits():
    target = DenseTarget(1.0, logits=torch.tensor([[0.0, 3.0, 0.0]]))
    loss = distillation_loss(torch.zeros(1, 3), target, torch.tensor([0]), temperature=1.0,
                             alpha=1.0, loss="mse")
    assert loss.item() == pytest.approx(3.0)  # 9 / 3 classes


def test_mse_log_probs_centred_by_hand():
    # p = (1/4, 3/4) at T=2 -> T log p = (2 ln 1/4, 2 ln 3/4), centred: (-ln 3, ln 3);
    # student (5, 5) centred: (0, 0) -> mean of (ln 3)^2 over the 2 classes
    target = DenseTarget(2.0, log_probs=torch.tensor([[LN(0.25), LN(0.75)]]))
    loss = distillation_loss(torch.full((1, 2), 5.0), target, torch.tensor([0]),
                             temperature=2.0, alpha=1.0, loss="mse")
    assert loss.item() == pytest.approx(LN(3) ** 2, rel=1e-6)


def test_mse_refuses_sparse_targets_and_unknown_loss():
    target = SparseTargets("topk", torch.tensor([[0, 2]]), torch.tensor([[LN(0.5), LN(0.2)]]),
                           tail=torch.tensor([0.3]), temperature=1.0)
    with pytest.raises(ConfigError, match="loss='mse' matches dense logits; SparseTargets"):
        distillation_loss(UNIFORM4, target, torch.tensor([0]), temperature=1.0, alpha=1.0,
                          loss="mse")
    dense = DenseTarget(1.0, logits=torch.zeros(1, 4))
    with pytest.raises(ConfigError, match="loss must be 'kl' .* or 'mse' .*, got 'l2'"):
        distillation_loss(UNIFORM4, dense, torch.tensor([0]), temperature=1.0, alpha=1.0,
                          loss="l2")


def test_soft_labels_weight_the_hard_term():
    # labels as probabilities (mixed views): CE = -(0.25 ln q0 + 0.75 ln q1), q uniform -> ln 2
    dense = DenseTarget(1.0, logits=torch.zeros(1, 2))
    loss = distillation_loss(torch.zeros(1, 2), dense, torch.tensor([[0.25, 0.75]]),
                             temperature=1.0, alpha=0.0, loss="mse")
    assert loss.item() == pytest.approx(LN(2), rel=1e-6)
