"""The patient experiment's ledger (scripts/patient_ledger.py): what a new checkout, with no
runs/ directory, gets back from the committed record, and what it refuses."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
pe = pytest.importorskip("patient_experiment")
pl = pytest.importorskip("patient_ledger")
pr = pytest.importorskip("patient_report")

from softtargets import from_tensors, write_logits  # noqa: E402

KL, MSE, HARD = ("kl", 2.0, 1.0), ("mse", 1.0, 1.0), ("kl", 1.0, 0.0)


def plan(ledger):
    return pe.Plan(students=("mlp:8",), views=(4, 16), seeds=2, grid=(KL, MSE),
                   long_students=(), ledger=str(ledger))


def finish(out, arm, setting, seed, val, test):
    where = pe.run_dir(out, "mlp:8", arm, setting, seed)
    where.mkdir(parents=True)
    history = [{"val_errors": v, "test_errors": t, "seconds": 1.0} for v, t in zip(val, test)]
    (where / "metrics.json").write_text(json.dumps({
        "history": history, "stage2_seconds": 2.0, "stage2_cpu_seconds": 3.0,
        "teacher_seconds": 0.0}))
    return where


def kept_teacher(tmp_path, weights):
    """A ledger under tmp_path that has kept one teacher checkpoint of `weights`."""
    out, root = tmp_path / "runs", tmp_path / "ledger"
    ledger = pl.Ledger(root, out)
    teacher = out / "teachers" / "teacher-0.pt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(weights)
    teacher.with_suffix(".json").write_text("{}")
    ledger.keep_teachers([str(teacher)])
    return out, root, ledger, teacher


def test_a_new_checkout_resumes_from_the_ledger(tmp_path):
    out, root, ledger, teacher = kept_teacher(tmp_path, b"weights")
    done = finish(out, "views16", KL, 0, val=[50, 40], test=[500, 400])
    ledger.archive(done)
    running = pe.run_dir(out, "mlp:8", "views16", MSE, 0)
    running.mkdir(parents=True)
    torch.save({"history": [{"val_errors": 9}] * 3}, running / "state.pt")
    (done / "state.pt").write_bytes(b"finished runs are not snapshot")
    assert ledger.snapshot() == [root / running.relative_to(out) / "state.pt"]

    # a new session: the work tree is laid anew, runs/ is gone
    import shutil
    shutil.rmtree(out)
    ledger = pl.Ledger(root, out)
    assert ledger.metrics(done)["history"][1]["test_errors"] == 400
    assert ledger.state_path(running) == root / running.relative_to(out) / "state.pt"
    assert sorted(p.name for p in ledger.restore_teachers()) == ["teacher-0.json",
                                                                 "teacher-0.pt"]
    assert teacher.read_bytes() == b"weights"
    ledger.resume(running)  # the run comes up again
    assert ledger.state_path(running) == running / "state.pt"
    assert pe.progress(plan(root), out, ledger=pl.Ledger(root, out))["started"] == [
        {"run": "mlp:8 views16 ('mse', 1.0, 1.0) seed 0", "epochs": 3, "of": 200}]
    # the run finishes: its metrics are kept, its snapshot (ours) goes
    (running / "metrics.json").write_text(json.dumps({"history": []}))
    ledger.archive(running)
    assert (root / running.relative_to(out) / "metrics.json").is_file()
    assert not (root / running.relative_to(out) / "state.pt").exists()


def test_a_snapshot_is_brought_into_an_empty_run_directory(tmp_path):
    out, root = tmp_path / "runs", tmp_path / "ledger"
    where = pe.run_dir(out, "mlp:8", "online", KL, 1)
    snap = root / where.relative_to(out) / "state.pt"
    snap.parent.mkdir(parents=True)
    snap.write_bytes(b"epoch 7")
    pl.Ledger(root, out).resume(where)
    assert (where / "state.pt").read_bytes() == b"epoch 7"
    (where / "state.pt").write_bytes(b"epoch 9")  # the run went on here: left alone
    pl.Ledger(root, out).resume(where)
    assert (where / "state.pt").read_bytes() == b"epoch 9"


def record(root, arms):
    root.mkdir(parents=True, exist_ok=True)
    (root / "record.json").write_text(json.dumps({
        "ensemble": {"test_errors": 90},
        "students": {"mlp:8": {"selection": {str(KL): 40, str(MSE): 45}, "chosen": list(KL),
                               "arms": arms}}}))


def arm(setting, seeds, mean):
    return {"setting": list(setting), "seeds": seeds, "mean": mean, "std": 1.0, "epoch": 2,
            "val_mean": 40.0, "test_errors": [mean] * seeds, "curve": [mean, mean],
            "stage1_seconds": 1.0, "stage1_cpu_seconds": 1.0, "stage2_seconds": 2.0,
            "stage2_cpu_seconds": 2.0, "teacher_seconds": 0.0}


def test_the_record_covers_arms_whose_seeds_it_holds_in_full(tmp_path):
    out, root = tmp_path / "runs", tmp_path / "ledger"
    record(root, {"hard": arm(HARD, 2, 700.0), "views16": arm(KL, 1, 400.0)})
    p, ledger = plan(root), pl.Ledger(root, out)
    assert pe.done(p, out, "mlp:8", "hard", HARD, 1, ledger=ledger)  # 2 of 2 seeds
    assert not pe.done(p, out, "mlp:8", "views16", KL, 0, ledger=ledger)  # 1 of 2: run anew
    assert pe.done(p, out, "mlp:8", "views16", MSE, 0, ledger=ledger)  # selection, not chosen
    todo = [r for r in pe.runs_in_order(p, out, ledger=ledger)
            if not pe.done(p, out, *r, ledger=ledger)]
    assert todo[0] == ("mlp:8", "views16", KL, 0) and ("mlp:8", "hard", HARD, 0) not in todo
    stage1 = {"views16": 10.0, "views16:cpu": 12.0}
    res = pe.collect(p, out, stage1, {"test_errors": 100, "members": 2}, ledger=ledger)
    s = res["students"]["mlp:8"]
    assert s["chosen"] == KL and set(s["arms"]) == {"hard", "views16"}
    assert s["arms"]["views16"]["source"] == "record" and s["arms"]["views16"]["ensemble"] == 90
    # the arm's own run replaces the record's row, never mixes with it
    finish(out, "views16", KL, 0, val=[50, 40], test=[500, 380])
    s = pe.collect(p, out, stage1, {"test_errors": 100, "members": 2},
                   ledger=ledger)["students"]["mlp:8"]
    assert s["arms"]["views16"]["test_errors"] == [380] and "source" not in s["arms"]["views16"]
    pr.report({**res, "students": {"mlp:8": s}}, tmp_path / "reports")
    table = (tmp_path / "reports" / "README.md").read_text()
    # gap closed: (700 - 380) / (700 - 100), this ensemble's; hard labels need no teacher
    assert "| mlp:8 | hard (record) | ('kl', 1.0, 0.0), 2 | 2/2 | 700.0 ± 1.0 | 0% |" in table
    assert "| mlp:8 | views16 | ('kl', 2.0, 1.0), 2 | 1/2 | 380.0 ± 0.0 | 53% |" in table
    assert "(record): measured before the ledger kept each run's history" in table


def test_a_remeasured_arm_runs_again_though_the_record_holds_it(tmp_path):
    out, root = tmp_path / "runs", tmp_path / "ledger"
    record(root, {"views4": arm(KL, 2, 400.0), "views16": arm(KL, 2, 410.0)})
    p = dataclasses.replace(plan(root), remeasure=(("mlp:8", "views4"),))
    ledger = pl.Ledger(root, out)
    assert pe.done(p, out, "mlp:8", "views16", KL, 1, ledger=ledger)
    assert not pe.done(p, out, "mlp:8", "views4", KL, 1, ledger=ledger)
    # the record's row stands until the arm's own first run finishes
    stage1 = {"views4": 10.0, "views4:cpu": 12.0}
    rows = pe.collect(p, out, stage1, {"test_errors": 100},
                      ledger=ledger)["students"]["mlp:8"]["arms"]
    assert rows["views4"]["source"] == "record"
    finish(out, "views4", KL, 0, val=[50, 40], test=[500, 390])
    rows = pe.collect(p, out, stage1, {"test_errors": 100},
                      ledger=ledger)["students"]["mlp:8"]["arms"]
    assert rows["views4"]["test_errors"] == [390] and "source" not in rows["views4"]


def test_other_teachers_are_refused(tmp_path):
    _, _, ledger, teacher = kept_teacher(tmp_path, b"first")
    ledger.keep_teachers([str(teacher)])  # the same teachers: fine
    teacher.write_bytes(b"retrained")
    with pytest.raises(pl.LedgerMismatch, match=r"teacher .*teacher-0.pt is not the ledger's "
                       r".*ledger/teachers/teacher-0.pt \(sha256 "):
        ledger.keep_teachers([str(teacher)])
    # the ensemble's test errors as first measured; a rebuilt test store may differ by a tie
    ens = {"test_errors": 764, "member_test_errors": [809, 811, 813]}
    assert ledger.check_ensemble(ens) is None and ledger.check_ensemble(dict(ens)) is None
    assert ledger.check_ensemble({"test_errors": 765, "member_test_errors": [809, 811, 814]}) \
        == ("the ledger's teachers give 765 test errors (members [809, 811, 814]) here, 764 "
            "(members [809, 811, 813]) where the ledger first measured them")


def test_stores_keep_their_first_timing_and_each_different_build(tmp_path):
    out, root = tmp_path / "runs", tmp_path / "ledger"
    ledger = pl.Ledger(root, out)
    rng = np.random.default_rng(0)
    data = from_tensors(rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 4, 40),
                        num_classes=4, name="toy")
    for name, seed in (("a.zarr", 1), ("b.zarr", 1), ("c.zarr", 2)):
        torch.manual_seed(seed)
        write_logits(nn.Linear(6, 4), data, str(tmp_path / name), chunk_rows=16, device="cpu")
    assert pl.fingerprint(str(tmp_path / "a.zarr")) == pl.fingerprint(str(tmp_path / "b.zarr"))
    ledger.note_store("clean", str(tmp_path / "a.zarr"), 10.0, 12.0)
    ledger.note_store("clean", str(tmp_path / "b.zarr"), 30.0, 31.0)  # same targets
    assert ledger.store_builds() == {"clean": 1}
    ledger.note_store("clean", str(tmp_path / "c.zarr"), 20.0, 21.0)  # other teacher weights
    assert ledger.store_builds() == {"clean": 2}
    assert ledger.stage1_seconds() == {"clean": 10.0, "clean:cpu": 12.0}
    assert json.loads((out / "stage1.json").read_text())["clean"] == 20.0  # this run's own
    pr.report({"ensemble": {"test_errors": 100, "members": 2}, "plan": {"seeds": 2},
               "students": {}, "store_builds": ledger.store_builds()}, tmp_path / "reports")
    assert "Stores built with different targets (builds): {'clean': 2}: a rebuild" in \
        (tmp_path / "reports" / "README.md").read_text()


def test_a_goal_weighed_across_teachers_says_so():
    views = {**arm(KL, 2, 400.0), "source": "record", "ensemble": 90}
    online = {**arm(KL, 2, 450.0), "stage2_seconds": 100.0, "stage2_cpu_seconds": 100.0}
    res = {"ensemble": {"test_errors": 100}, "plan": {"seeds": 2},
           "students": {"mlp:8": {"arms": {"hard": arm(HARD, 2, 700.0), "views4": views,
                                           "online": online}}}}
    lines = pr.verdicts(res)
    # gap on the record's own ensemble: (700 - 400) / (700 - 90)
    assert lines[0].startswith("- mlp:8: the stored arm chosen on validation, views4, closes "
                               "49% of the gap (700.0 -> 400.0, ensemble 90;")
    assert lines[1] == ("- mlp:8: views4 (400.0) reaches online (450.0) at 0.03 of its wall "
                        "time, 0.03 of its CPU time: goal <= 1/3 met (across teachers: one of "
                        "the two arms is the record's)")


def test_a_report_before_any_teacher_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["patient_experiment.py", "--report-only", "--reports",
                                      str(tmp_path / "reports"), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match=r"no teachers measured yet: .*ledger/ensemble.json is "
                       r"missing; run the experiment \(make report-patient\)"):
        pe.main()
