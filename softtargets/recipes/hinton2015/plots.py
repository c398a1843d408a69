"""reports/ from an experiments run: a markdown table and PNG figures, all read from metrics JSON.

Every number comes from the files the run saved (results.json, each student's metrics.json with
its per-epoch history and per-class errors, the teachers' and ensemble's JSON): a report can be
redrawn at any time without training anything. matplotlib comes from the `report` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from softtargets.errors import ConfigError
from softtargets.recipes.hinton2015.report import gap_closed


def _load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def collect(results_path: Path) -> dict[str, Any]:
    """results.json with every referenced metrics file loaded in place of its path."""
    r = _load(results_path)
    students = {}
    for name, s in r["students"].items():
        students[name] = {"hidden": s["hidden"], "baseline": _load(s["baseline"]),
                          "distilled": {t: _load(p) for t, p in s["distilled"].items()}}
    omitted = dict(r["omitted"])
    omitted["distilled"], omitted["baseline"] = (_load(omitted["distilled"]),
                                                 _load(omitted["baseline"]))
    less = dict(r["less_data"])
    less["distilled"], less["baseline"] = _load(less["distilled"]), _load(less["baseline"])
    return {"config": r["config"], "teachers": [_load(p) for p in r["teachers"]],
            "ensemble": _load(r["ensemble"]), "students": students, "omitted": omitted,
            "less_data": less, "seconds": r.get("seconds")}


def best_t(student: dict[str, Any]) -> str:
    """The temperature (as stored, e.g. '20') with the fewest final test errors."""
    return min(student["distilled"], key=lambda t: student["distilled"][t]["test_errors"])


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
             f"alpha {cfg['alpha']}; test errors out of {n}. Run time (this invocation; saved "
             "steps are reused) "
             f"{(d['seconds'] or 0) / 60:.1f} min.", "",
             "## Teachers", "", "| model | test errors |", "|---|---:|"]
    for i, t in enumerate(d["teachers"]):
        lines.append(f"| teacher {i} ({t['model']}) | {t['test_errors']} |")
    lines += [f"| ensemble of {ens['members']} ({ens['rule']} mean) | {ens['test_errors']} |", "",
              "## Students: test errors", ""]
    temps = list(next(iter(d["students"].values()))["distilled"])
    lines += ["| student | baseline (hard labels) | " + " | ".join(f"T={t}" for t in temps)
              + " | best distilled | gap to ensemble closed |",
              "|---|---:|" + "---:|" * len(temps) + "---:|---:|"]
    for name, s in d["students"].items():
        b, t = s["baseline"]["test_errors"], best_t(s)
        best = s["distilled"][t]["test_errors"]
        closed = gap_closed(b, best, ens["test_errors"])
        lines.append(f"| {s['baseline']['model']} | {b} | "
                     + " | ".join(str(s["distilled"][x]["test_errors"]) for x in temps)
                     + f" | {best} (T={t}) | "
                     + ("n/a (no gap: ensemble not better)" if closed is None
                        else f"{100 * closed:.0f}%") + " |")
    lines += ["", "Gap to the ensemble closed at each T, (baseline - distilled) / (baseline - "
              "ensemble); the best-distilled column above picks T on the test set, this table "
              "shows every T:", "",
              "| student | " + " | ".join(f"T={t}" for t in temps) + " |",
              "|---|" + "---:|" * len(temps)]
    for name, s in d["students"].items():
        b = s["baseline"]["test_errors"]
        cells = [gap_closed(b, s["distilled"][x]["test_errors"], ens["test_errors"])
                 for x in temps]
        lines.append(f"| {s['baseline']['model']} | " + " | ".join(
            "n/a" if c is None else f"{100 * c:.0f}%" for c in cells) + " |")
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
    rows = [f"## Less data: {100 * ld['fraction']:g}% of the transfer set ({ld['rows']} rows, "
            f"{ld['baseline']['config']['epochs']} epochs)", "",
            "| student | final test errors | best epoch's test errors |", "|---|---:|---:|"]
    for label, m in (("hard labels", ld["baseline"]),
                     (f"distilled (T={ld['distilled']['config']['temperature']:g})",
                      ld["distilled"])):
        rows.append(f"| {label} | {m['test_errors']} | "
                    f"{min(h['test_errors'] for h in m['history'])} |")
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
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, s) in enumerate(d["students"].items()):
        temps = [float(t) for t in s["distilled"]]
        errs = [m["test_errors"] for m in s["distilled"].values()]
        line, = ax.plot(temps, errs, "o-", label=f"{s['baseline']['model']} distilled")
        ax.axhline(s["baseline"]["test_errors"], ls="--", color=line.get_color(),
                   label=f"{s['baseline']['model']} hard labels")
    ax.axhline(d["ensemble"]["test_errors"], ls=":", color="k", label="teacher ensemble")
    ax.set_xscale("log")
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set(xlabel="temperature T", ylabel="test errors", title="Distilled students vs. T")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(d: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    name, s = next(iter(d["students"].items()))
    t = best_t(s)
    panels = [(f"{s['baseline']['model']}, full transfer set", s["baseline"], s["distilled"][t], t),
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
            ("hard labels", s["baseline"]["per_class_errors"]),
            (f"distilled T={best_t(s)}", s["distilled"][best_t(s)]["per_class_errors"]),
            (f"no class {o['class']}", o["before"]["per_class_errors"]),
            (f"no class {o['class']}, bias +{o['shift']:g}", o["after"]["per_class_errors"])]
    c = len(bars[0][1])
    x = np.arange(c)
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (label, errs) in enumerate(bars):
        ax.bar(x + (i - len(bars) / 2 + 0.5) * width, errs, width, label=label)
    ax.set_xticks(x, class_names or [str(i) for i in range(c)], rotation=30, fontsize=8)
    ax.set(ylabel="test errors", title=f"Per-class test errors ({s['baseline']['model']})")
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
