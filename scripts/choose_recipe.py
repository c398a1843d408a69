#!/usr/bin/env python3
"""Choose the student's T and alpha on held-out validation rows; then 3 seeds of it and the
baseline (softtargets/recipes/hinton2015/recipe.py). Prints the tables; a rerun resumes from the saved students.

    make choose-recipe                                    # the make-student teacher's store
    python scripts/choose_recipe.py --store runs/fashion-mnist/teacher-logits.zarr \\
        --out runs/fashion-mnist/recipe --val-rows 5000
    python scripts/choose_recipe.py --store ... --out ... --table-only   # print saved results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from softtargets.config import parse_widths
from softtargets.errors import ConfigError, SofttargetsError
from softtargets.recipes.hinton2015.recipe import RecipeConfig, run, table


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", required=True, help="stage-1 store written with --val-rows")
    p.add_argument("--out", default="runs/fashion-mnist/recipe", help="run directory")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--limit", type=int, default=None, help="training rows (small runs)")
    p.add_argument("--val-rows", type=int, default=5000, help="held-out rows the choice uses")
    p.add_argument("--hidden", default="800,800", help="student MLP widths")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--temperatures", default="2,5,10", help="comma separated")
    p.add_argument("--alphas", default="0.5,0.9", help="comma separated")
    p.add_argument("--seeds", default="0,1,2", help="comma separated; the grid uses the first")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--table-only", action="store_true", help="print OUT/results.json's tables")
    return p.parse_args(argv)


def _numbers(text: str, flag: str, kind: type) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{flag} must be comma separated numbers, got {text!r}") from None


def config(a: argparse.Namespace) -> RecipeConfig:
    hidden = parse_widths(a.hidden)
    if hidden is None:
        raise ConfigError(f"--hidden must be comma separated positive integers, got {a.hidden!r}")
    return RecipeConfig(store=a.store, out=a.out, dataset=a.dataset, data_dir=a.data_dir,
                        limit=a.limit, val_rows=a.val_rows, hidden=hidden, epochs=a.epochs,
                        lr=a.lr, temperatures=_numbers(a.temperatures, "--temperatures", float),
                        alphas=_numbers(a.alphas, "--alphas", float),
                        seeds=_numbers(a.seeds, "--seeds", int), threads=a.threads)


def main(argv: list[str]) -> int:
    a = parse(argv)
    try:
        cfg = config(a)
        if a.table_only:
            path = Path(cfg.out) / "results.json"
            if not path.is_file():
                raise ConfigError(f"no saved results at {str(path)!r}; run without --table-only")
            results = json.loads(path.read_text())
        else:
            results = run(cfg)
    except SofttargetsError as e:
        print(f"Error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
