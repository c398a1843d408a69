"""How closely the patient experiment's students match the teacher ensemble on the rows they
trained on (clean inputs), the validation rows and the test rows: top-1 agreement and KL at T=1
(softtargets.recipes.hinton2015.fidelity). Students as their last epoch left them.

    python scripts/patient_fidelity.py runs/fashion-mnist/patient/runs/mlp-800-800/*/*/seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softtargets.atomic import write_json
from softtargets.config import DataConfig, from_dict
from softtargets.datasets.idx_files import load_split, load_validation
from softtargets.errors import CheckpointError, SofttargetsError
from softtargets.recipes.hinton2015.fidelity import fidelity
from softtargets.recipes.hinton2015.models import load_checkpoint
from softtargets.recipes.hinton2015.patient import load_run_state, load_student
from softtargets.recipes.hinton2015.train import split_logits


def run_data(states: dict[str, dict[str, Any]]) -> DataConfig:
    """The data config the runs (their loaded state.pt by directory) trained on, which must be
    one for all: the students are compared on the same training, validation and test rows."""
    found = {run: from_dict(DataConfig, state["config"]["data"]) for run, state in states.items()}
    if len(set(found.values())) != 1:
        raise SystemExit("patient_fidelity: the runs trained on different data configs "
                         f"{sorted(set(map(str, found.values())))}; pass runs of one experiment")
    return next(iter(found.values()))


def main() -> None:
    """Bad input (a directory without state.pt, a missing teacher) is one line, not a traceback."""
    try:
        report()
    except SofttargetsError as e:
        sys.exit(f"Error: {type(e).__name__}: {e}")


def report() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories (each with state.pt)")
    ap.add_argument("--experiment", default="runs/fashion-mnist/patient",
                    help="the experiment directory (its teachers/teacher-*.pt)")
    ap.add_argument("--out", default="reports/patient/fidelity.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = sorted(Path(args.experiment, "teachers").glob("teacher-*.pt"))
    if not paths:
        raise CheckpointError(f"no teacher-*.pt under {str(Path(args.experiment, 'teachers'))!r}; "
                              "pass --experiment, the directory the runs' teachers are in")
    states = {run: load_run_state(run) for run in args.runs}
    data = run_data(states)
    splits = {"train": load_split(data), "val": load_validation(data),
              "test": load_split(data.for_test())}
    teachers = [load_checkpoint(p).model for p in paths]
    members = {k: np.stack([split_logits(t, s) for t in teachers]) for k, s in splits.items()}
    lines = [f"Students against the ensemble of {len(teachers)} teachers, clean inputs, T=1 "
             "(agreement: top-1 the same; KL(ensemble || student) in nats).", "",
             "| run | " + " | ".join(f"{k}: errors (ensemble), agreement, KL" for k in splits)
             + " |", "|---|" + "---|" * len(splits)]
    found = {}
    for run, state in states.items():
        name = "/".join(Path(run).parts[-3:])
        student = load_student(state, splits["train"])  # one model for all splits' rows
        row = {k: fidelity(split_logits(student, s), members[k], s.labels)
               for k, s in splits.items()}
        found[name] = row
        lines.append(f"| {name} | " + " | ".join(
            f"{r['student_errors']} ({r['ensemble_errors']}) of {r['rows']}, "
            f"{100 * r['agreement']:.1f}%, {r['kl']:.3f}" for r in row.values()) + " |")
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    write_json(out.with_suffix(".json"), found)


if __name__ == "__main__":
    main()
