"""Choose the student's recipe (T, alpha) on held-out validation rows, then repeat it over seeds.

1. Grid: one student per (T, alpha) and a hard-label baseline, seed 0, all trained on the rows
   before the last `val_rows` of the train split; the cell with the fewest validation errors
   is chosen (ties: the first in grid order). The test set plays no part in the choice.
2. Seeds: the chosen recipe and the baseline with every seed; test errors, mean and spread, and
   the gap to the teacher closed on the means.

Every student saves its metrics.json under `out` and is skipped when that file exists, so an
interrupted run resumes; `out/config.json` refuses a resume with other settings or another
teacher (rundir.check_run_dir).
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

from softtargets.atomic import write_json
from softtargets.config import (DataConfig, StudentTrainConfig, check_alpha, check_temperature,
                                to_dict)
from softtargets.errors import ConfigError
from softtargets.recipes.hinton2015.rundir import cached_json, check_run_dir, log
from softtargets.recipes.hinton2015.report import gap_closed, gap_text
from softtargets.format.store import read_meta
from softtargets.recipes.hinton2015.train import train_student


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """The store to distil from, the data split, and the grid and seeds to run."""

    store: str
    out: str = "runs/fashion-mnist/recipe"
    dataset: str = "fashion-mnist"
    data_dir: str = "data"
    limit: int | None = None
    val_rows: int = 5000
    arch: str = "mlp"  # mlp | cnn (hidden: the CNN's C1,C2,FC)
    hidden: tuple[int, ...] = (800, 800)
    epochs: int = 20
    lr: float = 0.05
    temperatures: tuple[float, ...] = (2.0, 5.0, 10.0)
    alphas: tuple[float, ...] = (0.5, 0.9)
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher_sha256: str | None = None  # filled from the store: a new teacher is a new run
    combine: str | None = None  # ensemble stores: the members' combination rule
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.val_rows <= 0:
            raise ConfigError(f"--val-rows must be positive: the recipe is chosen on the held-out "
                              f"rows, got {self.val_rows}")
        if not self.temperatures or not self.alphas or not self.seeds:
            raise ConfigError("the grid needs at least one temperature, one alpha and one seed")
        for t in self.temperatures:
            check_temperature(t)
        for a in self.alphas:
            check_alpha(a)

    @property
    def data(self) -> DataConfig:
        return DataConfig(dataset=self.dataset, data_dir=self.data_dir, limit=self.limit,
                          val_rows=self.val_rows)


def cell_name(temperature: float, alpha: float) -> str:
    """Directory name of one grid cell, e.g. 'T5-a0.5'."""
    return f"T{temperature:g}-a{alpha:g}"


def student(cfg: RecipeConfig, out: Path, *, seed: int, temperature: float | None = None,
            alpha: float = 0.0) -> dict[str, Any]:
    """Train one student (or reuse its metrics.json); temperature None = hard-label baseline."""
    done = cached_json(out / "metrics.json")
    if done is not None:
        return done
    store = None if temperature is None else cfg.store
    scfg = StudentTrainConfig(data=cfg.data, store=store, arch=cfg.arch, hidden=cfg.hidden,
                              temperature=temperature or 1.0, alpha=alpha, epochs=cfg.epochs,
                              lr=cfg.lr, seed=seed, threads=cfg.threads,
                              combine=cfg.combine if store else None)
    m = train_student(scfg, out_dir=str(out), progress=False)
    how = "hard labels" if temperature is None else cell_name(temperature, alpha)
    log(f"{how} seed {seed}: {m['val_errors']} validation, {m['test_errors']} test errors "
        f"({m['seconds']:.0f} s)")
    return m


def run(cfg: RecipeConfig, *, teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """The grid at seed 0, the choice, then every seed of the choice and the baseline.
    teacher: the metrics the gap is measured to (model, test_errors, test_n, val_errors);
    default: those of the store's teacher checkpoint."""
    meta, _ = read_meta(cfg.store)
    cfg = dataclasses.replace(cfg, teacher_sha256=meta.teacher.get("checkpoint_sha256"))
    out = Path(cfg.out)
    check_run_dir(cfg, out)
    first = cfg.seeds[0]
    grid = {cell_name(t, a): student(cfg, out / cell_name(t, a) / f"seed{first}", seed=first,
                                     temperature=t, alpha=a)
            for t in cfg.temperatures for a in cfg.alphas}
    baselines = [student(cfg, out / "baseline" / f"seed{s}", seed=s) for s in cfg.seeds]
    chosen = min(grid, key=lambda name: grid[name]["val_errors"])  # min keeps the first of ties
    t, a = next((t, a) for t in cfg.temperatures for a in cfg.alphas if cell_name(t, a) == chosen)
    distilled = [grid[chosen]] + [student(cfg, out / chosen / f"seed{s}", seed=s, temperature=t,
                                          alpha=a) for s in cfg.seeds[1:]]
    results = {"config": to_dict(cfg), "teacher": teacher or teacher_metrics(meta.teacher),
               "grid": grid,
               "chosen": {"temperature": t, "alpha": a, "name": chosen},
               "baselines": baselines, "distilled": distilled}
    write_json(out / "results.json", results)
    return results


def teacher_metrics(teacher: dict[str, Any]) -> dict[str, Any]:
    """Test and validation errors of the store's teacher, from its checkpoint's metrics file."""
    path = Path(str(teacher.get("checkpoint"))).with_suffix(".json")
    m = cached_json(path) if teacher.get("checkpoint") else None
    if m is None:
        raise ConfigError(f"the store's teacher metrics {str(path)!r} are missing; the gap "
                          "closed needs the teacher's test errors (train-teacher writes them)")
    return {k: m.get(k) for k in ("model", "test_errors", "test_n", "val_errors", "val_n")}


def _spread(values: list[int]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} | {min(values)}-{max(values)} | {sd:.1f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: validation errors of the grid, then test errors of every seed."""
    cfg, grid, chosen = results["config"], results["grid"], results["chosen"]
    teacher, base, dist = results["teacher"], results["baselines"], results["distilled"]
    seeds = cfg["seeds"]
    lines = [f"Validation errors (out of the last {cfg['val_rows']} training rows), seed "
             f"{seeds[0]}; student {base[0]['model']}, {cfg['epochs']} epochs, lr {cfg['lr']:g}; "
             f"teacher {teacher['model']}:", "",
             "| T | " + " | ".join(f"alpha {a:g}" for a in cfg["alphas"]) + " |",
             "|---:|" + "---:|" * len(cfg["alphas"])]
    for t in cfg["temperatures"]:
        lines.append(f"| {t:g} | " + " | ".join(
            str(grid[cell_name(t, a)]["val_errors"]) for a in cfg["alphas"]) + " |")
    lines += ["", f"Hard-label baseline: {base[0]['val_errors']} validation errors; teacher: "
              f"{teacher.get('val_errors')}. Chosen: T={chosen['temperature']:g}, "
              f"alpha={chosen['alpha']:g} (fewest validation errors).", "",
              "Test errors (out of {}):".format(base[0]["test_n"]), "",
              "| model | " + " | ".join(f"seed {s}" for s in seeds)
              + " | mean | range | sd | validation (mean) |",
              "|---|" + "---:|" * (len(seeds) + 4)]
    rows = [("baseline (hard labels)", base),
            (f"distilled T={chosen['temperature']:g}, alpha={chosen['alpha']:g}", dist)]
    for name, runs in rows:
        tests = [m["test_errors"] for m in runs]
        val = statistics.fmean(m["val_errors"] for m in runs)
        lines.append(f"| {name} | " + " | ".join(map(str, tests)) + f" | {_spread(tests)} | "
                     f"{val:.1f} |")
    lines.append(f"| teacher | {teacher['test_errors']} |" + " |" * (len(seeds) + 3))
    b = statistics.fmean(m["test_errors"] for m in base)
    d = statistics.fmean(m["test_errors"] for m in dist)
    per_seed = [gap_closed(x["test_errors"], y["test_errors"], teacher["test_errors"])
                for x, y in zip(base, dist)]
    lines += ["", f"Gap closed, (baseline - distilled) / (baseline - teacher), on the means: "
              f"{gap_text(b, d, teacher['test_errors'])}; per seed "
              + ", ".join("n/a" if g is None else f"{100 * g:.0f}%" for g in per_seed) + "."]
    return "\n".join(lines)
