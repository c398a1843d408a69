"""Target specs: JSON round trip, one-line validation, the registry of kinds."""

import dataclasses
import json

import pytest

from softtargets.config import LogitsConfig
from softtargets.errors import ConfigError
from softtargets.write import targets as tg
from softtargets.write import Dense, Sampled, TopK, targets_from_json


@pytest.mark.parametrize("spec, doc", [
    (Dense(), {"kind": "dense"}),
    (TopK(32, temperatures=(4, 1)), {"kind": "topk", "k": 32, "temperatures": [1.0, 4.0]}),
    (Sampled(8, temperature=2.0, seed=3),
     {"kind": "sampled", "k": 8, "temperature": 2.0, "seed": 3, "temperatures": [1.0, 2.0]}),
])
def test_specs_round_trip_through_json(spec, doc):
    assert spec.to_json() == doc
    again = targets_from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec and type(again) is type(spec)


def test_temperatures_are_canonical_so_equal_stores_have_equal_specs():
    assert TopK(5, temperatures=[4.0, 1.0, 4]) == TopK(5, temperatures=(4.0,))
    assert TopK(5).temperatures == (1.0,)
    assert Sampled(5, temperature=3.0, temperatures=(20.0,)).temperatures == (1.0, 3.0, 20.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        TopK(5).k = 6


@pytest.mark.parametrize("make, message", [
    (lambda: TopK(0), r"^TopK: k \(classes kept per row\) must be a positive integer, got 0$"),
    (lambda: TopK(2.5), "TopK: k .* must be a positive integer, got 2.5"),
    (lambda: TopK(True), "TopK: k .* must be a positive integer, got True"),
    (lambda: TopK(3, temperatures=(0.0,)),
     r"^TopK: temperatures must be a finite number > 0, got 0.0; e.g. 1.0 or 4.0$"),
    (lambda: TopK(3, temperatures=4.0), "TopK: temperatures must be a sequence of temperatures"),
    (lambda: Sampled(-1), r"Sampled: k \(draws per row\) must be a positive integer, got -1"),
    (lambda: Sampled(4, temperature=float("inf")),
     "Sampled: temperature must be a finite number > 0, got inf"),
    (lambda: Sampled(4, seed=-2), r"^Sampled: seed must be an integer >= 0, got -2$"),
])
def test_bad_specs_are_refused_in_one_line(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_specs_must_be_passed_by_keyword_after_k():
    with pytest.raises(TypeError):
        TopK(3, (1.0, 4.0))  # temperatures are keyword-only


@pytest.mark.parametrize("doc, message", [
    ({"kind": "logits"}, r"unknown target kind 'logits'; registered kinds: "
                         r"\['dense', 'sampled', 'topk', 'topk_logprobs'\]"),
    ({"k": 3}, "a target spec is a JSON object with a 'kind', got"),
    ({"kind": "topk", "k": 3, "draws": 4},
     r"TopK target spec: unknown keys \['draws'\]; allowed: \['k', 'temperatures'\]"),
])
def test_bad_json_is_refused(doc, message):
    with pytest.raises(ConfigError, match=message):
        targets_from_json(doc)


def test_a_new_kind_is_a_registered_type(monkeypatch):
    monkeypatch.setattr(tg, "_REGISTRY", dict(tg._REGISTRY))  # restored after the test

    @tg.register
    @dataclasses.dataclass(frozen=True)
    class Mine(tg.Targets):
        kind = "mine"
        width: int = 2

    assert tg.registered_kinds() == ("dense", "mine", "sampled", "topk", "topk_logprobs")
    assert targets_from_json({"kind": "mine", "width": 5}) == Mine(5)
    with pytest.raises(ConfigError, match="target kind 'mine' is registered twice"):
        tg.register(Mine)
    with pytest.raises(ConfigError, match=r"targets must be Dense\(\), TopK\(k\), Sampled\(k\) "
                       r"or TopKLogProbs\(k\)"):
        tg.check_targets("topk")


def test_the_cli_flags_map_to_specs():
    assert tg.targets_of_config(LogitsConfig()) == Dense()
    assert tg.targets_of_config(LogitsConfig(topk=7, temperatures=(4.0,))) == \
        TopK(7, temperatures=(1.0, 4.0))
    assert tg.targets_of_config(LogitsConfig(sample=9, sample_temperature=2.0, sample_seed=5)) \
        == Sampled(9, temperature=2.0, seed=5)


def test_precomputed_top_k_log_probs_round_trip_and_refuse_bad_options():
    spec = tg.TopKLogProbs(3, mass_tolerance=0.01)
    assert spec.to_json() == {"kind": "topk_logprobs", "k": 3, "mass_tolerance": 0.01}
    assert targets_from_json(spec.to_json()) == spec and spec.precomputed
    with pytest.raises(ConfigError, match=r"TopKLogProbs: mass_tolerance must be a number in "
                                          r"\[0, 1\), got 2"):
        tg.TopKLogProbs(3, mass_tolerance=2)
    with pytest.raises(ConfigError, match=r"TopKLogProbs: k=30 exceeds the 20 classes"):
        tg.TopKLogProbs(30).sparse_spec(20, position=True)
