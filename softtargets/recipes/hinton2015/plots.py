"""reports/ from an experiments run: a markdown table and PNG figures, all read from metrics JSON.

Every number comes from the files the run saved (results.json, each student's metrics.json with
its per-epoch history and per-class errors, the teachers' and ensemble's JSON): a report can be
redrawn at any time without training anything. matplotlib comes from the `report` extra.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from softtargets.errors import ConfigError
from softtargets.recipes.hinton2015.recipe import cell_name
from softtargets.recipes.hinton2015.report import gap_closed


def _load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def collect(results_path: Path) -> dict[str, Any]:
    """results.json with every referenced metrics file loaded in place of its path (a student
    size: recipe.run's results, its grid, choice and seeds)."""
    r = _load(results_path)
    if any(not isinstance(p, str) for p in r["students"].values()):
        raise ConfigError(f"{results_path} is of an older layout (settings chosen on the test "
                          "set); rerun the experiments into a new --out")
    students = {name: _load(path) for name, path in r["students"].items()}
    omitted = dict(r["omitted"])
    omitted["distilled"], omitted["baseline"] = (_load(omitted["distilled"]),
                                                 _load(omitted["baseline"]))
    less = dict(r["less_data"])
    less["distilled"], less["baseline"] = _load(less["distilled"]), _load(less["baseline"])
    return {"config": r["config"], "teachers": [_load(p) for p in r["teachers"]],
            "ensemble": _load(r["ensemble"]), "students": students, "omitted": omitted,
            "less_data": less, "seconds": r.get("seconds")}


def _mean_sd(values: list[int]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def _chosen(s: dict[str, Any]) -> str:
    c = s["chosen"]
    return f"T={c['temperature']:g}, alpha={c['alpha']:g}"


def _jitter(cfg: dict[str, Any]) -> str:
    j = cfg.get("teacher_jitter")
    return "the dataset's default" if j is None else f"{j} px"


def markdown(d: dict[str, Any]) -> str:
    """The report's tables."""
    cfg, ens = d["config"], d["ensemble"]
    n = ens["test_n"]
    mode = "quick mode (not the paper's settings)" if cfg.get("quick") else "full settings"
    lines = [f"# softtargets: the paper's experiments on {cfg['dataset']} ({mode})", "",
             f"Transfer set: {cfg['limit'] or 'all'} training rows; teachers "
             f"({cfg.get('teacher_arch', 'mlp')}) {cfg['teacher_epochs']} epochs (dropout "
             f"{cfg.get('teacher_dropout', 0.5):g}, "
             f"jitter {_jitter(cfg)}), students {cfg['student_epochs']} "
             "epochs, "
             f"alpha among {cfg['alphas']}; test errors out of {n}. Run time (this "
             "invocation; saved steps are reused) "
             f"{(d['seconds'] or 0) / 60:.1f} min.", "",
             "## Teachers", "", "| model | test errors |", "|---|---:|"]
    for i, t in enumerate(d["teachers"]):
        lines.append(f"| teacher {i} ({t['model']}) | {t['test_errors']} |")
    lines += [f"| ensemble of {ens['members']} ({ens['rule']} mean) | {ens['test_errors']} |", "",
              "## Students: test errors", "",
              f"(T, alpha) chosen per student on the validation errors of seed 0 (the last "
              f"{cfg['val_rows']} training rows, held out from teachers and students); the "
              f"choice and the hard-label baseline then trained with seeds 0-{cfg['seeds'] - 1}: "
              "test errors, mean ± sd over the seeds. The test set plays no part in any "
              "choice.", "",
              "| student | baseline (hard labels) | chosen on validation | distilled | gap to "
              "ensemble closed (means) |", "|---|---:|---|---:|---:|"]
    for name, s in d["students"].items():
        b = [m["test_errors"] for m in s["baselines"]]
        t = [m["test_errors"] for m in s["distilled"]]
        closed = gap_closed(statistics.fmean(b), statistics.fmean(t), ens["test_errors"])
        lines.append(f"| {s['baselines'][0]['model']} | {_mean_sd(b)} | {_chosen(s)} | "
                     f"{_mean_sd(t)} | "
                     + ("n/a (no gap: ensemble not better)" if closed is None
                        else f"{100 * closed:.0f}%") + " |")
    first = next(iter(d["students"].values()))
    alphas = first["config"]["alphas"]
    lines += ["", "Validation errors of the grid (seed 0; baseline: hard labels):", "",
              "| student | baseline | " + " | ".join(
                  f"T={t:g}" + (f", a={a:g}" if len(alphas) > 1 else "")
                  for t in first["config"]["temperatures"] for a in alphas) + " |",
              "|---|---:|" + "---:|" * len(first["grid"])]
    for name, s in d["students"].items():
        lines.append(f"| {s['baselines'][0]['model']} | {s['baselines'][0]['val_errors']} | "
                     + " | ".join(str(m["val_errors"]) for m in s["grid"].values()) + " |")
    lines += ["", *omitted_table(d["omitted"]), "", *less_table(d["less_data"])]
    return "\n".join(lines) + "\n"


def omitted_table(o: dict[str, Any]) -> list[str]:
    k, name = o["class"], o["class_name"]
    n_k = o["before"]["test_n"]  # overall; per class count is not stored, errors are
    return [f"## Omitted class: no '{name}' (class {k}) in the transfer set "
            f"({o['transfer_rows']} rows)", "",
            f"| student | test errors (of {n_k}) | errors on class {k} |", "|---|---:|---:|",
            f"| hard labels | {o['baseline']['test_errors']} | "
            f"{o['baseline']['per_class_errors'][k]} |",
            f"| distilled (T={o['distilled']['config']['temperature']:g}) | "
            f"{o['before']['test_errors']} | {o['before']['class_errors']} |",
            f"| distilled, bias of class {k} + {o['shift']:g} (picked on "
            f"{o['validation_rows']} held-out rows) | {o['after']['test_errors']} | "
            f"{o['after']['class_errors']} |"]


def less_table(ld: dict[str, Any]) -> list[str]:
    # the last epoch's errors only: the epoch count is fixed in advance, and the least test
    # errors over epochs would be a choice made on the test set
    rows = [f"## Less data: {100 * ld['fraction']:g}% of the transfer set ({ld['rows']} rows, "
            f"{ld['baseline']['config']['epochs']} epochs)", "",
            "| student | test errors after the last epoch |", "|---|---:|"]
    for label, m in (("hard labels", ld["baseline"]),
                     (f"distilled (T={ld['distilled']['config']['temperature']:g})",
                      ld["distilled"])):
        rows.append(f"| {label} | {m['test_errors']} |")
    return rows


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("the report's figures need matplotlib: pip install -e '.[report]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_errors_vs_t(d: dict[str, Any], path: Path) -> None:
    """Validation errors (seed 0) of each student's grid against T, at the chosen alpha."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    temps: list[float] = []
    for name, s in d["students"].items():
        alpha = s["chosen"]["alpha"]
        cells = [(t, s["grid"][cell_name(t, alpha)]["val_errors"])
                 for t in s["config"]["temperatures"]]
        temps = [t for t, _ in cells]
        model = s["baselines"][0]["model"]
        line, = ax.plot(temps, [e for _, e in cells], "o-", label=f"{model} distilled")
        ax.axhline(s["baselines"][0]["val_errors"], ls="--", color=line.get_color(),
                   label=f"{model} hard labels")
    ax.set_xscale("log")
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set(xlabel="temperature T", ylabel="validation errors (seed 0)",
           title="Distilled students vs. T, on the held-out rows")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(d: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    name, s = next(iter(d["students"].items()))
    t = f"{s['chosen']['temperature']:g}"
    panels = [(f"{s['baselines'][0]['model']}, full transfer set, seed 0", s["baselines"][0],
               s["distilled"][0], t),
              (f"{100 * d['less_data']['fraction']:g}% of the transfer set",
               d["less_data"]["baseline"], d["less_data"]["distilled"],
               f"{d['less_data']['distilled']['config']['temperature']:g}")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, base, dist, temp) in zip(axes, panels):
        for m, label in ((base, "hard labels"), (dist, f"distilled T={temp}")):
            ax.plot([h["epoch"] for h in m["history"]], [h["test_errors"] for h in m["history"]],
                    "o-", label=label)
        ax.axhline(d["ensemble"]["test_errors"], ls=":", color="k", label="teacher ensemble")
        ax.set(xlabel="epoch", ylabel="test errors", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class(d: dict[str, Any], path: Path, class_names: list[str] | None = None) -> None:
    import numpy as np
    plt = _pyplot()
    name, s = next(iter(d["students"].items()))
    o = d["omitted"]
    bars = [("ensemble", d["ensemble"]["per_class_errors"]),
            ("hard labels", s["baselines"][0]["per_class_errors"]),
            (f"distilled {_chosen(s)}", s["distilled"][0]["per_class_errors"]),
            (f"no class {o['class']}", o["before"]["per_class_errors"]),
            (f"no class {o['class']}, bias +{o['shift']:g}", o["after"]["per_class_errors"])]
    c = len(bars[0][1])
    x = np.arange(c)
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (label, errs) in enumerate(bars):
        ax.bar(x + (i - len(bars) / 2 + 0.5) * width, errs, width, label=label)
    ax.set_xticks(x, class_names or [str(i) for i in range(c)], rotation=30, fontsize=8)
    ax.set(ylabel="test errors",
           title=f"Per-class test errors ({s['baselines'][0]['model']}, seed 0)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results_path: str | Path, reports_dir: str | Path) -> Path:
    """Write table.md and three PNGs under reports_dir; returns the table's path."""
    from softtargets.datasets.idx_files import DATASETS
    d = collect(Path(results_path))
    out = Path(reports_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(DATASETS[d["config"]["dataset"]].class_names)
    plot_errors_vs_t(d, out / "errors_vs_T.png")
    plot_curves(d, out / "training_curves.png")
    plot_per_class(d, out / "per_class_errors.png", names)
    text = markdown(d) + "\n![errors vs T](errors_vs_T.png)\n\n" \
        "![training curves](training_curves.png)\n\n![per-class errors](per_class_errors.png)\n"
    (out / "table.md").write_text(text)
    return out / "table.md"
