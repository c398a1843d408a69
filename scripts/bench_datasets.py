"""Stage 2 through the public datasets: rows/s of a DataLoader epoch / raw decode of the same arrays.

For a dense store (N x C float16, written by LogitWriter from a softtargets dataset, so input
digests are checked too), a top-k store (C = 32,000, K = 32) and a per-position top-k store
(the same, over token sequences of --length positions): one epoch of
  StreamingDistillDataset under DataLoader(batch_size=None, num_workers=w), and
  DistillDataset under DataLoader(batch_size=B, shuffle=True, num_workers=w,
                                  collate_fn=DistillDataset.collate),
for w in --workers, each against raw decoding: every chunk file of the store's row arrays read
and decoded (crc32c, zstd/blosc) by numcodecs into numpy, nothing else, on --threads threads.

What limits the loaders is measured beside them, with numpy alone, no torch and no DataLoader:
  checked read: every unit read by the stream's own reader with every check (crc32c, sample ids,
                finite values, chunk digests) into reused buffers, on --threads threads;
  checked read + shuffle: the stream's own batches (read.order.worker_batches): the checked
                read, and each batch gathered from its group of units in shuffled order;
  ... + copy into shared memory: and each batch copied once more into a reused buffer, as a
                DataLoader worker copies it into its shared-memory ring (read/ship.py): the
                least a worker process does per batch;
  shuffle from memory: the same batches gathered from arrays already in memory (what the
                map-style DistillDataset does each epoch after loading the store once).
Their ratios to raw decode are the most a loader that checks and shuffles can reach here, and
the loader's ratio to them is what torch, the DataLoader and the process boundary cost.
All variants of one store run in interleaved rounds (order reversed every other round) after an
untimed warm-up; A/B is the median of per-round ratios. Workers are persistent (started once,
as with persistent_workers=True); a worker gets --threads // w decode threads. Every read keeps
its checks: crc32c, row checks, chunk digests, input digests.

    python scripts/bench_datasets.py                 # a few minutes on 2 cores
    python scripts/bench_datasets.py --tiny          # seconds: what tests/test_bench.py runs
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Row, _paired_row, interleaved, paired, table  # noqa: E402  (before torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import softtargets as st  # noqa: E402
from softtargets.format import sparse as sp  # noqa: E402
from softtargets.format import sparse_store as ss  # noqa: E402
from softtargets.format.chunks import _numcodecs_chain, decode_chunk  # noqa: E402
from softtargets.datasets.memory import TensorDataset  # noqa: E402
from softtargets.datasets.tokens import TokenSequences  # noqa: E402
from softtargets.format.store import read_meta  # noqa: E402
from softtargets.read.order import worker_batches  # noqa: E402
from softtargets.write import LogitWriter  # noqa: E402


def dataset(n: int, classes: int) -> TensorDataset:
    """n rows of 4-byte inputs, label 0: the loader's own work dominates, not the data's."""
    return st.from_tensors(np.zeros((n, 4), np.uint8), np.zeros(n, np.int64),
                           num_classes=classes, name=f"bench-{n}x{classes}")


def complete(url: str) -> bool:
    try:
        return bool(read_meta(url)[0].complete)
    except Exception:  # absent or unreadable: write it again
        return False


def dense_store(root: Path, n: int, classes: int) -> tuple[TensorDataset, str]:
    """A dense store of n x classes float16 logits (4 distinct random blocks), made once."""
    data, url = dataset(n, classes), str(root / f"ds-dense-{n}x{classes}.zarr")
    if not complete(url):
        rng = np.random.default_rng(0)
        pool = [(rng.standard_normal((1024, classes)) * 3).astype(np.float32) for _ in range(4)]
        with LogitWriter(url, dataset=data, overwrite=True) as w:
            for rows in w.todo_rows():
                for a in range(rows.start, rows.stop, 1024):
                    b = min(rows.stop, a + 1024)
                    w.append(np.arange(a, b), torch.from_numpy(pool[(a // 1024) % 4][:b - a]))
    return data, url


def topk_store(root: Path, n: int, classes: int, k: int) -> tuple[TensorDataset, str]:
    """A top-k store (k of `classes`, T = 1) of LM-like rows, written as converted rows."""
    data, url = dataset(n, classes), str(root / f"ds-top{k}-{n}x{classes}.zarr")
    if complete(url):
        return data, url
    spec = ss.make_spec(kind="topk", k=k, num_classes=classes, temperatures=(1.0,))
    w = ss.SparseWriter.create(url, spec=spec, n=n, class_names=[str(c) for c in range(classes)],
                               dataset=data.identity(), teacher={}, config={}, overwrite=True)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_rows(i, sample_ids=np.arange(sl.start, sl.stop),
                     rows=synthetic_rows(sl.stop - sl.start, classes, k, seed=i))
    w.finalize()
    return data, url


def positions_store(root: Path, n: int, classes: int, k: int,
                    length: int) -> tuple[TokenSequences, str]:
    """A per-position top-k store over n // length token sequences of `length` (chunks of
    whole sequences), and the TokenSequences it belongs to."""
    seqs = n // length
    tokens = root / f"tokens-{seqs}x{length}.bin"
    if not tokens.exists():
        rng = np.random.default_rng(1)
        rng.integers(0, classes, seqs * length + 1).astype(np.uint16).tofile(tokens)
    data = TokenSequences(tokens, seq_len=length, vocab_size=classes)
    url = str(root / f"ds-pos-top{k}-{seqs}x{length}x{classes}.zarr")
    if complete(url):
        return data, url
    spec = ss.make_spec(kind="topk", k=k, num_classes=classes, temperatures=(1.0,),
                        position=True)
    w = ss.SparseWriter.create(url, spec=spec, n=seqs * length, chunk_rows=32 * length,
                               class_names=[str(c) for c in range(classes)],
                               dataset=data.identity(), teacher={}, config={}, overwrite=True)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        rows = np.arange(sl.start, sl.stop)
        w.write_rows(i, sample_ids=rows // length, positions=rows % length,
                     rows=synthetic_rows(sl.stop - sl.start, classes, k, seed=i))
    w.finalize()
    return data, url


def synthetic_rows(r: int, classes: int, k: int, *, seed: int) -> sp.SparseRows:
    """r top-k rows: k class ids of `classes`, rank-sorted float16 logits, T = 1 tail."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(classes, size=(r, k), replace=True), axis=1)
    logits = np.sort(rng.normal(0, 3, (r, k)).astype(np.float16), axis=1)[:, ::-1]
    return sp.SparseRows(ids=ids.astype(np.int64), logits=np.ascontiguousarray(logits),
                         lse=np.full(r, 9.0, np.float32), tail=np.full((r, 1), 0.2, np.float32))


def raw_decoder(url: str, threads: int) -> Callable[[], float]:
    """Rows/s of decoding every chunk file of the store's row arrays into numpy, nothing else."""
    group = zarr.open_group(url, mode="r")
    jobs = []
    for name, array in group.arrays():  # the top level: row arrays (digests are a group)
        chain = _numcodecs_chain(array)
        for i in range(math.ceil(array.shape[0] / array.chunks[0])):
            key = array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))
            jobs.append((Path(url) / name / key, chain, array.chunks, array.dtype))
    n = read_meta(url)[0].n

    def decode(job: tuple) -> int:
        path, chain, shape, dtype = job
        out = np.empty(shape, dtype)
        decode_chunk(chain, path.read_bytes(), out)
        return out.nbytes

    def run() -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as ex:
            sum(ex.map(decode, jobs))
        return n / (time.perf_counter() - t0)
    return run


def numpy_limits(data: TensorDataset | TokenSequences, url: str, threads: int,
                 batch_size: int) -> dict[str, Callable[[], float]]:
    """Rows/s of the stream's own numpy work (module docstring): checked read, checked read
    + shuffle, and shuffle from memory."""
    stream = st.StreamingDistillDataset(data, url, batch_size=batch_size,
                                        decode_threads=threads)
    plan, reader = stream._plan(0), stream._reader()  # the stream's order and unit reader
    units, size = len(plan.kept), reader.capacity
    local = threading.local()  # each decode thread's own reused buffers
    rows = int(plan.kept.sum())

    def read(index: int) -> int:
        if not hasattr(local, "buffers"):
            local.buffers = [np.empty(size, np.int64), *(np.empty((size, *shape), dtype)
                                                         for shape, dtype in reader.layouts)]
        return reader.read_into(index, *local.buffers)

    def checked() -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as ex:
            sum(ex.map(read, range(units)))
        return rows / (time.perf_counter() - t0)

    def shuffled() -> float:
        t0 = time.perf_counter()
        got = sum(len(b[0]) for b in worker_batches(plan, epoch=0, worker=0, reader=reader))
        return got / (time.perf_counter() - t0)

    ring: dict[tuple, np.ndarray] = {}  # a reused buffer per array layout: the worker's ring

    def shipped() -> float:
        t0 = time.perf_counter()
        got = 0
        for batch in worker_batches(plan, epoch=0, worker=0, reader=reader):
            for a in batch:
                slot = ring.setdefault((a.shape, a.dtype.str), np.empty_like(a))
                np.copyto(slot, a)
            got += len(batch[0])
        return got / (time.perf_counter() - t0)

    whole = [np.concatenate(parts) for parts in zip(*(
        (ids, *arrays) for ids, *arrays in worker_batches(plan, epoch=0, worker=0,
                                                          reader=reader)))]
    order = np.random.default_rng(0).permutation(rows)

    def in_memory() -> float:
        t0 = time.perf_counter()
        for a in range(0, rows, batch_size):
            take = order[a:a + batch_size]
            batch = [array[take] for array in whole]
            del batch
        return rows / (time.perf_counter() - t0)
    return {"checked read": checked, "checked read + shuffle": shuffled,
            "checked read + shuffle + copy into shared memory": shipped,
            "shuffle from memory": in_memory}


def epoch(loader: DataLoader, n: int, length: int = 1) -> Callable[[], float]:
    """Store rows/s of one epoch of `loader` (which must deliver n items of `length` rows)."""
    def run() -> float:
        t0 = time.perf_counter()
        items = sum(len(batch[1]) for batch in loader)
        seconds = time.perf_counter() - t0
        if items != n:
            raise RuntimeError(f"an epoch gave {items} items, expected {n}")
        return items * length / seconds
    return run


def loaders(data: TensorDataset | TokenSequences, url: str, workers: int,
            args: argparse.Namespace, batch_size: int) -> dict[str, DataLoader]:
    """The streaming and the map-style DataLoader of `workers` workers."""
    decode = max(1, args.threads // max(1, workers))
    keep = {"persistent_workers": True} if workers else {}
    stream = st.StreamingDistillDataset(data, url, batch_size=batch_size,
                                        decode_threads=decode)
    mapped = st.DistillDataset(data, st.SoftTargets(url))  # loads the targets here, once
    return {f"stream w={workers}": DataLoader(stream, batch_size=None, num_workers=workers,
                                              **keep),
            f"map w={workers}": DataLoader(mapped, batch_size=batch_size, shuffle=True,
                                           num_workers=workers, **keep,
                                           collate_fn=st.DistillDataset.collate,
                                           generator=torch.Generator().manual_seed(0))}


def measure_store(label: str, data: TensorDataset | TokenSequences, url: str,
                  args: argparse.Namespace, *, length: int = 1) -> list[Row]:
    """Every variant against raw decode of one store; rows/s count store rows (positions of
    a per-position store: `length` per sequence, batches of batch_size // length sequences)."""
    n = len(data) * length
    cpu: dict[str, list[float]] = {}  # rows per CPU-second of this process, in-process runs
    variants = {"raw": with_cpu(raw_decoder(url, args.threads), n, cpu, "raw")}
    limits = numpy_limits(data, url, args.threads, max(1, args.batch_size // length))
    variants.update({name: scaled(run, length) for name, run in limits.items()})
    for w in args.workers:
        for name, dl in loaders(data, url, w, args, max(1, args.batch_size // length)).items():
            run = epoch(dl, len(data), length)
            variants[name] = with_cpu(run, n, cpu, name) if w == 0 else run
    got = interleaved(variants, repeat=args.repeat)
    rows = [_paired_row(f"  limit: {name} (numpy) / raw decode ({label})", got[name], got["raw"],
                        "(info)", None) for name in limits]
    # the most a reader that checks and shuffles reaches here: in this process, or in a worker
    # that also copies each batch into shared memory (every loader row names its limit)
    # (DistillDataset holds the targets in memory: its limit is the gather from memory)
    limit = {w: paired(got[key], got["raw"])[2] for w, key in (
        ("w=0", "checked read + shuffle"),
        ("worker", "checked read + shuffle + copy into shared memory"),
        ("map", "shuffle from memory"))}
    for name in variants:
        if name == "raw" or name in limits:
            continue
        kind, w = name.split(" ")
        what = "StreamingDistillDataset" if kind == "stream" else "DistillDataset"
        bound = limit["map" if kind == "map" else "w=0" if w == "w=0" else "worker"]
        goal = f">= 0.80 (limit {bound:.2f})"
        rows.append(_paired_row(f"{what} / raw decode ({label}, {w}, rows/s)", got[name],
                                got["raw"], goal, lambda r: r >= 0.80))
        if name in cpu:  # work, not waiting: less sensitive to other processes on the cores
            rows.append(_paired_row("  same, rows per CPU-second of this process", cpu[name][1:],
                                    cpu["raw"][1:], "(info)", None))
    return rows


def scaled(run: Callable[[], float], length: int) -> Callable[[], float]:
    """`run`'s items/s as store rows/s (`length` positions per sequence)."""
    return lambda: run() * length


def with_cpu(run: Callable[[], float], n: int, cpu: dict[str, list[float]],
             name: str) -> Callable[[], float]:
    """`run`, also recording n / (CPU seconds of every thread of this process) under `name`
    (the warm-up round's first, dropped by the caller)."""
    def timed() -> float:
        c0 = time.process_time()
        value = run()
        cpu.setdefault(name, []).append(n / max(time.process_time() - c0, 1e-9))
        return value
    return timed


def measure(args: argparse.Namespace) -> list[Row]:
    """Both stores, every worker count; returns the table rows."""
    torch.set_num_threads(args.threads)
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    data, url = dense_store(root, args.n, args.classes)
    rows = measure_store(f"dense {args.n:,} x {args.classes}", data, url, args)
    data, url = topk_store(root, args.sparse_n, args.sparse_classes, args.k)
    rows += measure_store(f"top-{args.k} of C={args.sparse_classes:,}, {args.sparse_n:,} rows",
                          data, url, args)
    if args.length:
        data, url = positions_store(root, args.sparse_n, args.sparse_classes, args.k, args.length)
        rows += measure_store(f"per-position top-{args.k} of C={args.sparse_classes:,}, "
                              f"{len(data):,} x {args.length} positions", data, url, args,
                              length=args.length)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200_000, help="rows of the dense store")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--sparse-n", type=int, default=200_000, help="rows of the top-k store")
    p.add_argument("--sparse-classes", type=int, default=32_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--length", type=int, default=64,
                   help="positions per sequence of the per-position store (0: none)")
    p.add_argument("--batch-size", type=int, default=512, help="rows (positions) per batch")
    p.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[0, 1, 2],
                   help="DataLoader worker counts, comma-separated")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="raw decode threads; torch threads; decode threads per process / workers")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default="runs/bench")
    p.add_argument("--tiny", action="store_true", help="tiny stores, one round (the test)")
    return p


def tiny(args: argparse.Namespace) -> argparse.Namespace:
    args.n, args.classes, args.sparse_n, args.sparse_classes = 2048, 64, 2048, 1000
    args.repeat, args.workers, args.length = 1, [0], 0
    return args


def main() -> None:
    args = parser().parse_args()
    if args.tiny:
        args = tiny(args)
    load0 = os.getloadavg()[0]
    rows = measure(args)
    print(f"# {os.cpu_count()} CPUs; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; batch {args.batch_size}, threads {args.threads}")
    print(table(rows))


if __name__ == "__main__":
    main()
