"""Human-readable summaries of runs and stores (no torch import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def errors_text(m: dict[str, Any]) -> str:
    """'812/10000 test errors (91.88% accuracy)', plus '; 301/5000 validation errors' if any."""
    text = (f"{m['test_errors']}/{m['test_n']} test errors "
            f"({100 * m['test_accuracy']:.2f}% accuracy)")
    if "val_errors" in m:
        text += f"; {m['val_errors']}/{m['val_n']} validation errors"
    return text


def gap_closed(baseline: float, distilled: float, teacher: float) -> float | None:
    """Fraction of the baseline-to-teacher gap the distilled student closes (None: no gap)."""
    return None if baseline <= teacher else (baseline - distilled) / (baseline - teacher)


def gap_text(baseline: float, distilled: float, teacher: float) -> str:
    """'35% ((989 - 916) / (989 - 775))', or why there is no gap to close; means get 1 decimal."""
    closed = gap_closed(baseline, distilled, teacher)
    b, d, t = (f"{x:.1f}" if isinstance(x, float) else str(x) for x in (baseline, distilled,
                                                                       teacher))
    if closed is None:
        return f"n/a: the teacher ({t}) is no better than the baseline ({b})"
    return f"{100 * closed:.0f}% (({b} - {d}) / ({b} - {t}))"


def summary_table(run_dir: Path) -> str:
    """Markdown table of the teacher, baseline and distilled student of one run directory, the
    gap the distilled student closes and what the validation errors are."""
    rows = [("teacher", run_dir / "teacher.json"), ("baseline student", run_dir / "baseline" /
            "metrics.json"), ("distilled student", run_dir / "student" / "metrics.json")]
    lines = ["| model | architecture | test errors | validation errors | accuracy | train time |",
             "|---|---|---:|---:|---:|---:|"]
    found: dict[str, dict[str, Any]] = {}
    for name, path in rows:
        if not path.is_file():
            lines.append(f"| {name} | (not run: {path} missing) | | | | |")
            continue
        m = found[name] = json.loads(path.read_text())
        if m.get("role") == "distilled":
            c = m["config"]
            name += f" (T={c['temperature']:g}, alpha={c['alpha']:g})"
        val = f"{m['val_errors']}/{m['val_n']}" if "val_errors" in m else "-"
        lines.append(f"| {name} | {m['model']} | {m['test_errors']}/{m['test_n']} | {val} | "
                     f"{100 * m['test_accuracy']:.2f}% | {m['seconds']:.0f} s |")
    return "\n".join(lines + _gap_lines(found))


def _gap_lines(found: dict[str, dict[str, Any]]) -> list[str]:
    """Gap closed, (baseline - distilled) / (baseline - teacher), on test and validation rows."""
    if len(found) < 3:
        return []
    t, b, d = found["teacher"], found["baseline student"], found["distilled student"]
    lines = ["", "gap closed, (baseline - distilled) / (baseline - teacher): test "
             + gap_text(b["test_errors"], d["test_errors"], t["test_errors"])]
    if all("val_errors" in m for m in (t, b, d)):
        lines[-1] += "; validation " + gap_text(b["val_errors"], d["val_errors"], t["val_errors"])
        lines.append(f"validation errors: on the last {d['config']['data']['val_rows']} training "
                     "rows (--val-rows), held out from the teacher and the students; the "
                     "student's recipe (T, alpha, lr) was chosen on them, not on the test set")
    return lines


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
