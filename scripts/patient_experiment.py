#!/usr/bin/env python3
"""Patient and consistent offline distillation on Fashion-MNIST: test errors vs epochs for hard
labels, clean stored targets, stored views (V in VIEWS), stored mixed views and online function
matching, for the 784-800-800-10 MLP and a small CNN student.

Honest selection: the last VAL_ROWS training rows are held out from teachers and students; the
loss setting (T, alpha, kl|mse) is chosen per student on their validation errors (seed 0, on
the "views" arm of the middle V), the epoch per (student, arm) on the mean validation curve of
its seeds, and the stored arm the goals are checked on by its validation errors at that epoch;
test errors are reported for those choices only, as mean and std over the seeds.

The patient arm "views<max V>-long" replays the largest V's store for long_epochs (800: each
view seen about as often as the middle V's in 200 epochs), for both students: it took the MLP
from 866 test errors at 200 epochs (seed 0) to 781.7 (3 seeds); whether the 54k-parameter CNN
gains as much or is held by its capacity is the question (some 2.5 hours a CNN seed here).

Every (student, arm, setting, seed) run saves out/runs/.../metrics.json when it finishes (and
state.pt after every epoch), so a rerun skips finished runs and resumes unfinished ones. A new
session's checkout has no runs/: the ledger (patient_ledger.py, committed under the reports)
keeps the teachers, finished runs' metrics and, after `--snapshot`, unfinished runs' states.
Stage-1 stores are built when the first run that reads one comes up.

    python scripts/patient_experiment.py [--quick] [--out runs/fashion-mnist/patient]
        [--workers 2] [--report-only] [--snapshot] [--ledger reports/patient/ledger]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# before torch loads libgomp: idle OpenMP threads sleep instead of spinning. These runs span
# sessions and share the 2 cores with other work; spinning threads of two processes made student
# epochs swing 4-25x on this machine (scripts/bench_common.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from softtargets import IDXDataset, write_logits  # noqa: E402
from softtargets.config import DataConfig  # noqa: E402
from softtargets.datasets.idx_files import load_split  # noqa: E402
from softtargets.errors import StoreLockedError  # noqa: E402
from softtargets.recipes.hinton2015.experiments import (  # noqa: E402
    ExperimentConfig, ensemble_test_metrics, run_teachers, store_complete)
from softtargets.recipes.hinton2015.models import load_checkpoint  # noqa: E402
from softtargets.recipes.hinton2015.patient import load_run_state, run_arm  # noqa: E402
from softtargets.recipes.hinton2015.rundir import log  # noqa: E402
from softtargets.write.lock import StoreLock  # noqa: E402

from patient_ledger import Ledger  # noqa: E402
from patient_plan import (  # noqa: E402,F401 (re-exported: the tests use them from here)
    QUICK, Plan, arm_config, arm_epochs, arm_names, best_setting, queue, read_store, run_dir,
    select_arm, setting_of, store_key, store_views)
from patient_report import best_epoch, report, summarise  # noqa: E402


class Pixels(torch.nn.Module):
    """A recipe teacher on a dataset's raw uint8 images: x / 255, as views and students see
    them (views stores scale uint8 themselves)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float() / 255.0 if x.dtype == torch.uint8 else x)


def ensure_store(plan: Plan, out: Path, key: str, teachers: list[str], ledger: Ledger) -> str:
    """The url of stage-1 store `key` ("test" or a store_views key), written first if it is not
    complete; raises StoreLockedError while another process writes it."""
    url = store_url(out, key)
    if store_complete(url):
        return url
    data = DataConfig(limit=plan.limit, val_rows=plan.val_rows)
    split = load_split(data.for_test() if key == "test" else data)
    views = None if key == "test" else store_views(plan)[key]
    models = [Pixels(load_checkpoint(p).model) for p in teachers]
    t0, c0 = time.perf_counter(), time.process_time()
    # 128-row forwards: a CNN teacher's activations stay in cache; 4096-row ones took 1.84x
    # the CPU seconds for the same store (scripts/bench_views_batch.py)
    write_logits(models, IDXDataset.from_split(split), url, views=views, batch_size=128,
                 device="cpu", resume=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0  # CPU s: shared cores
    ledger.note_store(key, url, seconds, cpu)
    log(f"stage 1 {key}: {seconds:.0f} s -> {url}")
    return url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="minutes: 2000 rows, 6 epochs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reports", default="reports/patient")
    ap.add_argument("--ledger", default=None,
                    help="the committed record of the runs (default: <reports>/ledger)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: report the runs finished so far")
    ap.add_argument("--snapshot", action="store_true",
                    help="train nothing: copy unfinished runs' saved epochs into the ledger "
                         "(before a session ends; safe while the runs go on)")
    ap.add_argument("--workers", type=int, default=2,
                    help="student runs at once, threads split between them (default 2: two "
                         "1-thread MLP runs do 1.4x the epochs of one 2-thread run here)")
    args = ap.parse_args()
    plan = QUICK if args.quick else Plan()
    plan = dataclasses.replace(plan, out=args.out or plan.out,
                               ledger=args.ledger or str(Path(args.reports) / "ledger"))
    torch.set_num_threads(plan.threads)
    out = Path(plan.out)
    ledger = Ledger(plan.ledger, out)
    if args.snapshot:
        for path in ledger.snapshot():
            log(f"snapshot: {path}")
        return
    if not args.report_only:
        train(plan, out, ledger, workers=args.workers)
    kept = Path(plan.ledger) / "ensemble.json"
    if not kept.is_file():
        raise SystemExit(f"no teachers measured yet: {kept} is missing; run the experiment "
                         "(make report-patient) before --report-only")
    ens = json.loads(kept.read_text())
    report(collect(plan, out, ledger.stage1_seconds(), ens, ledger=ledger), Path(args.reports))


def train(plan: Plan, out: Path, ledger: Ledger, *, workers: int) -> None:
    """Teachers (the ledger's when it has them), the ensemble's test errors checked against
    the ledger's, then `workers` processes working through the queue."""
    for path in ledger.restore_teachers():
        log(f"restored from the ledger: {path}")
    exp = ExperimentConfig(out=str(out), limit=plan.limit, val_rows=plan.val_rows,
                           teachers=plan.teachers, teacher_epochs=plan.teacher_epochs,
                           threads=plan.threads)
    teachers = run_teachers(exp, out)
    ledger.keep_teachers(teachers)
    test = ensure_store(plan, out, "test", teachers, ledger)
    differs = ledger.check_ensemble(ensemble_test_metrics(exp, test, out / "ensemble.json"))
    if differs:
        log(differs)
    workers = max(1, min(workers, plan.threads))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=work, args=(plan, out, teachers, plan.threads // workers))
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    if any(proc.exitcode for proc in procs):
        raise SystemExit(f"a worker failed (exit codes {[q.exitcode for q in procs]})")


def runs_in_order(plan: Plan, out: Path, *, ledger: Ledger
                  ) -> list[tuple[str, str, tuple | None, int]]:
    """(student, arm, setting, seed) of every run in queue order; setting None while the
    student's selection has not finished."""
    chosen = {student: best_setting(plan, selection(plan, out, student, ledger=ledger))
              for student in plan.students}  # read each selection run once, not per run
    return [(student, select_arm(plan), setting, seed) if arm == "select" else
            (student, arm, setting_of(arm, chosen[student]), seed)
            for student, arm, seed in queue(plan)
            for setting in (plan.grid if arm == "select" else [None])]


def work(plan: Plan, out: Path, teachers: list[str], threads: int) -> None:
    """One worker: runs the first unfinished, unclaimed run of the queue until none is left
    (writing the stage-1 store it reads first, if no other process is writing it); waits
    while the only ones left need a selection or a store another worker is finishing."""
    torch.set_num_threads(threads)
    ledger = Ledger(plan.ledger, out)
    while True:
        todo = [r for r in runs_in_order(plan, out, ledger=ledger)
                if r[2] is None or not done(plan, out, *r, ledger=ledger)]
        if not todo:
            return
        for student, arm, setting, seed in todo:
            if setting is None:
                continue
            where = run_dir(out, student, arm, setting, seed)
            lock = claim(where)
            if lock is None:
                continue
            with _heartbeat(lock):
                key = read_store(arm)
                try:
                    url = key and ensure_store(plan, out, key, teachers, ledger)
                except StoreLockedError:
                    continue  # another worker is writing it: take the next run meanwhile
                ledger.resume(where)
                cfg = arm_config(plan, arm=arm, store=url, student=student,
                                 setting=setting, seed=seed, teachers=teachers)
                m = run_arm(cfg, where)
                ledger.archive(where)
            log(f"{student} {arm} {setting} seed {seed}: test "
                f"{m['history'][-1]['test_errors']} ({m['stage2_seconds']:.0f} s)")
            break
        else:
            if all(r[2] is not None for r in todo) and not _waiting_on_stores(todo, out):
                return  # the rest is running in other workers
            time.sleep(30)  # a selection or a store the next runs need is being made elsewhere


def _waiting_on_stores(todo: list[tuple], out: Path) -> bool:
    """Whether a run left depends on a store that is not complete yet (another worker holds
    its lock): this worker may run it once the store is written."""
    return any((key := read_store(arm)) and not store_complete(store_url(out, key))
               for _, arm, _, _ in todo)


def store_url(out: Path, key: str) -> str:
    """Where stage-1 store `key` is written."""
    return str(out / f"{key}.zarr")


def claim(where: Path) -> StoreLock | None:
    """The run's lease (`<run dir>.lock`) for this process, or None while a live process holds
    it; a lease left by a killed or pre-reboot process, or silent for 10 minutes (another
    host: the next session's machine may have another name), is taken over."""
    lock = StoreLock(str(where))
    try:
        lock.acquire()
    except StoreLockedError:
        return None
    return lock


@contextlib.contextmanager
def _heartbeat(lock: StoreLock, every: float = 60.0) -> Iterator[None]:
    """Hold `lock` while the block runs: refresh it every `every` seconds, release it after."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            lock.heartbeat()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        lock.release()


def finished(plan: Plan, out: Path, student: str, arm: str, setting: tuple, seed: int, *,
             ledger: Ledger) -> dict | None:
    """The metrics of a finished run (the ledger's copy or the run directory's), or None."""
    return ledger.metrics(run_dir(out, student, arm, setting, seed))


def done(plan: Plan, out: Path, student: str, arm: str, setting: tuple, seed: int, *,
         ledger: Ledger) -> bool:
    """Whether the run need not run: it finished, or the ledger's record covers it (every
    seed of its arm at this setting, unless the plan remeasures the arm, or a selection run
    of a setting not chosen)."""
    if finished(plan, out, student, arm, setting, seed, ledger=ledger):
        return True
    rec = (student, arm) not in plan.remeasure and ledger.recorded_arm(student, arm)
    if rec and tuple(rec["setting"]) == tuple(setting) and rec["seeds"] >= plan.seeds:
        return True
    scores = ledger.recorded_selection(student)
    return arm == select_arm(plan) and seed == 0 and tuple(setting) in scores and \
        tuple(setting) != best_setting(plan, scores)


def selection(plan: Plan, out: Path, student: str, *, ledger: Ledger) -> dict[tuple, int]:
    """Setting -> least validation errors of its finished selection run (seed 0, middle V);
    the ledger's record of them while the runs themselves are not all in the ledger."""
    runs = {s: finished(plan, out, student, select_arm(plan), s, 0, ledger=ledger)
            for s in plan.grid}
    scores = {s: min(h["val_errors"] for h in m["history"]) for s, m in runs.items() if m}
    recorded = ledger.recorded_selection(student)
    return scores if len(scores) == len(plan.grid) or not recorded else recorded


def progress(plan: Plan, out: Path, *, ledger: Ledger) -> dict[str, Any]:
    """Where the queue stands: how many runs are done (finished, or covered by the ledger's
    record), the started ones in queue order with the epochs they have saved, and how many
    have not started."""
    seen: set[Path] = set()
    count, started, waiting = 0, [], 0
    for student, arm, setting, seed in runs_in_order(plan, out, ledger=ledger):
        if setting is None:  # after an unfinished selection; its own arm's seed 0 is in it
            waiting += not (arm == select_arm(plan) and seed == 0)
            continue
        where = run_dir(out, student, arm, setting, seed)
        if where in seen:  # the chosen setting's selection run is that arm's seed 0
            continue
        seen.add(where)
        saved = ledger.state_path(where)
        if done(plan, out, student, arm, setting, seed, ledger=ledger):
            count += 1
        elif saved is not None:
            started.append({"run": f"{student} {arm} {setting} seed {seed}",
                            "epochs": len(load_run_state(saved.parent)["history"]),
                            "of": arm_epochs(plan, arm)})
        else:
            waiting += 1
    return {"finished": count, "started": started, "waiting": waiting}


def collect(plan: Plan, out: Path, stage1_s: dict, ens: dict, *,
            ledger: Ledger) -> dict[str, Any]:
    """Results of the runs finished so far: an arm is summarised over its finished seeds
    (`seeds` says how many of plan.seeds); an arm with none reads the ledger's record
    ("source": "record"); `progress` says what is left."""
    results: dict[str, Any] = {"plan": dataclasses.asdict(plan), "ensemble": ens,
                               "stage1_seconds": stage1_s, "students": {},
                               "progress": progress(plan, out, ledger=ledger),
                               "store_builds": ledger.store_builds()}
    for student in plan.students:
        scores = selection(plan, out, student, ledger=ledger)
        chosen, rows = best_setting(plan, scores), {}
        for arm in arm_names(plan, student):
            setting = setting_of(arm, chosen)
            runs = [] if setting is None else \
                [m for seed in range(plan.seeds)
                 if (m := finished(plan, out, student, arm, setting, seed, ledger=ledger))]
            rec = ledger.recorded_arm(student, arm)
            if not runs:
                if rec and setting is not None and tuple(rec["setting"]) == tuple(setting):
                    rows[arm] = {**rec, "source": "record",
                                 "ensemble": ledger.record["ensemble"]["test_errors"]}
                continue
            key = store_key(arm)
            stage1 = (0.0, 0.0) if key is None else (stage1_s[key],
                                                     stage1_s.get(f"{key}:cpu", float("nan")))
            rows[arm] = summarise(runs, best_epoch(runs), setting=setting, stage1=stage1)
        results["students"][student] = {"selection": {str(k): v for k, v in scores.items()},
                                        "chosen": chosen, "arms": rows}
    return results


if __name__ == "__main__":
    main()
