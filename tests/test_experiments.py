"""The paper's experiments end to end on tiny synthetic data, and the report drawn from metrics."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from softtargets.config import from_dict
from softtargets.errors import ConfigError
from softtargets.recipes.hinton2015.experiments import ExperimentConfig, run
from softtargets.recipes.hinton2015.plots import collect, gap_closed, markdown, write_report


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from conftest import make_dataset
    root = tmp_path_factory.mktemp("paper")
    make_dataset(root / "data", n_train=400, n_test=60)
    cfg = ExperimentConfig(dataset="mnist", data_dir=str(root / "data"), out=str(root / "run"),
                           limit=300, teachers=2, teacher_hidden=(32,), teacher_epochs=3,
                           teacher_arch="mlp", students=("mlp:16", "mlp:8"), student_epochs=2,
                           temperatures=(1.0, 4.0), val_rows=100, seeds=2,
                           validation_rows=100, less_data_fraction=0.1, quick=True)
    run(cfg)
    return root / "run"


def test_every_step_writes_its_metrics(results):
    r = json.loads((results / "results.json").read_text())
    ens = json.loads(Path(r["ensemble"]).read_text())
    assert ens["members"] == 2 and ens["test_n"] == 60 and len(ens["member_test_errors"]) == 2
    assert set(r["students"]) == {"mlp-16", "mlp-8"}
    s = json.loads(Path(r["students"]["mlp-16"]).read_text())
    val = {name: m["val_errors"] for name, m in s["grid"].items()}
    assert list(val) == ["T1-a0.5", "T4-a0.5"]  # the grid at seed 0, on the held-out rows
    assert val[s["chosen"]["name"]] == min(val.values())
    assert [m["config"]["seed"] for m in s["distilled"]] == [0, 1]
    assert [m["config"]["seed"] for m in s["baselines"]] == [0, 1]
    m = s["distilled"][1]
    assert m["role"] == "distilled" and m["config"]["temperature"] == s["chosen"]["temperature"]
    assert m["source"]["combine"] == {"rule": "arithmetic", "members": 2}
    assert len(m["history"]) == 2 and len(m["per_class_errors"]) == 10 and m["val_n"] == 100
    assert m["train_rows"] == 300 and s["teacher"]["test_errors"] == ens["test_errors"]
    o = r["omitted"]
    assert o["class"] == 3 and o["validation_rows"] == 100
    omitted_rows = json.loads(Path(o["distilled"]).read_text())["train_rows"]
    assert omitted_rows == o["transfer_rows"] < 300
    assert o["shift"] in o["grid"] and o["before"]["class_errors"] >= 0
    assert r["less_data"]["rows"] == 30 and r["less_data"]["epochs"] == 20


def _saved_config(results: Path) -> ExperimentConfig:
    return from_dict(ExperimentConfig, json.loads((results / "results.json").read_text())["config"])


def test_rerun_reuses_saved_metrics(results):
    saved = results / "students" / "mlp-8" / "T1-a0.5" / "seed0" / "metrics.json"
    before = saved.stat().st_mtime_ns
    threads = torch.get_num_threads()  # a thread count changes no result: not a new setting
    run(dataclasses.replace(_saved_config(results), threads=threads))
    assert saved.stat().st_mtime_ns == before


def test_run_dir_of_other_settings_is_refused(results):
    """Resuming with other teachers would reuse the saved ones as if they were the new ones."""
    cfg = dataclasses.replace(_saved_config(results), teachers=3, teacher_hidden=(64,))
    with pytest.raises(ConfigError, match=r"holds results of other settings \(teacher_hidden: "
                       r"saved \[32\], now \[64\], teachers: saved 2, now 3\); pass another "
                       r"--out or delete that directory"):
        run(cfg)
    assert json.loads((results / "config.json").read_text())["teachers"] == 2


def test_report_table_from_metrics(results, tmp_path):
    d = collect(results / "results.json")
    text = markdown(d)
    s = d["students"]["mlp-16"]
    b, t = [m["test_errors"] for m in s["baselines"]], [m["test_errors"] for m in s["distilled"]]
    assert ("| student | baseline (hard labels) | chosen on validation | distilled | gap to "
            "ensemble closed (means) |") in text
    assert (f"| mlp 784-16-10 | {sum(b) / 2:.1f} ± " in text
            and f"| T={s['chosen']['temperature']:g}, alpha=0.5 | {sum(t) / 2:.1f} ± " in text)
    assert (f"| mlp 784-16-10 | {s['baselines'][0]['val_errors']} | "
            + " | ".join(str(m["val_errors"]) for m in s["grid"].values()) + " |") in text
    assert "The test set plays no part in any choice." in text
    assert "ensemble of 2 (arithmetic mean)" in text and "## Omitted class" in text
    assert "## Less data: 10% of the transfer set (30 rows, 20 epochs)" in text
    assert "| student | test errors after the last epoch |" in text and "best epoch" not in text
    assert gap_closed(200, 150, 100) == 0.5 and gap_closed(100, 90, 100) is None
    assert gap_closed(90, 80, 100) is None  # the ensemble is worse: no gap to close
    table = write_report(results / "results.json", tmp_path / "reports")
    for png in ("errors_vs_T.png", "training_curves.png", "per_class_errors.png"):
        assert (tmp_path / "reports" / png).read_bytes()[:4] == b"\x89PNG"
    assert table.read_text().startswith("# softtargets: the paper's experiments on mnist")


def test_bad_experiment_config():
    with pytest.raises(ConfigError, match="unknown combination rule 'mode'"):
        ExperimentConfig(combine="mode")
    with pytest.raises(ConfigError, match="less_data_fraction must be in"):
        ExperimentConfig(less_data_fraction=0)


def test_script_flags_build_the_config(tmp_path):
    """scripts/experiments.py: teacher family, widths and repeated --student flags."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import experiments as script
    a = script.parse(["--teacher-arch", "mlp", "--teacher-hidden", "800,800", "--teachers", "5",
                      "--student", "mlp:800,800", "--student", "cnn:8,16,64",
                      "--out", str(tmp_path / "run")])
    cfg = script.config(a)
    assert (cfg.teacher_arch, cfg.teacher_hidden, cfg.teachers) == ("mlp", (800, 800), 5)
    assert cfg.students == ("mlp:800,800", "cnn:8,16,64") and cfg.out == str(tmp_path / "run")
    assert script.config(script.parse([])).students == ExperimentConfig().students
    for bad in ("16;32", "16,0"):
        with pytest.raises(ConfigError, match="--teacher-hidden must be comma separated positive "
                           f"integers, e.g. 16,32,128; got '{bad}'"):
            script.config(script.parse(["--teacher-hidden", bad]))
    assert script.main(["--student", "mlp:x", "--report-only"]) == 1  # error printed, no trace


def test_a_setting_added_later_reads_as_its_default_in_an_older_run_dir(tmp_path):
    from softtargets.recipes.hinton2015.rundir import check_run_dir
    cfg = ExperimentConfig(dataset="mnist")
    check_run_dir(cfg, tmp_path)  # records config.json
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["seeds"]  # a directory saved before seeds existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_run_dir(cfg, tmp_path)  # seeds=3 is that directory's setting: accepted
    with pytest.raises(ConfigError, match=r"seeds: saved 3, now 5"):
        check_run_dir(dataclasses.replace(cfg, seeds=5), tmp_path)
