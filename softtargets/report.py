"""Human-readable summaries of runs and stores (no torch import)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from softtargets.store import StoreMeta, _is_local, _local_path


def errors_text(m: dict[str, Any]) -> str:
    """'812/10000 test errors (91.88% accuracy)'."""
    return (f"{m['test_errors']}/{m['test_n']} test errors "
            f"({100 * m['test_accuracy']:.2f}% accuracy)")


def store_size(url: str) -> int:
    """Bytes on disk of a local store (0 for remote URLs)."""
    if not _is_local(url):
        return 0
    total = 0
    for root, _dirs, files in os.walk(_local_path(url)):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


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


def describe_store(meta: StoreMeta, url: str) -> str:
    """A few lines of provenance for `softtargets inspect`."""
    d, t = meta.dataset, meta.teacher
    size = store_size(url)
    raw = meta.n * meta.num_classes * 2
    ratio = f", {raw / size:.2f}x vs raw float16" if size else ""
    sparse = meta.extra.get("sparse")
    sparse_lines = [] if not sparse else [  # top-k / sampled stores (docs/FORMAT.md)
        f"sparse:     {meta.kind} K={sparse['k']} draws={sparse.get('draws')} "
        f"tail at T={sparse['temperatures']} from {sparse['computed_from']} ({sparse['source']})"]
    return "\n".join(sparse_lines + [
        f"store:      {url} ({meta.format} v{meta.version}, {meta.kind}, "
        f"{'complete' if meta.complete else 'INCOMPLETE'})",
        f"logits:     {meta.n} x {meta.num_classes} {meta.dtype}, {meta.chunk_rows} rows/chunk, "
        f"compressor {meta.compressor} + crc32c",
        f"size:       {size / 1e6:.2f} MB on disk{ratio}",
        f"dataset:    {d.get('name')}/{d.get('split')} n={d.get('n')} limit={d.get('limit')} "
        f"{d.get('fingerprint')}",
        f"teacher:    {t.get('arch')} {t.get('checkpoint')} {t.get('checkpoint_sha256')} "
        f"({t.get('precision')} on {t.get('device')})",
        f"created:    {meta.created_at} by " + ", ".join(f"{k} {v}" for k, v in
                                                        meta.created_by.items()),
    ])
