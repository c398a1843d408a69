"""Stage 2 benchmark: the streaming loader against raw decoding, preloaded targets and online KD.

Prints one table of ratios, each measured side by side in this run:
  1. loader rows/s / raw numcodecs decoding rows/s of the same chunks on the same threads
  2. peak RSS of a child process streaming a store of N/4 rows and of N rows (flat: same RSS)
  3. student epoch time with streamed targets / the same targets preloaded as a tensor
  4. student epoch time online (5-teacher ensemble every step) / offline (streamed store)
Stores are synthetic (N x C float16, made once and reused under --dir); the student runs on
Fashion-MNIST with a store written by stage 1 from a (randomly initialised) teacher.

Fairness: every a/b pair runs under one explicit thread budget (`Threads`, printed in the
header); torch's inter-op pool is fixed at one thread. The variants of a pair are timed in
interleaved rounds whose order is reversed every other round (A B, B A, A B, ...), after an
untimed warm-up; A and B are medians and A/B is the median of the per-round ratios, with their
min-max range in the table. The student variants run the same model, initialisation, batch
size, steps and rows; only where the targets come from differs (checked, not assumed).

    python scripts/bench_loader.py                      # N = 1,000,000 x 1,000 (about 2 GB)
    python scripts/bench_loader.py --n 100000 --student-rows 10000   # a quick run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (Row, Threads, _paired_row, _row, current_rss_mb,  # noqa: E402,F401
                          interleaved, omp_settings, pin_interop, status_kb, table,
                          tree_pss_mb)  # first: before torch

import numcodecs  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from softtargets.atomic import write_json  # noqa: E402
from softtargets.config import DataConfig, LogitsConfig  # noqa: E402
from softtargets.datasets.idx_files import Split, load_split  # noqa: E402
from softtargets.datasets.idx import IDXDataset  # noqa: E402
from softtargets.read import DenseTarget, StreamingDistillDataset, distillation_loss  # noqa: E402
from softtargets.read.loop import Batches, StreamOptions  # noqa: E402
from softtargets.recipes.hinton2015.models import ModelSpec, build, save_checkpoint  # noqa: E402
from softtargets.format.store import LOGITS, SAMPLE_ID, LogitStore, StoreWriter, read_meta  # noqa: E402
from softtargets.format.codecs import DENSE_COMPRESSOR  # noqa: E402
from softtargets.write.idx_teacher import write_teacher_logits  # noqa: E402


def synthetic_split(root: Path, n: int, classes: int) -> Split:
    """n rows of tiny 4x4 images and labels, memory-mapped so RSS counts only touched pages."""
    root.mkdir(parents=True, exist_ok=True)
    img, lbl = root / f"images-{n}.npy", root / f"labels-{n}.npy"
    if not img.exists():
        rng = np.random.default_rng(n)
        np.save(lbl, rng.integers(0, min(classes, 256), n).astype(np.uint8))
        np.save(img, rng.integers(0, 256, (n, 4, 4)).astype(np.uint8))
    return Split(name="synthetic", split="train", images=np.load(img, mmap_mode="r"),
                 labels=np.load(lbl, mmap_mode="r"),
                 class_names=tuple(str(c) for c in range(classes)))


def synthetic_store(root: Path, n: int, classes: int) -> tuple[str, Split]:
    """A complete store of n x classes float16 logits (8 distinct random chunks, reused)."""
    split = synthetic_split(root, n, classes)
    url = str(root / f"logits-{n}x{classes}.zarr")
    try:
        meta = read_meta(url)[0]
        if meta.complete and meta.compressor == DENSE_COMPRESSOR:  # else of an older default
            return url, split
    except Exception:  # absent or incomplete: write it again
        pass
    t0 = time.perf_counter()
    w = StoreWriter.create(url, n=n, class_names=split.class_names, dataset=split.identity(),
                           teacher={"arch": "synthetic"}, config={}, overwrite=True)
    rng = np.random.default_rng(0)
    rows = w.meta.chunk_rows
    pool = [(rng.standard_normal((rows, classes)) * 3).astype(np.float16) for _ in range(8)]

    def write(i: int) -> None:
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=np.arange(sl.start, sl.stop),
                      logits=pool[i % len(pool)][:sl.stop - sl.start])

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(write, range(w.num_chunks)))
    w.finalize()
    print(f"# wrote {url}: {n * classes * 2 / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return url, split


def raw_decode_rows_per_s(url: str, threads: int) -> float:
    """Read + numcodecs-decode (crc32c, then the store's compressor) every logits and
    sample_id chunk; rows/s."""
    store = LogitStore.open(url)
    files = []
    for name, coords in ((LOGITS, lambda i: (i, 0)), (SAMPLE_ID, lambda i: (i,))):
        array = store.group[name]
        files += [Path(url) / name / array.metadata.encode_chunk_key(coords(i))
                  for i in range(store.num_chunks)]
    crc = numcodecs.CRC32C(location="end")
    inner = {"zstd": numcodecs.Zstd().decode, "blosc": numcodecs.Blosc().decode,
             "none": bytes}[store.meta.compressor]

    def decode(path: Path) -> int:
        return len(inner(crc.decode(path.read_bytes())))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        total = sum(ex.map(decode, files))
    seconds = time.perf_counter() - t0
    if total < store.meta.n * store.meta.num_classes * 2:
        raise RuntimeError(f"raw decoding of {url} gave {total} bytes, fewer than the store's")
    return store.meta.n / seconds


T = 20.0  # the student's temperature (targets are read at it)


def batches(split: Split, url: str, options: StreamOptions, batch_size: int) -> Batches:
    """The student loop's batches of `split` with the targets of `url` (read.loop.Batches:
    streamed through StreamingDistillDataset, or in memory through DistillDataset)."""
    return Batches(IDXDataset.from_split(split), url, batch_size=batch_size, seed=0,
                   temperature=T, options=options)


def loader_rows_per_s(data: Batches, batch_size: int) -> float:
    """One full epoch of the streaming loader (ids joined to images and labels); rows/s."""
    t0 = time.perf_counter()
    rows = sum(len(b[1]) for b in data.epoch(0))
    seconds = time.perf_counter() - t0
    if rows != len(data):
        raise RuntimeError(f"the loader gave {rows} rows, the store has {len(data)}")
    return rows / seconds


def rss_child(url: str, n: int, classes: int, root: str, batch_size: int, threads: int,
              workers: int = 0) -> None:
    """(Run in a child) stream one epoch, print baseline and peak RSS in MB as JSON. With
    DataLoader workers, the peak of the summed PSS of this process and its workers (sampled:
    shared memory counted once)."""
    split = synthetic_split(Path(root), n, classes)
    base = current_rss_mb()
    options = StreamOptions(loader="stream", decode_threads=max(1, threads // max(1, workers)),
                            workers=workers)
    data = batches(split, url, options, batch_size)
    rows, high, tree = 0, base, 0.0
    for step, batch in enumerate(data.epoch(0)):
        rows += len(batch[1])
        if step % 16 == 0:
            high = max(high, current_rss_mb())
            if workers:
                tree = max(tree, tree_pss_mb())
    # VmHWM: peak RSS of this process image. Not ru_maxrss, which Linux carries over exec()
    # from the (large) parent that spawned this child.
    peak = status_kb("VmHWM") / 1024
    print(json.dumps({"rows": rows, "base_mb": base, "peak_mb": tree if workers else peak,
                      "growth_mb": high - base}))


def peak_rss(url: str, n: int, classes: int, root: Path, batch_size: int, threads: int,
             workers: int = 0) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", url, "--n", str(n),
                          "--classes", str(classes), "--dir", str(root),
                          "--batch-size", str(batch_size), "--threads", str(threads),
                          "--rss-workers", str(workers)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def student_setup(root: Path, rows: int) -> tuple[Split, str]:
    """Fashion-MNIST (first `rows`) and a stage-1 store of a random 784-1200-1200-10 teacher."""
    split = load_split(DataConfig(dataset="fashion-mnist", limit=rows))
    ckpt = root / f"teacher-{rows}.pt"
    torch.manual_seed(0)
    spec = ModelSpec(hidden=(1200, 1200))
    save_checkpoint(ckpt, model=build(spec), spec=spec, config={}, dataset=split.identity(),
                    class_names=split.class_names, metrics={})
    url = str(root / f"fashion-{rows}.zarr")
    write_teacher_logits(LogitsConfig(data=DataConfig(dataset="fashion-mnist", limit=rows),
                                      teacher=str(ckpt), store=url, chunk_rows=1024,
                                      overwrite=True, device="cpu"), progress=False)
    return split, url


@dataclasses.dataclass
class Epoch:
    """What one timed student epoch did: wall seconds, optimiser steps, rows, teacher seconds."""

    seconds: float
    steps: int
    rows: int
    teacher_seconds: float = 0.0


def student_epoch(data: Batches, *, batch_size: int,
                  teachers: list[torch.nn.Module] | None = None,
                  limit: int | None = None) -> Epoch:
    """One epoch of the 784-800-800-10 student (KD loss T=20, alpha=0.9, SGD), timed.

    The model and its initialisation are the same on every call. With `teachers`, targets are
    computed online: the ensemble runs on every batch (the mean of member logits = the
    geometric-mean ensemble) and the stored targets are ignored.
    """
    torch.manual_seed(0)
    model = build(ModelSpec(hidden=(800, 800)))
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = rows = 0
    in_teachers = 0.0
    t0 = time.perf_counter()
    for images, labels, teacher in data.epoch(0):
        if steps == limit:
            break
        x = images.flatten(1).float().div_(255.0)  # (B, 784)
        if teachers is not None:
            t1 = time.perf_counter()
            with torch.inference_mode():
                teacher = DenseTarget(T, logits=torch.stack([t(x) for t in teachers]).mean(0))
            in_teachers += time.perf_counter() - t1
        loss = distillation_loss(model(x), teacher, labels, temperature=T, alpha=0.9)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        steps, rows = steps + 1, rows + len(labels)
    return Epoch(time.perf_counter() - t0, steps, rows, in_teachers)


def check_same_rows(pre: Batches, stream: Batches, batch_size: int) -> None:
    """The streamed epoch covers exactly the preloaded rows (by sample id)."""
    ids = np.concatenate([b[0].numpy() for b in StreamingDistillDataset(
        stream.stream.dataset, stream.stream.url, batch_size=batch_size, with_ids=True)])
    if not np.array_equal(np.sort(ids), np.sort(pre.rows.data.sample_ids)):
        raise RuntimeError("streamed and preloaded student epochs see different rows")


def measure(args: argparse.Namespace) -> list[Row]:
    """All four measurements; returns the table rows."""
    pin_interop(1)
    root = Path(args.dir)
    url, split = synthetic_store(root, args.n, args.classes)
    quarter_url, _ = synthetic_store(root, args.n // 4, args.classes)
    gb = args.n * args.classes * 2 / 1e9
    rows: list[Row] = []

    # 1. throughput: raw decoding and the loader with the same decode threads, interleaved
    budget = Threads(intra=args.threads, decode=args.threads)
    budget.apply()
    data = batches(split, url, budget.options(), args.batch_size)
    cpu: dict[str, list[float]] = {"loader": [], "raw": []}  # rows per CPU-second

    def with_cpu(name: str, fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            c0 = time.process_time()  # all threads of this process
            value = fn()
            cpu[name].append(args.n / (time.process_time() - c0))
            return value
        return run

    variants = {"loader": with_cpu("loader", lambda: loader_rows_per_s(data, args.batch_size)),
                "raw": with_cpu("raw", lambda: raw_decode_rows_per_s(url, budget.decode))}
    if args.workers:
        wbudget = Threads(intra=args.threads, decode=max(1, args.threads // args.workers),
                          workers=args.workers)
        wdata = batches(split, url, wbudget.options(), args.batch_size)
        variants["workers"] = lambda: loader_rows_per_s(wdata, args.batch_size)
    got = interleaved(variants, repeat=args.repeat)
    rows.append(_paired_row(f"loader / raw decode ({args.n:,} x {args.classes}, {gb:.1f} GB, "
                            f"rows/s; {budget.describe()})", got["loader"], got["raw"],
                            ">= 0.80", lambda r: r >= 0.80))
    rows.append(_paired_row("  same, rows per CPU-second of this process (work, not waiting)",
                            cpu["loader"], cpu["raw"], "(info)", None))
    if args.workers:
        rows.append(_paired_row(f"  same, {wbudget.describe()} (rows/s)", got["workers"],
                                got["raw"], "(info)", None))

    # 2. peak RSS of a child streaming N/4 and N rows
    small = peak_rss(quarter_url, args.n // 4, args.classes, root, args.batch_size, args.threads)
    big = peak_rss(url, args.n, args.classes, root, args.batch_size, args.threads)
    # below two groups of chunks the N/4 stream never fills its buffers: flatness is untested
    filled = LogitStore.open(quarter_url).num_chunks >= 2 * StreamOptions().buffer_chunks
    rows.append(_row(f"peak RSS streaming N={args.n:,} / N/4={args.n // 4:,} (MB)",
                     big["peak_mb"], small["peak_mb"], big["peak_mb"] / small["peak_mb"],
                     "<= 0.5 GB, flat" if filled else "<= 0.5 GB (N/4 < 2 groups: flat untested)",
                     big["peak_mb"] <= 512 and (not filled or
                                                big["peak_mb"] / small["peak_mb"] <= 1.10)))
    rows.append(_row("  RSS growth while streaming, over RSS after imports (MB)",
                     big["growth_mb"], small["growth_mb"],
                     big["growth_mb"] / max(small["growth_mb"], 1e-9), "(info)", None))
    for w in (1, 2):
        small = peak_rss(quarter_url, args.n // 4, args.classes, root, args.batch_size,
                         args.threads, w)
        big = peak_rss(url, args.n, args.classes, root, args.batch_size, args.threads, w)
        rows.append(_row(f"peak PSS, main + {w} DataLoader worker{'s' * (w > 1)}, streaming "
                         f"N / N/4 (MB)", big["peak_mb"], small["peak_mb"],
                         big["peak_mb"] / small["peak_mb"], "<= 1 GB, flat",
                         big["peak_mb"] <= 1024 and (not filled or
                                                     big["peak_mb"] / small["peak_mb"] <= 1.10)))
    rows += measure_student(args, root)
    return rows


def measure_student(args: argparse.Namespace, root: Path) -> list[Row]:
    """3 and 4: student epochs, preloaded / streamed / online, in interleaved rounds."""
    fsplit, furl = student_setup(root, args.student_rows)
    budget = Threads(intra=args.threads, decode=args.student_decode_threads)
    budget.apply()
    pre = batches(fsplit, furl, StreamOptions(loader="memory"), args.student_batch)
    stream = batches(fsplit, furl, budget.options(), args.student_batch)
    check_same_rows(pre, stream, args.student_batch)
    torch.manual_seed(1)
    teachers = [build(ModelSpec(hidden=(1200, 1200))).eval() for _ in range(5)]
    epochs: dict[str, list[Epoch]] = {"preloaded": [], "streamed": [], "online": []}
    runs = {"preloaded": lambda: student_epoch(pre, batch_size=args.student_batch),
            "streamed": lambda: student_epoch(stream, batch_size=args.student_batch),
            "online": lambda: student_epoch(pre, batch_size=args.student_batch,
                                            teachers=teachers)}
    # warm-up, untimed: whole offline epochs; the (slow) online variant for 20 steps
    runs["preloaded"]()
    runs["streamed"]()
    student_epoch(pre, batch_size=args.student_batch, teachers=teachers, limit=20)

    def timed(name: str) -> Callable[[], float]:
        def run() -> float:
            epochs[name].append(runs[name]())
            return epochs[name][-1].seconds
        return run

    got = interleaved({name: timed(name) for name in runs}, repeat=args.repeat, warmup=0)
    work = {(e.steps, e.rows) for name in epochs for e in epochs[name]}
    if len(work) != 1:
        raise RuntimeError(f"student variants did different work (steps, rows): {sorted(work)}")
    steps, nrows = work.pop()
    what = f"{nrows:,} rows, {steps} steps of {args.student_batch}; {budget.describe()}"
    rows = [_paired_row(f"student epoch streamed / preloaded ({what}, s)", got["streamed"],
                        got["preloaded"], "<= 1.05", lambda r: r <= 1.05),
            _paired_row("student epoch online 5-teacher / offline streamed (s)", got["online"],
                        got["streamed"], ">= 3.0", lambda r: r >= 3.0)]
    teach = statistics.median(e.teacher_seconds for e in epochs["online"])
    rest = statistics.median(e.seconds - e.teacher_seconds for e in epochs["online"])
    rows.append(_row("  profile of the online epoch: 5 teacher forwards / the rest (s)",
                     teach, rest, teach / rest, "(info: speedup bound "
                     f"{1 + teach / rest:.2f})", None))
    return rows


def header(args: argparse.Namespace) -> str:
    """Thread settings and method of the stage-2 measurements, as comment lines."""
    w = args.workers
    return "\n".join([
        f"# stage 2 threads: torch intra-op {args.threads}, inter-op "
        f"{torch.get_num_interop_threads()}; loader/raw decode {args.threads} each"
        + (f"; workers row {w} processes x {max(1, args.threads // w)} decode" if w else "")
        + f"; student variants torch {args.threads}, streamed + {args.student_decode_threads} "
        f"decode and 1 prefetch thread; {omp_settings()}",
        f"# stage 2 ratios: median of {args.repeat} interleaved rounds (order reversed every "
        "other round) after an untimed warm-up; A/B range: min-max of the per-round ratios"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="rows of the synthetic store")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=512, help="loader batch size (1, 2)")
    p.add_argument("--student-rows", type=int, default=60_000)
    p.add_argument("--student-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads, and decode threads of loader and raw decoding")
    p.add_argument("--student-decode-threads", type=int, default=1,
                   help="decode threads of the streamed student (its 10-class store is small)")
    p.add_argument("--workers", type=int, default=2, help="also time N worker processes (0: no)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds, median taken")
    p.add_argument("--dir", default="runs/bench", help="where stores are made and reused")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rss-workers", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.n, args.classes, args.dir, args.batch_size, args.threads,
                  args.rss_workers)
        return
    for name in ("threads", "student_decode_threads", "repeat"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    load0 = os.getloadavg()[0]
    rows = measure(args)
    print(f"# {os.cpu_count()} CPUs; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(header(args))
    print(table(rows))
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
