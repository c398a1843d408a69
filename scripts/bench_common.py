"""Shared by the benchmarks: thread budgets, interleaved a/b rounds, paired ratios, the table.

Import this before torch: it makes idle OpenMP threads sleep instead of spin (OMP_WAIT_POLICY,
read once when torch loads libgomp), unless the environment already chose a policy. Spinning
workers of torch's intra-op pool starve the loader's threads and any other process; on 2 busy
cores that made student epochs swing 4-25x between identical runs.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

if "OMP_WAIT_POLICY" not in os.environ:
    if "torch" in sys.modules:  # too late: libgomp has read its environment (the header says '-')
        warnings.warn("bench_common imported after torch: OMP_WAIT_POLICY left unset",
                      stacklevel=2)
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

from softtargets.atomic import write_json  # noqa: E402
from softtargets.read.loop import StreamOptions  # noqa: E402

Row = dict[str, object]


@dataclasses.dataclass(frozen=True)
class Threads:
    """The thread budget of one measurement; both sides of an a/b pair run under the same one."""

    intra: int  # torch intra-op (OpenMP) threads
    decode: int  # decode threads per decoding process (the loader's pool, raw decoding's pool)
    workers: int = 0  # DataLoader worker processes, each with `decode` threads (0: in-process)

    def apply(self) -> None:
        torch.set_num_threads(self.intra)

    def options(self) -> StreamOptions:
        return StreamOptions(loader="stream", decode_threads=self.decode, workers=self.workers)

    def describe(self) -> str:
        procs = f"{self.workers} worker processes x " if self.workers else ""
        return f"torch {self.intra}, {procs}{self.decode} decode"


def omp_settings() -> str:
    """The OpenMP environment the measurements ran under, for the table's header."""
    return ", ".join(f"{k}={os.environ.get(k, '-')}" for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"))


def pin_interop(n: int = 1) -> int:
    """Fix torch's inter-op pool at `n` threads (possible once per process); returns its size."""
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already fixed, or inter-op work already ran in this process
        pass
    return torch.get_num_interop_threads()


def interleaved(variants: dict[str, Callable[[], float]], *, repeat: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Each variant once per round, the order reversed every other round (A B, B A, A B, ...).

    `warmup` untimed rounds come first (page cache, first-touch allocations, lazy init); a
    garbage collection precedes every call so that none is charged to the variant after it.
    """
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            value = variants[name]()
            if r >= warmup:
                out[name].append(value)
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float, float, tuple[float, float]]:
    """Median of a, median of b, median of the per-round ratios a_i / b_i and their range."""
    if not a or len(a) != len(b):
        raise ValueError(f"need rounds of both variants, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    return (statistics.median(a), statistics.median(b), statistics.median(ratios),
            (min(ratios), max(ratios)))


def _paired_row(name: str, a: list[float], b: list[float], goal: str,
                test: Callable[[float], bool] | None) -> Row:
    ma, mb, ratio, spread = paired(a, b)
    return _row(name, ma, mb, ratio, goal, None if test is None else test(ratio), spread)


def _row(name: str, a: float, b: float, ratio: float, goal: str, met: bool | None,
         spread: tuple[float, float] | None = None) -> Row:
    return {"measurement": name, "a": a, "b": b, "ratio": ratio, "goal": goal,
            "met": "-" if met is None else ("yes" if met else "NO"),
            "range": None if spread is None else list(spread)}


def table(rows: list[Row]) -> str:
    """A markdown table of measurement | A | B | A/B | A/B range | goal | met."""
    lines = ["| measurement (A / B) | A | B | A/B | A/B range | goal | met |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        spread = r.get("range")
        span = "-" if not spread else f"{spread[0]:.2f}-{spread[1]:.2f}"  # type: ignore[index]
        lines.append(f"| {r['measurement']} | {_num(r['a'])} | {_num(r['b'])} | "
                     f"{r['ratio']:.2f} | {span} | {r['goal']} | {r['met']} |")
    return "\n".join(lines)


def _num(x: object) -> str:
    x = float(x)  # type: ignore[arg-type]
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def save_results(out: str | Path, results: object, text: str, *,
                 markdown: str = "results.md") -> None:
    """A benchmark's results as OUT/results.json and its table as OUT/<markdown>."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    (out / markdown).write_text(text)


def status_kb(field: str) -> int:
    """A field of /proc/self/status, kB (e.g. VmHWM: peak RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_pss_mb() -> float:
    """Proportional set size of this process and its children (DataLoader workers), MB."""
    pids = [os.getpid()]
    for task in Path("/proc/self/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:  # a worker that has just exited
            continue
        total += next(int(line.split()[1]) for line in text.splitlines()
                      if line.startswith("Pss:"))
    return total / 1024
