"""Human-readable summaries of runs and stores (no torch import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def errors_text(m: dict[str, Any]) -> str:
    """'812/10000 test errors (91.88% accuracy)'."""
    return (f"{m['test_errors']}/{m['test_n']} test errors "
            f"({100 * m['test_accuracy']:.2f}% accuracy)")


def summary_table(run_dir: Path) -> str:
    """Markdown table of the teacher, baseline and distilled student of one run directory."""
    rows = [("teacher", run_dir / "teacher.json"), ("baseline student", run_dir / "baseline" /
            "metrics.json"), ("distilled student", run_dir / "student" / "metrics.json")]
    lines = ["| model | architecture | test errors | accuracy | train time |",
             "|---|---|---:|---:|---:|"]
    for name, path in rows:
        if not path.is_file():
            lines.append(f"| {name} | (not run: {path} missing) | | | |")
            continue
        m = json.loads(path.read_text())
        if m.get("role") == "distilled":
            c = m["config"]
            name += f" (T={c['temperature']:g}, alpha={c['alpha']:g})"
        lines.append(f"| {name} | {m['model']} | {m['test_errors']}/{m['test_n']} | "
                     f"{100 * m['test_accuracy']:.2f}% | {m['seconds']:.0f} s |")
    return "\n".join(lines)


def logits_line(meta: Any, *, seconds: float, size: int, store: str, k: int | None,
                resume: bool, resumed: bool) -> str:
    """The summary line of `teacher-logits`; with --resume, whether a store was resumed or there
    was none and a new one was written."""
    what = f" from {meta.teacher['members']} members" if "members" in meta.teacher else ""
    form = "float16 logits" if meta.kind == "dense" else f"{meta.kind} (K={k})"
    how = (" (resumed: verified chunks kept)" if resumed else
           " (--resume: there was no store to resume, so a new one was written)" if resume else "")
    return (f"teacher-logits: {meta.n} x {meta.num_classes} {form}{what} in {seconds:.1f} s "
            f"({meta.n / seconds:,.0f} rows/s), {size / 1e6:.2f} MB on disk -> {store}{how}")
