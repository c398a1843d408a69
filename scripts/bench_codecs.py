"""Codec of each store kind by measurement: bytes on disk and read speed, side by side in one run.

For every array that dominates a store kind (dense `logits`; top-k `topk_ids` + `topk_logits`;
sampled `sampled_ids` + `sampled_logits` + `sampled_counts`), on realistic values, each
portable (Zarr v3 spec) compressor, always followed by crc32c as in every softtargets store:

  none (crc32c only) | zstd level 1 | zstd level 3 | blosc lz4 + byte shuffle | blosc zstd-5 +
  byte shuffle (the `blosc` choice of softtargets) | blosc zstd-5 + bit shuffle (`bitshuffle`)

and, as the limit, a copy of the same raw bytes out of a (page-cached) npy memmap. Per array:
bytes ratio (chunk objects / raw bytes), whole-array read GB/s (zarr `array[:]`, raw bytes per
second; chunks of the size softtargets picks), read / memcpy, and the storage bandwidth below
which the codec's fewer bytes pay for its slower decode against `none` (`crossover`:
  ratio / B + 1 / read = 1 / B + 1 / read_none  =>  B = (1 - ratio) / (1 / read - 1 / read_none)).

Values: a Fashion-MNIST teacher trained here for a few seconds (60,000 x 10 logits); LM-like
logits of scripts/bench_sparse.py at C = 1,000 (dense) and C = 32,000 (top-32 and 32 draws).
Rounds are interleaved (bench_common.interleaved), medians taken.

    python scripts/bench_codecs.py                      # a few minutes on 2 cores
    python scripts/bench_codecs.py --dense-rows 200000 --sparse-rows 65536
    python scripts/bench_codecs.py --tiny               # seconds: the test's dry run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Row, _row, interleaved, save_results  # noqa: E402  (first: OMP)

import numpy as np  # noqa: E402
import zarr  # noqa: E402
from bench_sparse import lm_logits  # noqa: E402
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec  # noqa: E402

from softtargets.format import sparse as sp  # noqa: E402
from softtargets.format.codecs import default_chunk_rows  # noqa: E402
from softtargets.format.sparse_store import default_chunk_rows as sparse_chunk_rows  # noqa: E402



def codecs(name: str, itemsize: int) -> list[Any]:
    """The spec codec chain after `bytes` for candidate `name`: compressor, then crc32c."""
    chain = {
        "none": [],
        "zstd-1": [ZstdCodec(level=1)],
        "zstd-3": [ZstdCodec(level=3)],
        "blosc-lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=itemsize)],
        "blosc-zstd": [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=itemsize)],
        "bitshuffle": [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle",
                                  typesize=itemsize)],
    }[name]
    return [*chain, Crc32cCodec()]


CANDIDATES = ("none", "zstd-1", "zstd-3", "blosc-lz4", "blosc-zstd", "bitshuffle")


def fashion_teacher_logits(seconds_budget: float = 20.0) -> np.ndarray:
    """(60000, 10) float16 logits of a 784-256-10 MLP trained here (seeded) on Fashion-MNIST."""
    import torch
    from softtargets.config import DataConfig
    from softtargets.datasets.idx_files import load_split
    split = load_split(DataConfig(dataset="fashion-mnist"))
    x = torch.from_numpy(split.inputs())  # (60000, 784) float32 in [0, 1]
    y = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t0, order = time.perf_counter(), torch.randperm(len(x), generator=torch.Generator()
                                                     .manual_seed(0))
    for epoch in range(3):
        for a in range(0, len(x), 128):
            b = order[a:a + 128]
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if time.perf_counter() - t0 > seconds_budget:
            break
    with torch.inference_mode():
        z = model(x)
    acc = float((z.argmax(1) == y).float().mean())
    print(f"# Fashion-MNIST teacher: 784-256-10, {epoch + 1} epochs, train accuracy {acc:.3f}",
          file=sys.stderr)
    return z.numpy().astype(np.float16)


def sparse_arrays(rows: int, k: int, classes: int) -> dict[str, dict[str, np.ndarray]]:
    """Top-k and sampled arrays (stored dtypes) of LM-like logits, computed in blocks."""
    top: list[sp.SparseRows] = []
    smp: list[sp.SparseRows] = []
    for a in range(0, rows, 2048):
        z = lm_logits(min(2048, rows - a), classes, seed=a)  # (r, C)
        top.append(sp.to_topk(z, k=k, temperatures=(1.0,)))
        smp.append(sp.to_sampled(z, draws=k, temperatures=(1.0,), seed=0,
                                 sample_ids=np.arange(a, a + len(z))))
    ids = np.dtype(sp.smallest_uint(classes - 1))
    cnt = np.dtype(sp.smallest_uint(k))

    def cat(parts: list[sp.SparseRows], field: str, dtype: Any) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([getattr(p, field) for p in parts])
                                    .astype(dtype))
    return {"topk": {"topk_ids": cat(top, "ids", ids),
                     "topk_logits": cat(top, "logits", np.float16)},
            "sampled": {"sampled_ids": cat(smp, "ids", ids),
                        "sampled_logits": cat(smp, "logits", np.float16),
                        "sampled_counts": cat(smp, "counts", cnt)}}


def write_array(root: Path, name: str, values: np.ndarray, chunk_rows: int,
                codec: str) -> zarr.Array:
    """A Zarr v3 array of `values` chunked by `chunk_rows` rows with candidate `codec`."""
    group = zarr.open_group(str(root / f"{name}-{codec}.zarr"), mode="w")
    arr = group.create_array(name, shape=values.shape,
                             chunks=(chunk_rows, *values.shape[1:]), dtype=values.dtype,
                             compressors=codecs(codec, values.dtype.itemsize),
                             config={"write_empty_chunks": True})
    arr[:] = values
    return arr


def chunk_bytes(root: Path, name: str, codec: str) -> int:
    folder = root / f"{name}-{codec}.zarr" / name / "c"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed_gbps(read: Callable[[], Any], raw: int, min_bytes: int) -> Callable[[], float]:
    """A variant for `interleaved`: enough whole reads to move `min_bytes`; raw GB/s."""
    reps = max(1, -(-min_bytes // raw))

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            read()
        return raw * reps / (time.perf_counter() - t0) / 1e9
    return run


def measure_array(root: Path, kind: str, name: str, values: np.ndarray, chunk_rows: int, *,
                  repeat: int, candidates: tuple[str, ...],
                  min_bytes: int) -> list[dict[str, Any]]:
    """Bytes ratio and read GB/s of every candidate and of the npy memcpy, interleaved."""
    raw = values.nbytes
    npy = root / f"{name}.npy"
    np.save(npy, values)
    mm = np.load(npy, mmap_mode="r")
    arrays = {c: write_array(root, name, values, chunk_rows, c) for c in candidates}
    for c, arr in arrays.items():  # the measured read must give the values back
        if not np.array_equal(arr[:], values):
            raise RuntimeError(f"{name} with {c} does not read back as written")
    variants = {c: timed_gbps(lambda a=arr: a[:], raw, min_bytes) for c, arr in arrays.items()}
    variants["memcpy"] = timed_gbps(lambda: np.array(mm, copy=True), raw, min_bytes)
    got = interleaved(variants, repeat=repeat)
    memcpy = statistics.median(got["memcpy"])
    none = statistics.median(got["none"]) if "none" in got else None
    out = []
    for c in candidates:
        gbps, ratio = statistics.median(got[c]), chunk_bytes(root, name, c) / raw
        slower = 1 / gbps - 1 / none if none else 0.0
        cross = (1 - ratio) / slower if none and slower > 0 and ratio < 1 else None
        out.append({"kind": kind, "array": name, "dtype": str(values.dtype),
                    "shape": list(values.shape), "chunk_rows": chunk_rows, "codec": c,
                    "bytes_ratio": ratio, "read_gbps": gbps, "memcpy_gbps": memcpy,
                    "read_over_memcpy": gbps / memcpy, "crossover_gbps": cross})
    return out


def measure(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """Every array of every kind; the rows of the detailed table."""
    t0 = time.perf_counter()
    fm = fashion_teacher_logits() if not args.tiny else \
        (np.random.default_rng(0).normal(0, 4, (600, 10))).astype(np.float16)
    lm = lm_logits(args.dense_rows, 1000, seed=1).astype(np.float16)
    sparse = sparse_arrays(args.sparse_rows, args.k, args.sparse_classes)
    print(f"# values made in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    jobs = [("dense (Fashion-MNIST teacher, C=10)", "logits", fm,
             default_chunk_rows(len(fm), 10)),
            ("dense (LM-like, C=1,000)", "logits_lm", lm, default_chunk_rows(len(lm), 1000))]
    rows_sparse = sparse_chunk_rows(args.sparse_rows, args.k, args.sparse_classes)
    for kind, arrays in sparse.items():
        for name, values in arrays.items():
            jobs.append((f"{kind} (LM-like, C={args.sparse_classes:,}, K={args.k})", name,
                         values, rows_sparse))
    out = []
    for kind, name, values, chunk_rows in jobs:
        out += measure_array(root, kind, name, values, chunk_rows, repeat=args.repeat,
                             candidates=args.codecs, min_bytes=args.min_mb * 2**20)
        print(f"# {kind} {name} done", file=sys.stderr, flush=True)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| store kind | array | codec | bytes / raw | read GB/s | read / memcpy | "
             "pays off below (GB/s of storage) |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        cross = "-" if r["crossover_gbps"] is None else f"{r['crossover_gbps']:.2f}"
        lines.append(f"| {r['kind']} | {r['array']} {r['dtype']} {tuple(r['shape'])} | "
                     f"{r['codec']} | {r['bytes_ratio']:.3f} | {r['read_gbps']:.2f} | "
                     f"{r['read_over_memcpy']:.2f} | {cross} |")
    memcpy = {(r["kind"], r["array"]): r["memcpy_gbps"] for r in rows}
    lines.append("")
    lines.append("memcpy limit (npy memmap copy, GB/s): " + "; ".join(
        f"{a} {v:.2f}" for (_, a), v in memcpy.items()))
    return "\n".join(lines)


def bench_rows(rows: list[dict[str, Any]], defaults: dict[str, str]) -> list[Row]:
    """For `make bench`'s table: each array's default codec against no compressor."""
    out: list[Row] = []
    by = {(r["array"], r["codec"]): r for r in rows}
    for array, codec in defaults.items():
        if (array, codec) not in by or (array, "none") not in by:
            continue
        d, n = by[(array, codec)], by[(array, "none")]
        out.append(_row(f"  read {array} {codec} / none (GB/s; bytes {d['bytes_ratio']:.3f} "
                        "of raw)", d["read_gbps"], n["read_gbps"], d["read_gbps"] / n["read_gbps"],
                        "(info)", None))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dense-rows", type=int, default=50_000, help="LM-like dense rows (C=1,000)")
    p.add_argument("--sparse-rows", type=int, default=16_384, help="top-k / sampled rows")
    p.add_argument("--sparse-classes", type=int, default=32_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds, median taken")
    p.add_argument("--min-mb", type=int, default=64,
                   help="each timing re-reads a small array until it moved this many MiB")
    p.add_argument("--codecs", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    p.add_argument("--dir", default="runs/bench", help="parent of the temporary arrays")
    p.add_argument("--out", default="runs/bench-codecs", help="results.json and table.md")
    p.add_argument("--tiny", action="store_true", help="a few rows: the dry run of the tests")
    return p


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parser().parse_args(argv)
    if args.tiny:
        args.dense_rows, args.sparse_rows, args.sparse_classes = 500, 300, 1000
        args.repeat, args.min_mb = 1, 0
    args.codecs = tuple(dict.fromkeys(["none", *args.codecs]))  # crossover needs `none`
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = measure(args, Path(tmp))
    text = markdown(rows)
    print(text)
    save_results(args.out, rows, text + "\n", markdown="table.md")
    return rows


if __name__ == "__main__":
    main()


def stage2_vs_memcpy(url: str, split: Any, *, threads: int, batch_size: int, repeat: int,
                     root: Path) -> list[Row]:
    """`make bench`'s row: the streaming loader's rows/s over a store / a copy of the same
    logits out of a page-cached npy memmap (the memcpy limit), interleaved rounds."""
    import bench_loader
    from bench_common import Threads, _paired_row
    from softtargets.format.store import LogitStore
    store = LogitStore.open(url)
    npy = root / f"memcpy-{Path(url).name}.npy"
    if not npy.exists():
        np.save(npy, store.read_all()[1])  # (N, C) float16, the raw bytes stage 2 decodes
    mm = np.load(npy, mmap_mode="r")
    budget = Threads(intra=threads, decode=threads)
    budget.apply()
    data = bench_loader.batches(split, url, budget.options(), batch_size)

    def memcpy() -> float:
        t0 = time.perf_counter()
        for a in range(0, len(mm), 65536):
            np.array(mm[a:a + 65536], copy=True)
        return len(mm) / (time.perf_counter() - t0)

    got = interleaved({"loader": lambda: bench_loader.loader_rows_per_s(data, batch_size),
                       "memcpy": memcpy}, repeat=repeat)
    gb = mm.nbytes / 1e9
    return [_paired_row(f"stage 2 loader / npy memmap memcpy of the same logits ({gb:.1f} GB, "
                        f"rows/s; {budget.describe()})", got["loader"], got["memcpy"],
                        "(info)", None)]
