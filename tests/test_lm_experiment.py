"""The LM experiment (softtargets/recipes/lm/experiment.py): a tiny run end to end, resumed
from its saved steps, and the summary's arithmetic by hand."""

from __future__ import annotations

import json
import math

import pytest

from lm_helpers import one_thread, tiny_corpus, tiny_teacher  # noqa: F401 (fixtures)
from softtargets.recipes.lm import ExperimentConfig, run_experiment
from softtargets.recipes.lm import experiment as exp

TINY = ExperimentConfig(arms=("hard", "topk8"), seeds=(0,), seq_len=16, sequences=8, steps=3,
                        batch_size=4, n_layer=1, n_head=1, n_embd=16, eval_sequences=8)


def test_a_tiny_experiment_runs_and_resumes_from_its_saved_steps(tiny_corpus, tiny_teacher,
                                                                 tmp_path, monkeypatch):
    summary = run_experiment(tiny_corpus.root, tiny_teacher, tmp_path, config=TINY)
    topk = summary["arms"]["topk8"]
    assert topk["seeds"] == 1 and topk["stage1"]["tokens"] == 8 * 16
    assert topk["stage1"]["bytes_per_token"] > topk["stage1"]["data_bytes_per_token"] > 0
    assert summary["arms"]["hard"]["stage1"] is None
    assert "| topk8 |" in (tmp_path / "results.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished student was trained again")

    monkeypatch.setattr(exp, "train_student", no_training)
    monkeypatch.setattr(exp, "_stage1", no_training)
    assert run_experiment(tiny_corpus.root, tiny_teacher, tmp_path, config=TINY) == \
        json.loads((tmp_path / "results.json").read_text())


def test_the_summary_by_hand():
    cfg = ExperimentConfig(arms=("hard", "dense", "topk8"), seeds=(0, 1))
    runs = {f"{a}-s{s}": {"val_loss": v, "train_tokens_per_s": 100.0}
            for a, vs in {"hard": (3.0, 3.2), "dense": (2.0, 2.2), "topk8": (2.5, 2.7)}.items()
            for s, v in enumerate(vs)}
    arms = exp.summarize(cfg, {"val_loss": 1.0, "val_ppl": math.e}, {}, runs)["arms"]
    assert arms["hard"]["val_loss"] == pytest.approx(3.1)
    assert arms["hard"]["val_loss_sd"] == pytest.approx(math.sqrt(0.02))
    assert arms["topk8"]["dense_gain_kept"] == pytest.approx(0.5)
    assert arms["dense"]["val_ppl"] == pytest.approx(math.exp(2.1))
    with pytest.raises(Exception, match="arms must be some of"):
        ExperimentConfig(arms=("topk7",))
