"""The recipe choice on held-out rows (softtargets/recipes/hinton2015/recipe.py, scripts/choose_recipe.py)."""

import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from softtargets.recipes.hinton2015 import recipe
from softtargets.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tiny_data, tmp_path):
    """A teacher trained on the first 80 of 96 rows (--val-rows 16) and its store."""
    d = ["--dataset", "mnist", "--data-dir", tiny_data.data_dir, "--val-rows", 16]
    run_cli("train-teacher", *d, "--hidden", "32", "--epochs", 3, "--batch-size", 16,
            "--out", tmp_path / "teacher.pt", "--quiet")
    run_cli("teacher-logits", *d, "--teacher", tmp_path / "teacher.pt",
            "--store", tmp_path / "t.zarr", "--quiet")
    return str(tmp_path / "t.zarr")


def config(tiny_data, store, out, **over):
    base = dict(store=store, out=str(out), dataset="mnist", data_dir=tiny_data.data_dir,
                val_rows=16, hidden=(16,), epochs=2, temperatures=(2.0, 5.0), alphas=(0.5,),
                seeds=(0, 1))
    return recipe.RecipeConfig(**{**base, **over})


def test_grid_choice_seeds_and_resume(tiny_data, store, tmp_path, monkeypatch):
    cfg = config(tiny_data, store, tmp_path / "recipe")
    res = recipe.run(cfg)
    val = {name: m["val_errors"] for name, m in res["grid"].items()}
    assert list(val) == ["T2-a0.5", "T5-a0.5"]
    chosen = res["chosen"]["name"]
    assert val[chosen] == min(val.values()) and (val["T2-a0.5"] > val["T5-a0.5"]) == (
        chosen == "T5-a0.5")  # ties keep the first cell
    assert [m["config"]["seed"] for m in res["distilled"]] == [0, 1]
    assert [m["config"]["seed"] for m in res["baselines"]] == [0, 1]
    assert all(m["config"]["store"] is None for m in res["baselines"])
    assert res["distilled"][0] == res["grid"][chosen]
    assert {m["val_n"] for m in res["distilled"] + res["baselines"]} == {16}
    teacher = json.loads((tmp_path / "teacher.json").read_text())
    assert res["teacher"]["test_errors"] == teacher["test_errors"]
    text = recipe.table(res)
    assert f"| 2 | {val['T2-a0.5']} |" in text and f"| 5 | {val['T5-a0.5']} |" in text
    assert f"| teacher | {teacher['test_errors']} |" in text and "on the means: " in text
    tests = [m["test_errors"] for m in res["baselines"]]
    assert f"| baseline (hard labels) | {tests[0]} | {tests[1]} | {sum(tests) / 2:.1f} |" in text

    def no_training(*a, **k):
        raise AssertionError("a saved student was trained again")
    monkeypatch.setattr("softtargets.recipes.hinton2015.recipe.train_student", no_training)
    assert recipe.run(cfg) == json.loads((tmp_path / "recipe" / "results.json").read_text())
    with pytest.raises(ConfigError, match=r"holds results of other settings \(epochs: saved 2, "
                                          r"now 3\); pass another --out"):
        recipe.run(config(tiny_data, store, tmp_path / "recipe", epochs=3))


def test_bad_recipe_settings(tiny_data, store, tmp_path):
    with pytest.raises(ConfigError, match="--val-rows must be positive"):
        config(tiny_data, store, tmp_path, val_rows=0)
    with pytest.raises(ConfigError, match="alpha .* must be in \\[0, 1\\], got 1.5"):
        config(tiny_data, store, tmp_path, alphas=(1.5,))
    with pytest.raises(ConfigError, match="at least one temperature"):
        config(tiny_data, store, tmp_path, temperatures=())


def test_script_prints_one_line_errors(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import choose_recipe
    code = choose_recipe.main(["--store", str(tmp_path / "none.zarr"), "--out",
                               str(tmp_path / "r"), "--table-only"])
    assert code == 1 and capsys.readouterr().err == (
        f"Error: ConfigError: no saved results at '{tmp_path / 'r' / 'results.json'}'; run "
        "without --table-only\n")
    code = choose_recipe.main(["--store", "x.zarr", "--alphas", "0.5,x"])
    assert code == 1 and capsys.readouterr().err == ("Error: ConfigError: --alphas must be comma "
                                                     "separated numbers, got '0.5,x'\n")
    code = choose_recipe.main(["--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path)])
    assert code == 1 and capsys.readouterr().err == (
        f"Error: StoreError: no store at '{tmp_path / 'none.zarr'}'; run stage 1 (softtargets "
        "teacher-logits) first\n")
