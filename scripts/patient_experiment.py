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
state.pt after every epoch), so a rerun skips finished runs and resumes unfinished ones.

    python scripts/patient_experiment.py [--quick] [--out runs/fashion-mnist/patient]
        [--workers 2] [--report-only]
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

from softtargets import IDXDataset, Mix, Views, write_logits  # noqa: E402
from softtargets.config import DataConfig  # noqa: E402
from softtargets.datasets.idx_files import load_split  # noqa: E402
from softtargets.errors import StoreLockedError  # noqa: E402
from softtargets.recipes.hinton2015.experiments import (  # noqa: E402
    ExperimentConfig, ensemble_test_metrics, run_teachers, store_complete)
from softtargets.recipes.hinton2015.models import load_checkpoint  # noqa: E402
from softtargets.recipes.hinton2015.patient import (  # noqa: E402
    ArmConfig, load_run_state, run_arm)
from softtargets.recipes.hinton2015.rundir import log  # noqa: E402
from softtargets.atomic import write_json  # noqa: E402
from softtargets.write.lock import StoreLock  # noqa: E402

from patient_report import best_epoch, is_online, report, summarise  # noqa: E402

AUGMENT = "shift=2,flip=1,rotate=10,scale=1.1"  # padded random crop (pad 2), flip, rotate, zoom


class Pixels(torch.nn.Module):
    """A recipe teacher on a dataset's raw uint8 images: x / 255, as views and students see
    them (views stores scale uint8 themselves)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.float() / 255.0 if x.dtype == torch.uint8 else x)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of the experiment (`quick` gives minutes on 2 cores)."""

    out: str = "runs/fashion-mnist/patient"
    limit: int | None = None
    val_rows: int = 5000
    teachers: int = 3
    teacher_epochs: int = 15
    students: tuple[str, ...] = ("mlp:800,800", "cnn:8,16,64")
    views: tuple[int, ...] = (4, 16, 64)
    mix: tuple[str, float, float] = ("mixup", 1.0, 0.5)  # kind, alpha, prob
    epochs: int = 200
    seeds: int = 3
    lr: float = 0.05
    # the patient arm "views<max V>-long": the largest V's stored views over long_epochs, so
    # each view is seen about as often as the middle V's are in `epochs` (students listed only)
    long_epochs: int = 800
    long_students: tuple[str, ...] = ("mlp:800,800", "cnn:8,16,64")
    # (loss, T, alpha) candidates, chosen on validation
    grid: tuple[tuple[str, float, float], ...] = (("kl", 2.0, 1.0), ("kl", 5.0, 1.0),
                                                  ("kl", 10.0, 1.0), ("kl", 5.0, 0.5),
                                                  ("mse", 1.0, 1.0))
    threads: int = 2


QUICK = Plan(out="runs/fashion-mnist/patient-quick", limit=2000, val_rows=1000, teachers=2,
             teacher_epochs=10, views=(4, 16), epochs=6, long_epochs=12,
             grid=(("kl", 4.0, 1.0), ("mse", 1.0, 1.0)))


def stage1(plan: Plan, out: Path, teachers: list[str]) -> tuple[dict[str, str], dict, dict]:
    """Stores (arm key -> url), their stage-1 seconds, and the ensemble's test metrics."""
    models = [Pixels(load_checkpoint(p).model) for p in teachers]
    data = DataConfig(limit=plan.limit, val_rows=plan.val_rows)
    train = IDXDataset.from_split(load_split(data))
    test = IDXDataset.from_split(load_split(data.for_test()))
    todo = {"clean": (train, None), "test": (test, None)}
    for v in plan.views:
        todo[f"views{v}"] = (train, Views(count=v, augment=AUGMENT, seed=0))
    kind, alpha, prob = plan.mix
    v = max(plan.views)
    todo[f"mixed{v}"] = (train, Views(count=v, augment=AUGMENT, seed=0,
                                      mix=Mix(kind=kind, alpha=alpha, prob=prob)))
    timing = json.loads((out / "stage1.json").read_text()) if (out / "stage1.json").is_file() \
        else {}
    urls = {}
    for key, (dataset, views) in todo.items():
        url = str(out / f"{key}.zarr")
        if f"{key}:cpu" not in timing or not store_complete(url):  # (timed before CPU s: again)
            t0, c0 = time.perf_counter(), time.process_time()
            write_logits(models, dataset, url, views=views, batch_size=4096, device="cpu",
                         overwrite=True)
            timing[key] = time.perf_counter() - t0
            timing[f"{key}:cpu"] = time.process_time() - c0  # robust to shared cores
            write_json(out / "stage1.json", timing)
            log(f"stage 1 {key}: {timing[key]:.0f} s -> {url}")
        urls[key] = url
    ens = ensemble_test_metrics(ExperimentConfig(), urls["test"], out / "ensemble.json")
    return urls, timing, ens



def arm_config(plan: Plan, *, arm: str, store: str, student: str, setting: tuple, seed: int,
               teachers: list[str]) -> ArmConfig:
    loss, t, alpha = setting
    kind, mix_alpha, prob = plan.mix
    online = is_online(arm)
    return ArmConfig(arm="online" if online else
                     ("hard" if arm == "hard" else "clean" if arm == "clean" else
                      "mixed" if arm.startswith("mixed") else "views"),
                     data=DataConfig(limit=plan.limit, val_rows=plan.val_rows),
                     student=student, store=None if online else store,
                     teachers=tuple(teachers) if online else (),
                     temperature=t, alpha=alpha, loss=loss, lr=plan.lr,
                     epochs=arm_epochs(plan, arm),
                     seed=seed, augment=AUGMENT,
                     mix_kind=kind if arm == "online-mixed" else None, mix_alpha=mix_alpha,
                     mix_prob=prob)


def arm_epochs(plan: Plan, arm: str) -> int:
    """The arm's schedule: long_epochs for the patient arm "...-long", else epochs."""
    return plan.long_epochs if arm.endswith("-long") else plan.epochs


def run_dir(out: Path, student: str, arm: str, setting: tuple, seed: int) -> Path:
    name = "labels" if arm == "hard" else "{}-T{:g}-a{:g}".format(*setting)
    return out / "runs" / student.replace(":", "-").replace(",", "-") / arm / name / f"seed{seed}"


def arm_names(plan: Plan, student: str) -> list[str]:
    """The student's arms in the order their runs are queued: the decisive ones first."""
    v = max(plan.views)
    stored = [f"views{x}" for x in sorted(plan.views, reverse=True)]
    long = [f"views{v}-long"] if student in plan.long_students else []
    return ["hard", stored[0], f"mixed{v}", *stored[1:], "clean", *long, "online",
            "online-mixed"]


def store_key(arm: str) -> str | None:
    """The stage-1 store whose targets the arm learns from (None: hard labels, online)."""
    return None if arm == "hard" or is_online(arm) else arm.removesuffix("-long")


def queue(plan: Plan) -> list[tuple[str, str, int]]:
    """(student, arm, seed) in the order they run; arm "select" is the student's loss-setting
    selection. Runs take hours on 2 cores and sessions end, so the order puts answers first: per
    student the selection, every stored arm's first seed, the further seeds of hard labels and
    of the long arm (the >= 80% goal is the gap between their means over seeds; two workers run
    the seeds side by side), the online arms' first seed (the reference the stored arms are
    weighed against), then the other stored arms' further seeds; the online arms' further seeds
    (each as dear as a stored-views stage 1) come last."""
    out: list[tuple[str, str, int]] = []
    seeds = range(1, plan.seeds)
    for student in plan.students:
        offline = [a for a in arm_names(plan, student) if not is_online(a)]
        online = [a for a in arm_names(plan, student) if is_online(a)]
        goal = [a for a in offline if a == "hard" or a.endswith("-long")]
        out.append((student, "select", 0))
        out += [(student, arm, 0) for arm in offline]
        out += [(student, arm, seed) for arm in goal for seed in seeds]
        out += [(student, arm, 0) for arm in online]
        out += [(student, arm, seed) for seed in seeds for arm in offline if arm not in goal]
    out += [(student, arm, seed) for student in plan.students for seed in seeds
            for arm in arm_names(plan, student) if is_online(arm)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="minutes: 2000 rows, 6 epochs")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reports", default="reports/patient")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: report the runs finished so far")
    ap.add_argument("--workers", type=int, default=2,
                    help="student runs at once, threads split between them (default 2: two "
                         "1-thread MLP runs do 1.4x the epochs of one 2-thread run here)")
    args = ap.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.out:
        plan = dataclasses.replace(plan, out=args.out)
    torch.set_num_threads(plan.threads)
    out = Path(plan.out)
    exp = ExperimentConfig(out=str(out), limit=plan.limit, val_rows=plan.val_rows,
                           teachers=plan.teachers, teacher_epochs=plan.teacher_epochs,
                           threads=plan.threads)
    if not args.report_only:
        teachers = run_teachers(exp, out)
        urls, _, _ = stage1(plan, out, teachers)
        # hard labels stream the clean store's labels; online arms read no store
        urls.update({arm: urls[store_key(arm) or "clean"] for student in plan.students
                     for arm in arm_names(plan, student)})
        workers = max(1, min(args.workers, plan.threads))
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=work, args=(plan, out, urls, teachers,
                                                plan.threads // workers))
                 for _ in range(workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode for proc in procs):
            raise SystemExit(f"a worker failed (exit codes {[q.exitcode for q in procs]})")
    stage1_s = json.loads((out / "stage1.json").read_text())
    ens = json.loads((out / "ensemble.json").read_text())
    report(collect(plan, out, stage1_s, ens), Path(args.reports))


def runs_in_order(plan: Plan, out: Path) -> list[tuple[str, str, tuple | None, int]]:
    """(student, arm, setting, seed) of every run in queue order; setting None while the
    student's selection has not finished."""
    chosen = {student: best_setting(plan, selection(plan, out, student))
              for student in plan.students}  # read each selection run once, not per run
    return [(student, select_arm(plan), setting, seed) if arm == "select" else
            (student, arm, setting_of(arm, chosen[student]), seed)
            for student, arm, seed in queue(plan)
            for setting in (plan.grid if arm == "select" else [None])]


def work(plan: Plan, out: Path, urls: dict[str, str], teachers: list[str], threads: int) -> None:
    """One worker: runs the first unfinished, unclaimed run of the queue until none is left;
    waits while the only ones left need a selection another worker is finishing."""
    torch.set_num_threads(threads)
    while True:
        todo = [r for r in runs_in_order(plan, out)
                if r[2] is None or not finished(out, *r)]
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
                cfg = arm_config(plan, arm=arm, store=urls[arm], student=student,
                                 setting=setting, seed=seed, teachers=teachers)
                m = run_arm(cfg, where)
            log(f"{student} {arm} {setting} seed {seed}: test "
                f"{m['history'][-1]['test_errors']} ({m['stage2_seconds']:.0f} s)")
            break
        else:
            if all(r[2] is not None for r in todo):
                return  # the rest is running in other workers
            time.sleep(30)  # a selection that the next runs need is running elsewhere


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


def finished(out: Path, student: str, arm: str, setting: tuple, seed: int) -> dict | None:
    path = run_dir(out, student, arm, setting, seed) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def select_arm(plan: Plan) -> str:
    """The arm the loss setting is chosen on: stored views of the middle V."""
    return f"views{plan.views[len(plan.views) // 2]}"


def selection(plan: Plan, out: Path, student: str) -> dict[tuple, int]:
    """Setting -> least validation errors of its finished selection run (seed 0, middle V)."""
    runs = {s: finished(out, student, select_arm(plan), s, 0) for s in plan.grid}
    return {s: min(h["val_errors"] for h in m["history"]) for s, m in runs.items() if m}


def best_setting(plan: Plan, scores: dict[tuple, int]) -> tuple | None:
    """The selection's best once all of it has run (ties: the first in grid order)."""
    return min(scores, key=scores.get) if len(scores) == len(plan.grid) else None


def setting_of(arm: str, chosen: tuple | None) -> tuple | None:
    """The hard arm's fixed setting (labels only), else the chosen one."""
    return ("kl", 1.0, 0.0) if arm == "hard" else chosen


def progress(plan: Plan, out: Path) -> dict[str, Any]:
    """Where the queue stands: how many runs have finished, the started ones in queue order
    with the epochs they have saved, and how many have not started."""
    seen: set[Path] = set()
    done, started, waiting = 0, [], 0
    for student, arm, setting, seed in runs_in_order(plan, out):
        if setting is None:  # after an unfinished selection; its own arm's seed 0 is in it
            waiting += not (arm == select_arm(plan) and seed == 0)
            continue
        where = run_dir(out, student, arm, setting, seed)
        if where in seen:  # the chosen setting's selection run is that arm's seed 0
            continue
        seen.add(where)
        if (where / "metrics.json").is_file():
            done += 1
        elif (where / "state.pt").is_file():
            started.append({"run": f"{student} {arm} {setting} seed {seed}",
                            "epochs": len(load_run_state(where)["history"]),
                            "of": arm_epochs(plan, arm)})
        else:
            waiting += 1
    return {"finished": done, "started": started, "waiting": waiting}


def collect(plan: Plan, out: Path, stage1_s: dict, ens: dict) -> dict[str, Any]:
    """Results of the runs finished so far: an arm is summarised over its finished seeds
    (`seeds` says how many of plan.seeds); `progress` says what is left."""
    results: dict[str, Any] = {"plan": dataclasses.asdict(plan), "ensemble": ens,
                               "stage1_seconds": stage1_s, "students": {},
                               "progress": progress(plan, out)}
    for student in plan.students:
        scores = selection(plan, out, student)
        chosen, rows = best_setting(plan, scores), {}
        for arm in arm_names(plan, student):
            setting = setting_of(arm, chosen)
            runs = [] if setting is None else \
                [m for seed in range(plan.seeds) if (m := finished(out, student, arm, setting,
                                                                    seed))]
            if not runs:
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
