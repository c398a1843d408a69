"""The patient experiment's runner and report (scripts/patient_experiment.py, patient_report.py):
the order runs are queued in, the lease that keeps two workers off one run, and the report of
the runs finished so far with its goals in words."""

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
pe = pytest.importorskip("patient_experiment")
pr = pytest.importorskip("patient_report")

PLAN = pe.Plan(students=("mlp:8",), views=(4, 16), seeds=2,
               grid=(("kl", 2.0, 1.0), ("mse", 1.0, 1.0)), long_students=())
ENSEMBLE = {"test_errors": 100, "members": 2}


def no_ledger(out):
    """The ledger of a plan without one: no record, nothing kept."""
    return pe.Ledger(None, out)


def test_queue_runs_an_arms_seeds_together_one_student_after_the_other():
    plan = pe.dataclasses.replace(PLAN, students=("mlp:8", "cnn:2,2,4"),
                                  long_students=("mlp:8",))
    stored = ["hard", "views16", "mixed16", "views4", "clean"]
    assert pe.arm_names(plan, "cnn:2,2,4") == [*stored, "online", "online-mixed"]
    mlp = [*stored, "views16-long"]  # the patient arm, for the students listed only
    assert pe.arm_names(plan, "mlp:8") == [*mlp, "online", "online-mixed"]
    # the long arm beside views16, whose store it replays; both seeds of an arm together
    mlp_order = ["hard", "views16", "views16-long", "mixed16", "views4", "clean", "online",
                 "online-mixed"]
    cnn_order = [*stored, "online", "online-mixed"]
    assert pe.queue(plan) == [
        ("mlp:8", "select", 0), *[("mlp:8", a, s) for a in mlp_order for s in (0, 1)],
        ("cnn:2,2,4", "select", 0), *[("cnn:2,2,4", a, s) for a in cnn_order for s in (0, 1)]]


def test_the_long_arm_replays_the_largest_views_store_for_long_epochs():
    assert [pe.store_key(a) for a in ("hard", "online", "online-mixed", "clean", "views16",
                                      "views16-long", "mixed16")] == \
        [None, None, None, "clean", "views16", "views16", "mixed16"]
    cfg = pe.arm_config(PLAN, arm="views16-long", store="s.zarr", student="mlp:8",
                        setting=("kl", 2.0, 1.0), seed=1, teachers=[])
    assert (cfg.arm, cfg.store, cfg.epochs, cfg.seed) == ("views", "s.zarr", 800, 1)
    assert pe.arm_config(PLAN, arm="views16", store="s.zarr", student="mlp:8",
                         setting=("kl", 2.0, 1.0), seed=1, teachers=[]).epochs == 200


def test_a_run_is_claimed_by_one_process_at_a_time(tmp_path):
    first = pe.claim(tmp_path / "seed0")
    assert first is not None and (tmp_path / "seed0.lock").is_file()
    assert pe.claim(tmp_path / "seed0") is None  # held by a live process (this one)
    first.release()
    again = pe.claim(tmp_path / "seed0")
    assert again is not None
    started = json.loads((tmp_path / "seed0.lock").read_text())["heartbeat_at"]
    with pe._heartbeat(again, every=0.05):  # a run lasts hours: the lease is kept fresh
        time.sleep(0.3)
        assert json.loads((tmp_path / "seed0.lock").read_text())["heartbeat_at"] > started
    assert not (tmp_path / "seed0.lock").exists()  # released when the run ends


def finish(out, arm, setting, seed, val, test, seconds=2.0):
    where = pe.run_dir(out, "mlp:8", arm, setting, seed)
    where.mkdir(parents=True)
    history = [{"val_errors": v, "test_errors": t, "seconds": 1.0} for v, t in zip(val, test)]
    (where / "metrics.json").write_text(json.dumps({
        "history": history, "stage2_seconds": seconds, "stage2_cpu_seconds": 1.5 * seconds,
        "teacher_seconds": 0.0}))


def test_collect_reports_finished_runs_chosen_on_validation(tmp_path):
    kl, mse, hard = ("kl", 2.0, 1.0), ("mse", 1.0, 1.0), ("kl", 1.0, 0.0)
    finish(tmp_path, "views16", kl, 0, val=[50, 40], test=[500, 400])
    stage1 = {"views16": 10.0, "views16:cpu": 12.0, "clean": 1.0}
    res = pe.collect(PLAN, tmp_path, stage1, ENSEMBLE, ledger=no_ledger(tmp_path))
    assert res["students"]["mlp:8"]["chosen"] is None  # mse's selection run not finished
    assert res["students"]["mlp:8"]["arms"] == {}
    # selection: kl 40 < mse 45 on validation, though mse's test errors are lower
    finish(tmp_path, "views16", mse, 0, val=[45, 60], test=[300, 200])
    finish(tmp_path, "views16", kl, 1, val=[60, 50], test=[600, 380])
    finish(tmp_path, "hard", hard, 0, val=[70, 80], test=[700, 800])
    res = pe.collect(PLAN, tmp_path, stage1, ENSEMBLE, ledger=no_ledger(tmp_path))
    s = res["students"]["mlp:8"]
    assert s["chosen"] == kl and s["selection"] == {str(kl): 40, str(mse): 45}
    views = s["arms"]["views16"]
    # epoch 2 has the least mean validation errors (45 < 55); test errors of that epoch
    assert views["epoch"] == 2 and views["test_errors"] == [400, 380] and views["seeds"] == 2
    assert views["mean"] == 390 and views["std"] == pytest.approx(14.142, abs=1e-3)
    assert views["stage1_seconds"] == 10.0 and views["stage1_cpu_seconds"] == 12.0
    assert s["arms"]["hard"]["test_errors"] == [700] and set(s["arms"]) == {"hard", "views16"}
    # beside the chosen epoch, the schedule's last (no choice): hard labels overfit to 800
    assert s["arms"]["hard"]["last_mean"] == 800 and s["arms"]["hard"]["last_std"] == 0.0
    pr.report(res, tmp_path / "reports")
    table = (tmp_path / "reports" / "README.md").read_text()
    # gap closed: (700 - 390) / (700 - 100)
    assert "| mlp:8 | views16 | ('kl', 2.0, 1.0), 2 | 2/2 | 390.0 ± 14.1 | 52% | 390.0 ± 14.1 " \
        "| 10 |" in table
    assert (tmp_path / "reports" / "errors_vs_epochs.png").is_file()
    assert "- mlp:8: the stored arm chosen on validation, views16, closes 52% of the gap " \
        "(700.0 -> 390.0, ensemble 100; seeds: hard 1, views16 2 of 2): goal 65% not met, " \
        "stretch 80% not met" in table
    # online at 420 errors: views16 (390) reaches it at (10 + 2) / 100 of its wall time
    finish(tmp_path, "online", kl, 0, val=[50, 45], test=[480, 420], seconds=100.0)
    lines = pr.verdicts(pe.collect(PLAN, tmp_path, stage1, ENSEMBLE, ledger=no_ledger(tmp_path)))
    assert lines[1] == ("- mlp:8: views16 (390.0) reaches online (420.0) at 0.12 of its wall "
                        "time, 0.10 of its CPU time: goal <= 1/3 met")
    # the arm is chosen on validation: clean's fewer test errors (250) do not make it the one
    finish(tmp_path, "clean", kl, 0, val=[60, 48], test=[300, 250])
    res = pe.collect(PLAN, tmp_path, stage1, ENSEMBLE, ledger=no_ledger(tmp_path))
    assert res["students"]["mlp:8"]["arms"]["clean"]["val_mean"] == 48
    assert pr.verdicts(res)[0].startswith("- mlp:8: the stored arm chosen on validation, "
                                          "views16, closes 52% of the gap")


def test_progress_counts_the_queue_and_reports_started_runs(tmp_path):
    kl, mse = ("kl", 2.0, 1.0), ("mse", 1.0, 1.0)
    # PLAN: selection 2 runs, then 7 arms x 2 seeds of which views16 seed 0 is a selection run
    assert pe.progress(PLAN, tmp_path, ledger=no_ledger(tmp_path)) == {
        "finished": 0, "started": [], "waiting": 15}
    finish(tmp_path, "views16", kl, 0, val=[50, 40], test=[500, 400])
    started = pe.run_dir(tmp_path, "mlp:8", "views16", mse, 0)
    started.mkdir(parents=True)
    pe.torch.save({"history": [{"val_errors": 9}] * 3}, started / "state.pt")
    assert pe.progress(PLAN, tmp_path, ledger=no_ledger(tmp_path)) == {
        "finished": 1, "waiting": 13,
        "started": [{"run": "mlp:8 views16 ('mse', 1.0, 1.0) seed 0", "epochs": 3, "of": 200}]}
    res = {"ensemble": {"test_errors": 100, "members": 2}, "plan": {"seeds": 2},
           "students": {}, "progress": pe.progress(PLAN, tmp_path, ledger=no_ledger(tmp_path))}
    pr.report(res, tmp_path / "reports")
    table = (tmp_path / "reports" / "README.md").read_text()
    assert "Runs: 1 finished, 1 started, 13 not started.\n\n- started: mlp:8 views16 " \
        "('mse', 1.0, 1.0) seed 0, epoch 3 of 200\n" in table


def test_fidelity_reads_the_runs_data_config_and_refuses_a_mix(tmp_path):
    pf = pytest.importorskip("patient_fidelity")
    from softtargets.config import DataConfig, to_dict
    for name, rows in (("a", 5000), ("b", 5000), ("c", 1000)):
        (tmp_path / name).mkdir()
        pe.torch.save({"config": {"data": to_dict(DataConfig(val_rows=rows))}},
                      tmp_path / name / "state.pt")
    states = {n: pf.load_run_state(tmp_path / n) for n in "abc"}
    assert pf.run_data({n: states[n] for n in "ab"}) == DataConfig(val_rows=5000)
    with pytest.raises(SystemExit, match="different data configs"):
        pf.run_data(states)


def test_fidelity_bad_run_or_teachers_is_one_line(tmp_path, monkeypatch):
    pf = pytest.importorskip("patient_fidelity")
    argv = ["patient_fidelity", str(tmp_path / "nope"), "--experiment", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit, match=r"^Error: CheckpointError: no teacher-\*\.pt under .*; "
                                         r"pass --experiment"):
        pf.main()
    (tmp_path / "teachers").mkdir()
    (tmp_path / "teachers" / "teacher-0.pt").write_bytes(b"")  # found, never loaded
    with pytest.raises(SystemExit, match=r"^Error: CheckpointError: .*nope.*not found; pass a "
                                         r"patient run directory$"):
        pf.main()
