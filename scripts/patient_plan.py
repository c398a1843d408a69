"""The patient experiment's plan: its sizes (Plan), the arms of each student, the order their
runs are queued in, and each run's configuration and directory. Reads no runs
(scripts/patient_experiment.py runs them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from softtargets import Mix, Views
from softtargets.config import DataConfig
from softtargets.recipes.hinton2015.patient import ArmConfig

from patient_report import is_online

AUGMENT = "shift=2,flip=1,rotate=10,scale=1.1"  # padded random crop (pad 2), flip, rotate, zoom


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
    ledger: str | None = None  # committed record of the runs (main: <reports>/ledger)
    # (student, arm) run again on the ledger's teachers though the record holds all its seeds:
    # the stored arm the online reference is weighed against, so that goal compares one
    # set of teachers
    remeasure: tuple[tuple[str, str], ...] = (("mlp:800,800", "views4"),)


QUICK = Plan(out="runs/fashion-mnist/patient-quick", limit=2000, val_rows=1000, teachers=2,
             teacher_epochs=10, views=(4, 16), epochs=6, long_epochs=12,
             grid=(("kl", 4.0, 1.0), ("mse", 1.0, 1.0)), remeasure=())


def store_views(plan: Plan) -> dict[str, Views | None]:
    """Stage-1 stores of the train split by key: clean targets, views of each V, mixed views."""
    todo: dict[str, Views | None] = {"clean": None}
    for v in plan.views:
        todo[f"views{v}"] = Views(count=v, augment=AUGMENT, seed=0)
    kind, alpha, prob = plan.mix
    todo[f"mixed{max(plan.views)}"] = Views(count=max(plan.views), augment=AUGMENT, seed=0,
                                            mix=Mix(kind=kind, alpha=alpha, prob=prob))
    return todo


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


def read_store(arm: str) -> str | None:
    """The store the arm reads: its targets' store; hard labels stream the clean store's rows
    and labels; online arms read none."""
    return "clean" if arm == "hard" else store_key(arm)


def queue(plan: Plan) -> list[tuple[str, str, int]]:
    """(student, arm, seed) in the order they run; arm "select" is the student's loss-setting
    selection. One student after the other (the MLP's table is the goals' subject): the
    selection, then every seed of one arm before the next arm, in arm_names' order with the
    long arm beside the arm whose store it replays, the online arms last. Arm after arm, so
    that runs reading one stage-1 store run together: a new session's checkout has no stores,
    and the V=64 store takes 35 minutes to write again here; two workers run an arm's seeds
    side by side."""
    out: list[tuple[str, str, int]] = []
    for student in plan.students:
        arms = arm_names(plan, student)
        order = sorted(arms, key=lambda a: (is_online(a), arms.index(a.removesuffix("-long"))))
        out.append((student, "select", 0))
        out += [(student, arm, seed) for arm in order for seed in range(plan.seeds)]
    return out


def select_arm(plan: Plan) -> str:
    """The arm the loss setting is chosen on: stored views of the middle V."""
    return f"views{plan.views[len(plan.views) // 2]}"


def best_setting(plan: Plan, scores: dict[tuple, int]) -> tuple | None:
    """The selection's best once all of it has run (ties: the first in grid order)."""
    return min(scores, key=scores.get) if len(scores) == len(plan.grid) else None


def setting_of(arm: str, chosen: tuple | None) -> tuple | None:
    """The hard arm's fixed setting (labels only), else the chosen one."""
    return ("kl", 1.0, 0.0) if arm == "hard" else chosen
