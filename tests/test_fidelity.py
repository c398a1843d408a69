"""Student-to-ensemble fidelity (softtargets/recipes/hinton2015/fidelity.py), hand-computed."""

import numpy as np
import pytest

from softtargets.recipes.hinton2015.fidelity import fidelity


def test_fidelity_agreement_errors_and_kl_by_hand():
    log = np.log
    # two members, two rows, two classes; arithmetic mean: row 0 (0.7, 0.3), row 1 (0.2, 0.8)
    members = np.array([[log([0.5, 0.5]), log([0.2, 0.8])],
                        [log([0.9, 0.1]), log([0.2, 0.8])]])  # (M, N, C)
    student = np.array([log([0.7, 0.3]), log([0.6, 0.4])])  # (N, C): row 1 disagrees
    got = fidelity(student, members, np.array([0, 1]))
    # KL row 0: 0; row 1: 0.2 ln(0.2 / 0.6) + 0.8 ln(0.8 / 0.4) = 0.334795
    assert got == {"rows": 2, "student_errors": 1, "ensemble_errors": 0, "agreement": 0.5,
                   "kl": pytest.approx(0.334795 / 2, abs=1e-6)}


def test_fidelity_geometric_rule_means_logits():
    members = np.array([[[2.0, 0.0]], [[0.0, 0.0]]])  # mean logits (1, 0)
    got = fidelity(np.array([[1.0, 0.0]]), members, np.array([1]), rule="geometric")
    assert got["kl"] == pytest.approx(0.0, abs=1e-12) and got["agreement"] == 1.0
    assert got["student_errors"] == got["ensemble_errors"] == 1
