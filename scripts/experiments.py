#!/usr/bin/env python3
"""Run the paper's experiments and write reports/ (see softtargets/recipes/hinton2015/experiments.py, plots.py).

    python scripts/experiments.py --quick                 # a few minutes on 2 cores
    python scripts/experiments.py                         # default settings (about an hour)
    python scripts/experiments.py --report-only           # redraw reports/ from saved metrics
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from softtargets.config import parse_widths
from softtargets.errors import ConfigError, SofttargetsError
from softtargets.recipes.hinton2015.experiments import ExperimentConfig, run
from softtargets.recipes.hinton2015.plots import write_report


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10000 rows, 2 teachers, 5-6 epochs")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--out", default=None, help="run directory (default runs/<dataset>/paper"
                                                "[-quick])")
    p.add_argument("--reports", default=None, help="report directory (default reports[/quick])")
    p.add_argument("--limit", type=int, default=None, help="transfer-set rows")
    p.add_argument("--teachers", type=int, default=None, help="ensemble size")
    p.add_argument("--teacher-arch", choices=("mlp", "cnn"), default=None)
    p.add_argument("--teacher-hidden", default=None,
                   help="comma separated widths (cnn: C1,C2,FC), e.g. 16,32,128")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--teacher-dropout", type=float, default=None)
    p.add_argument("--student", action="append", default=None, dest="students",
                   help="'arch:widths' (e.g. mlp:800,800 or cnn:8,16,64); repeat for several")
    p.add_argument("--alphas", default=None,
                   help="comma separated weights of the soft-target term, chosen among on the "
                        "validation rows with T (default 0.5)")
    p.add_argument("--seeds", type=int, default=None,
                   help="students per reported setting (default 3; quick 2)")
    p.add_argument("--val-rows", type=int, default=None,
                   help="last training rows held out for every choice (default 5000)")
    p.add_argument("--student-epochs", type=int, default=None)
    p.add_argument("--temperatures", default=None, help="comma separated, e.g. 1,2,5,10,20")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report-only", action="store_true", help="only redraw reports/")
    return p.parse_args(argv)


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    widths = parse_widths(text)
    if widths is None:
        raise ConfigError(f"{flag} must be comma separated positive integers, e.g. 16,32,128; "
                          f"got {text!r}")
    return widths


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} must be comma separated numbers, e.g. 0.5,0.9; got "
                          f"{text!r}") from None


def config(a: argparse.Namespace) -> ExperimentConfig:
    over = {k: v for k, v in {
        "dataset": a.dataset, "data_dir": a.data_dir, "limit": a.limit, "teachers": a.teachers,
        "teacher_epochs": a.teacher_epochs, "teacher_arch": a.teacher_arch,
        "teacher_hidden": _ints(a.teacher_hidden, "--teacher-hidden"),
        "students": tuple(a.students) if a.students else None,
        "teacher_dropout": a.teacher_dropout, "alphas": _floats(a.alphas, "--alphas"),
        "seeds": a.seeds, "val_rows": a.val_rows, "student_epochs": a.student_epochs,
        "threads": a.threads,
        "temperatures": _floats(a.temperatures, "--temperatures")}.items() if v is not None}
    suffix = "-quick" if a.quick else ""
    over["out"] = a.out or f"runs/{a.dataset}/paper{suffix}"
    return ExperimentConfig.quick_preset(**over) if a.quick else ExperimentConfig(**over)


def main(argv: list[str]) -> int:
    a = parse(argv)
    try:
        cfg = config(a)
        if not a.report_only:
            run(cfg)
        reports = a.reports or ("reports/quick" if a.quick else "reports")
        table = write_report(Path(cfg.out) / "results.json", reports)
    except SofttargetsError as e:
        print(f"Error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(table.read_text())
    print(f"report: {table} and PNGs in {table.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
