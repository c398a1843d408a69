"""Stage 2 benchmark: the streaming loader against raw decoding, preloaded targets and online KD.

Prints one table of ratios, each measured side by side in this run:
  1. loader rows/s / raw numcodecs decoding rows/s of the same chunks on the same threads
  2. peak RSS of a child process streaming a store of N/4 rows and of N rows (flat: same RSS)
  3. student epoch time with streamed targets / the same targets preloaded as a tensor
  4. student epoch time online (5-teacher ensemble every step) / offline (streamed store)
Stores are synthetic (N x C float16, made once and reused under --dir); the student runs on
Fashion-MNIST with a store written by stage 1 from a (randomly initialised) teacher.

    python scripts/bench_loader.py                      # N = 1,000,000 x 1,000 (about 2 GB)
    python scripts/bench_loader.py --n 100000 --student-rows 10000   # a quick run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numcodecs
import numpy as np
import torch
import torch.nn.functional as F

from softtargets.config import DataConfig, LogitsConfig
from softtargets.data import Split, load_split
from softtargets.distill import distillation_loss
from softtargets.loader import DistillData, StreamingDistillData, StreamOptions
from softtargets.models import ModelSpec, build, save_checkpoint
from softtargets.store import LOGITS, SAMPLE_ID, LogitStore, StoreWriter, read_meta
from softtargets.teacher import write_teacher_logits

Row = dict[str, object]


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
        if read_meta(url)[0].complete:
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
    """Read + numcodecs-decode (crc32c, then zstd) every logits and sample_id chunk; rows/s."""
    store = LogitStore.open(url)
    files = []
    for name, coords in ((LOGITS, lambda i: (i, 0)), (SAMPLE_ID, lambda i: (i,))):
        array = store.group[name]
        files += [Path(url) / name / array.metadata.encode_chunk_key(coords(i))
                  for i in range(store.num_chunks)]
    crc, zstd = numcodecs.CRC32C(location="end"), numcodecs.Zstd()

    def decode(path: Path) -> int:
        return len(zstd.decode(crc.decode(path.read_bytes())))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        total = sum(ex.map(decode, files))
    seconds = time.perf_counter() - t0
    assert total >= store.meta.n * store.meta.num_classes * 2
    return store.meta.n / seconds


def loader_rows_per_s(url: str, split: Split, options: StreamOptions, batch_size: int) -> float:
    """One full epoch of the streaming loader (ids joined to images and labels); rows/s."""
    data = StreamingDistillData(split, LogitStore.open(url), options=options)
    t0 = time.perf_counter()
    rows = sum(len(b[1]) for b in data.batches(batch_size=batch_size, epoch=0, seed=0))
    seconds = time.perf_counter() - t0
    assert rows == len(data)
    return rows / seconds


def rss_child(url: str, n: int, classes: int, root: str, batch_size: int) -> None:
    """(Run in a child) stream one epoch, print baseline and peak RSS in MB as JSON."""
    split = synthetic_split(Path(root), n, classes)
    base = current_rss_mb()
    data = StreamingDistillData(split, LogitStore.open(url), options=StreamOptions(
        loader="stream", decode_threads=2))
    rows, high = 0, base
    for step, batch in enumerate(data.batches(batch_size=batch_size, epoch=0, seed=0)):
        rows += len(batch[1])
        if step % 16 == 0:
            high = max(high, current_rss_mb())
    # VmHWM: peak RSS of this process image. Not ru_maxrss, which Linux carries over exec()
    # from the (large) parent that spawned this child.
    peak = _status_kb("VmHWM") / 1024
    print(json.dumps({"rows": rows, "base_mb": base, "peak_mb": peak, "growth_mb": high - base}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss(url: str, n: int, classes: int, root: Path, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", url, "--n", str(n),
                          "--classes", str(classes), "--dir", str(root),
                          "--batch-size", str(batch_size)],
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


def student_epoch(data: DistillData | StreamingDistillData, *, batch_size: int,
                  teachers: list[torch.nn.Module] | None = None, limit: int | None = None,
                  profile: dict[str, float] | None = None) -> float:
    """Seconds for one epoch of the 784-800-800-10 student (KD loss T=20, alpha=0.9, SGD).

    With `teachers`, targets are computed online: the ensemble runs on every batch (the mean
    of member logits = the geometric-mean ensemble) and the stored targets are ignored.
    """
    torch.manual_seed(0)
    model = build(ModelSpec(hidden=(800, 800)))
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t0 = time.perf_counter()
    for step, (images, labels, teacher) in enumerate(data.batches(batch_size=batch_size, epoch=0,
                                                                 seed=0)):
        if step == limit:
            break
        x = images.flatten(1).float().div_(255.0)  # (B, 784)
        if teachers is not None:
            t1 = time.perf_counter()
            with torch.inference_mode():
                teacher = torch.stack([t(x) for t in teachers]).mean(0)  # (B, 10)
            if profile is not None:
                profile["teachers"] = profile.get("teachers", 0.0) + time.perf_counter() - t1
        loss = distillation_loss(model(x), teacher, labels, temperature=20.0, alpha=0.9)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    return time.perf_counter() - t0


def measure(args: argparse.Namespace) -> list[Row]:
    """All four measurements; returns the table rows."""
    torch.set_num_threads(args.threads)
    root = Path(args.dir)
    url, split = synthetic_store(root, args.n, args.classes)
    quarter_url, _ = synthetic_store(root, args.n // 4, args.classes)
    gb = args.n * args.classes * 2 / 1e9
    rows: list[Row] = []

    # 1. throughput: alternate the two so background load hits both alike; best of `repeat`
    raw, streamed, workers = [], [], []
    opts = StreamOptions(loader="stream", decode_threads=args.threads)
    for _ in range(args.repeat):
        raw.append(raw_decode_rows_per_s(url, args.threads))
        streamed.append(loader_rows_per_s(url, split, opts, args.batch_size))
    rows.append(_row(f"loader / raw decode ({args.n:,} x {args.classes}, {gb:.1f} GB, rows/s)",
                     max(streamed), max(raw), max(streamed) / max(raw), ">= 0.80",
                     max(streamed) / max(raw) >= 0.80))
    if args.workers:
        wopts = dataclasses.replace(opts, workers=args.workers, decode_threads=1)
        workers.append(loader_rows_per_s(url, split, wopts, args.batch_size))
        rows.append(_row(f"  same, {args.workers} DataLoader worker processes (rows/s)",
                         max(workers), max(raw), max(workers) / max(raw), "(info)", None))

    # 2. peak RSS of a child streaming N/4 and N rows
    small = peak_rss(quarter_url, args.n // 4, args.classes, root, args.batch_size)
    big = peak_rss(url, args.n, args.classes, root, args.batch_size)
    rows.append(_row(f"peak RSS streaming N={args.n:,} / N/4={args.n // 4:,} (MB)",
                     big["peak_mb"], small["peak_mb"], big["peak_mb"] / small["peak_mb"],
                     "<= 0.5 GB, flat", big["peak_mb"] <= 512 and
                     big["peak_mb"] / small["peak_mb"] <= 1.10))
    rows.append(_row("  RSS growth while streaming, over RSS after imports (MB)",
                     big["growth_mb"], small["growth_mb"],
                     big["growth_mb"] / max(small["growth_mb"], 1e-9), "(info)", None))

    # 3 and 4: the student
    fsplit, furl = student_setup(root, args.student_rows)
    store = LogitStore.open(furl)
    pre, stream, online = [], [], []
    teachers = [build(ModelSpec(hidden=(1200, 1200))).eval() for _ in range(5)]
    student_epoch(DistillData(fsplit, store), batch_size=args.student_batch, teachers=teachers,
                  limit=20)  # warm-up: first-touch allocations and kernels are not timed
    for _ in range(args.repeat):
        pre.append(student_epoch(DistillData(fsplit, store), batch_size=args.student_batch))
        stream.append(student_epoch(StreamingDistillData(fsplit, store, options=opts),
                                    batch_size=args.student_batch))
    prof: dict[str, float] = {}
    online.append(student_epoch(DistillData(fsplit, store), batch_size=args.student_batch,
                                teachers=teachers, profile=prof))
    rows.append(_row(f"student epoch streamed / preloaded ({args.student_rows:,} rows, s)",
                     min(stream), min(pre), min(stream) / min(pre), "<= 1.05",
                     min(stream) / min(pre) <= 1.05))
    rows.append(_row("student epoch online 5-teacher / offline streamed (s)", min(online),
                     min(stream), min(online) / min(stream), ">= 3.0",
                     min(online) / min(stream) >= 3.0))
    rest = online[0] - prof["teachers"]
    rows.append(_row("  profile of the online epoch: 5 teacher forwards / the rest (s)",
                     prof["teachers"], rest, prof["teachers"] / rest, "(info: speedup bound "
                     f"{1 + prof['teachers'] / rest:.2f})", None))
    return rows


def _row(name: str, a: float, b: float, ratio: float, goal: str, met: bool | None) -> Row:
    return {"measurement": name, "a": a, "b": b, "ratio": ratio, "goal": goal,
            "met": "-" if met is None else ("yes" if met else "NO")}


def table(rows: list[Row]) -> str:
    """A markdown table of measurement | A | B | A/B | goal | met."""
    lines = ["| measurement (A / B) | A | B | A/B | goal | met |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['measurement']} | {_num(r['a'])} | {_num(r['b'])} | "
                     f"{r['ratio']:.2f} | {r['goal']} | {r['met']} |")
    return "\n".join(lines)


def _num(x: object) -> str:
    x = float(x)  # type: ignore[arg-type]
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="rows of the synthetic store")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=512, help="loader batch size (1, 2)")
    p.add_argument("--student-rows", type=int, default=60_000)
    p.add_argument("--student-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workers", type=int, default=2, help="also time N worker processes (0: no)")
    p.add_argument("--repeat", type=int, default=2, help="alternating repeats, best taken")
    p.add_argument("--dir", default="runs/bench", help="where stores are made and reused")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.n, args.classes, args.dir, args.batch_size)
        return
    rows = measure(args)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
