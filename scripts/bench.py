"""`make bench`: both benchmarks with quick defaults, one table of side-by-side ratios.

    python scripts/bench.py                       # a few minutes on 2 cores
    python scripts/bench.py --n 1000000 --student-rows 60000 --cnn-rows 10000   # full size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_codecs  # noqa: E402
import bench_common  # noqa: E402
import bench_datasets  # noqa: E402
import bench_loader  # noqa: E402
import bench_teacher_logits  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="rows of the synthetic logit store")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--sparse-n", type=int, default=200_000,
                   help="rows of the top-k store (C = 32,000, K = 32)")
    p.add_argument("--student-rows", type=int, default=20_000)
    p.add_argument("--rows", type=int, default=60_000, help="stage-1 rows, MLP teacher")
    p.add_argument("--cnn-rows", type=int, default=5_000, help="stage-1 rows, CNN teacher")
    p.add_argument("--repeat", type=int, default=3,
                   help="stage 2: interleaved rounds, median taken; stage 1: best of")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads of every measurement; stage 2 decode threads")
    p.add_argument("--dir", default="runs/bench")
    p.add_argument("--gpu-results", default="runs/gpu-check/results.json",
                   help="rows of scripts/gpu_check.sh, added to the table when the file exists")
    args = p.parse_args()
    if args.repeat < 1 or args.threads < 1:
        raise SystemExit("--repeat and --threads must be >= 1")
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    bench_common.pin_interop(1)  # before any torch work; stage 2 reports the size
    loader_args = bench_loader.parser().parse_args(
        ["--n", str(args.n), "--classes", str(args.classes), "--student-rows",
         str(args.student_rows), "--repeat", str(args.repeat), "--threads", str(args.threads),
         "--dir", args.dir])
    teacher_args = bench_teacher_logits.parser().parse_args(
        ["--rows", str(args.rows), "--cnn-rows", str(args.cnn_rows), "--repeat",
         str(args.repeat), "--threads", str(args.threads), "--dir", args.dir])
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    datasets_args = bench_datasets.parser().parse_args(
        ["--n", str(args.n), "--classes", str(args.classes), "--sparse-n", str(args.sparse_n),
         "--repeat", str(args.repeat), "--threads", str(args.threads), "--dir", args.dir])
    rows = (bench_teacher_logits.measure(teacher_args) + bench_loader.measure(loader_args)
            + bench_datasets.measure(datasets_args))
    rows += extra_rows(args)
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
          f", torch threads {args.threads}; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end, {time.perf_counter() - t0:.0f} s; "
          f"{bench_common.omp_settings()}")
    print(bench_loader.header(loader_args))
    print(bench_loader.table(rows))


def extra_rows(args: argparse.Namespace) -> list[bench_common.Row]:
    """Stage 2 against the memcpy limit (scripts/bench_codecs.py), and the GPU check's rows
    when a device run left its results (scripts/gpu_check.sh)."""
    url, split = bench_loader.synthetic_store(Path(args.dir), args.n, args.classes)
    rows = bench_codecs.stage2_vs_memcpy(url, split, threads=args.threads, batch_size=512,
                                         repeat=args.repeat, root=Path(args.dir))
    return rows + gpu_rows(Path(args.gpu_results))


def gpu_rows(path: Path) -> list[bench_common.Row]:
    """The rows of a GPU check's results.json, named by its device and date; none without."""
    if not path.is_file():
        return []
    got = json.loads(path.read_text())
    env = got.get("environment", {})
    where = f"{env.get('gpu') or env.get('device', '?')}, {env.get('date', '?')}"
    return [{**r, "measurement": f"GPU check ({where}): {r['measurement'].strip()}"}
            for r in got.get("rows", [])]


if __name__ == "__main__":
    main()
