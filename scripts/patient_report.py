"""The patient experiment's summaries and report: per arm the test errors at the epoch chosen on
validation (mean and spread over seeds), the gap closed toward the ensemble, stage 1 and stage 2
seconds, and the two goals of the experiment checked in words (scripts/patient_experiment.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from softtargets.recipes.hinton2015.report import gap_closed
from softtargets.atomic import replacing, write_json

GAP_GOAL, GAP_STRETCH, COST_GOAL = 65.0, 80.0, 1 / 3


def is_online(arm: str) -> bool:
    """Whether the arm runs the teachers on every fresh input (no stored targets)."""
    return arm.startswith("online")


def best_epoch(runs: list[dict[str, Any]]) -> int:
    """Index of the epoch with the least mean validation errors over the seeds' runs."""
    val = np.mean([[h["val_errors"] for h in r["history"]] for r in runs], axis=0)
    return int(np.argmin(val))


def summarise(runs: list[dict[str, Any]], epoch: int, *, setting: tuple,
              stage1: tuple[float, float]) -> dict[str, Any]:
    """An arm's finished seeds at `epoch` (0-based); stage1: its store's (wall, CPU) seconds,
    zeros for the arms that write none."""
    test = [r["history"][epoch]["test_errors"] for r in runs]
    last = [r["history"][-1]["test_errors"] for r in runs]  # the schedule's end: no choice
    return {"setting": list(setting), "epoch": epoch + 1, "test_errors": test,
            "seeds": len(runs), "mean": float(np.mean(test)), "std": _std(test),
            "val_mean": float(np.mean([r["history"][epoch]["val_errors"] for r in runs])),
            "last_mean": float(np.mean(last)), "last_std": _std(last),
            "curve": np.mean([[h["test_errors"] for h in r["history"]] for r in runs],
                             axis=0).tolist(),
            "stage1_seconds": stage1[0], "stage1_cpu_seconds": stage1[1],
            "stage2_seconds": float(np.mean([r["stage2_seconds"] for r in runs])),
            "stage2_cpu_seconds": float(np.mean([r.get("stage2_cpu_seconds", float("nan"))
                                                 for r in runs])),
            "teacher_seconds": float(np.mean([r["teacher_seconds"] for r in runs]))}


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def report(results: dict[str, Any], where: Path) -> None:
    """results.json, a markdown table (README.md) and errors_vs_epochs.png under `where`."""
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / "results.json", results)
    ens, nan = results["ensemble"]["test_errors"], float("nan")
    lines = [f"Ensemble of {results['ensemble']['members']} teachers: {ens} test errors.", "",
             "| student | arm | chosen (loss, T, alpha), epoch | seeds | test errors (mean ± std)"
             " | gap closed | last epoch's test errors | stage 1 s | stage 2 s (teacher s) "
             "| CPU s, stage 1 + 2 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for student, s in results["students"].items():
        hard = s["arms"].get("hard", {}).get("mean", nan)
        for arm, r in s["arms"].items():
            gap = _gap(hard, r["mean"], r.get("ensemble", ens))
            mark = " (record)" if r.get("source") == "record" else ""
            lines.append(f"| {student} | {arm}{mark} | {tuple(r['setting'])}, {r['epoch']} | "
                         f"{r['seeds']}/{results['plan']['seeds']} | "
                         f"{r['mean']:.1f} ± {r['std']:.1f} | {gap:.0f}% | "
                         f"{r.get('last_mean', nan):.1f} ± {r.get('last_std', nan):.1f} | "
                         f"{r['stage1_seconds']:.0f} | {r['stage2_seconds']:.0f} "
                         f"({r['teacher_seconds']:.0f}) | {r.get('stage1_cpu_seconds', nan):.0f}"
                         f" + {r.get('stage2_cpu_seconds', nan):.0f} |")
    if any(r.get("source") == "record" for s in results["students"].values()
           for r in s["arms"].values()):
        lines += ["", "(record): measured before the ledger kept each run's history, from "
                  "teachers since lost (their ensemble: the gap column's); every other arm "
                  "learnt from the ensemble above. An arm's runs on these teachers replace its "
                  "record as they finish."]
    lines += ["", "Selection (least validation errors of seed 0 on the middle V, per setting "
              "(loss, T, alpha)):", ""]
    lines += [f"- {student}: {s['selection'] or 'not run yet'}; chosen {s['chosen']}"
              for student, s in results["students"].items()]
    lines += ["", "Goals:", ""] + verdicts(results) + _progress(results.get("progress"))
    twice = {k: n for k, n in results.get("store_builds", {}).items() if n > 1}
    if twice:
        lines += ["", f"Stores built with different targets (builds): {twice}: a rebuild on "
                  "another machine rounded some logits differently; seeds of one arm may have "
                  "learnt from either."]
    with replacing(where / "README.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, where / "errors_vs_epochs.png")


def _progress(progress: dict[str, Any] | None) -> list[str]:
    """The queue in words: finished, started (epochs saved of the schedule), not started."""
    if not progress:
        return []
    started = progress["started"]
    return ["", f"Runs: {progress['finished']} finished, {len(started)} started, "
            f"{progress['waiting']} not started.", ""] + \
        [f"- started: {r['run']}, epoch {r['epochs']} of {r['of']}" for r in started]


def _plot(results: dict[str, Any], path: Path) -> None:
    from softtargets.recipes.hinton2015.plots import _pyplot
    plt = _pyplot()
    students = results["students"]
    if not students:
        return
    fig, axes = plt.subplots(1, len(students), figsize=(6 * len(students), 4), squeeze=False)
    for ax, (student, s) in zip(axes[0], students.items()):
        for arm, r in s["arms"].items():
            record = r.get("source") == "record"
            ax.plot(range(1, len(r["curve"]) + 1), r["curve"], lw=0.8 if record else 1.5,
                    label=f"{arm} (record)" if record else arm)
        ens = results["ensemble"]["test_errors"]
        ax.axhline(ens, color="k", ls="--", label="ensemble")
        for other in {r["ensemble"] for r in s["arms"].values() if "ensemble" in r} - {ens}:
            ax.axhline(other, color="grey", ls=":", label="ensemble (record)")
        ax.set_ylim(0.95 * ens, 1.5 * ens)  # the late epochs, where the arms part
        ax.set(title=student, xlabel="epoch", ylabel="test errors (mean of seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _gap(hard: float, errors: float, ensemble: float) -> float:
    """Percent of the hard-labels-to-ensemble gap closed; nan when there is none."""
    closed = gap_closed(hard, errors, ensemble)
    return float("nan") if closed is None else 100 * closed


def verdicts(results: dict[str, Any]) -> list[str]:
    """The two goals per student in words: the gap closed by the stored arm with the least
    validation errors (>= 65%, stretch 80%), and the cheapest stored views arm at or below each
    online arm's errors, its cost (stage 1 + stage 2) over the online arm's (<= 1/3), in wall
    and in CPU seconds."""
    ens, out = results["ensemble"]["test_errors"], []
    for student, s in results["students"].items():
        arms = s["arms"]
        if "hard" not in arms:
            out.append(f"- {student}: no hard-label baseline yet")
            continue
        hard = arms["hard"]["mean"]
        stored = {a: r for a, r in arms.items() if a == "clean" or a[:5] in ("views", "mixed")}
        if stored:
            best = min(stored, key=lambda a: stored[a]["val_mean"])
            ens_best = stored[best].get("ensemble", ens)
            gap = _gap(hard, stored[best]["mean"], ens_best)
            met = "met" if gap >= GAP_GOAL else "not met"
            out.append(f"- {student}: the stored arm chosen on validation, {best}, closes "
                       f"{gap:.0f}% of the gap "
                       f"({hard:.1f} -> {stored[best]['mean']:.1f}, ensemble {ens_best}; seeds: "
                       f"hard {arms['hard']['seeds']}, {best} {stored[best]['seeds']} of "
                       f"{results['plan']['seeds']}): goal {GAP_GOAL:.0f}% {met}, stretch "
                       f"{GAP_STRETCH:.0f}% {'met' if gap >= GAP_STRETCH else 'not met'}")
        for online in filter(is_online, arms):
            o = arms[online]
            views = {a: r for a, r in stored.items() if a != "clean" and r["mean"] <= o["mean"]}
            if not views:
                out.append(f"- {student}: no stored views arm reaches {online}'s "
                           f"{o['mean']:.1f} errors")
                continue
            cost = {a: (r["stage1_seconds"] + r["stage2_seconds"]) / o["stage2_seconds"]
                    for a, r in views.items()}
            a = min(cost, key=cost.get)
            cpu = (views[a]["stage1_cpu_seconds"] + views[a]["stage2_cpu_seconds"]) / \
                o["stage2_cpu_seconds"]
            out.append(f"- {student}: {a} ({views[a]['mean']:.1f}) reaches {online} "
                       f"({o['mean']:.1f}) at {cost[a]:.2f} of its wall time, {cpu:.2f} of its "
                       f"CPU time: goal <= 1/3 {'met' if cost[a] <= COST_GOAL else 'not met'}"
                       + _teachers_note(views[a], o))
    return out


def _teachers_note(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Words for two arms compared across teachers (one from the ledger's record)."""
    if a.get("source") == b.get("source"):
        return ""
    return " (across teachers: one of the two arms is the record's)"
