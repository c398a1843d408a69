#!/usr/bin/env python3
"""Where the streaming loader's time goes, on one thread, over every chunk of a store.

The loader does three things per chunk that raw decoding does not all do: decode (read the file,
crc32c, zstd) into its group buffer, check the rows (sample ids in range, float16 exponents not
all ones), and gather the rows of each shuffled batch into a new array. Each step is timed on its
own (CPU seconds of this one thread), which bounds loader / raw decode at raw / (sum of steps).

    python scripts/profile_loader.py runs/bench/logits-1000000x1000.zarr [--threaded]

--threaded also times, side by side on 2 decode threads, raw decoding and full loader epochs
with and without the prefetch thread (rows/s and CPU microseconds per row).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numcodecs
import numpy as np

from softtargets.format.store import LOGITS, SAMPLE_ID, chunk_slice
from softtargets.format.chunks import ChunkReader, check_chunk


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("store")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threaded", action="store_true")
    args = p.parse_args()
    reader = ChunkReader(args.store)
    meta, store = reader.meta, reader.store
    size, c = meta.chunk_rows, meta.num_classes
    files = [(Path(args.store) / name / store.group[name].metadata.encode_chunk_key(coords))
             for i in range(store.num_chunks)
             for name, coords in ((LOGITS, (i, 0)), (SAMPLE_ID, (i,)))]
    crc, zstd = numcodecs.CRC32C(location="end"), numcodecs.Zstd()
    t0 = time.process_time()
    for f in files:  # raw: what the benchmark's raw decoding does
        zstd.decode(crc.decode(f.read_bytes()))
    raw = time.process_time() - t0
    ids = np.empty(size, dtype=np.int64)
    logits = np.empty((size, c), dtype=np.float16)
    decode = check = gather = 0.0
    rng = np.random.default_rng(0)
    for i in range(store.num_chunks):
        sl = chunk_slice(meta, i)
        t0 = time.process_time()
        reader._decode_into(SAMPLE_ID, (i,), ids)  # the loader's decode into its buffers
        reader._decode_into(LOGITS, (i, 0), logits)
        t1 = time.process_time()
        check_chunk(args.store, meta.dataset["n"], sl, ids[:sl.stop - sl.start],
                    logits[:sl.stop - sl.start])
        t2 = time.process_time()
        order = rng.permutation(sl.stop - sl.start)
        for s in range(0, len(order), args.batch_size):  # the shuffled batch gathers
            take = order[s:s + args.batch_size]
            ids[take], logits[take]  # noqa: B018 (the copies are the work measured)
        t3 = time.process_time()
        decode, check, gather = decode + t1 - t0, check + t2 - t1, gather + t3 - t2
    total = decode + check + gather
    rows = meta.n
    print(f"# {args.store}: {rows:,} x {c} float16, {store.num_chunks} chunks of {size} rows; "
          "CPU seconds of one thread")
    print("| step | s | per 1M rows | share of the loader |")
    print("|---|---:|---:|---:|")
    for name, s in (("raw decode (benchmark's reference)", raw), ("loader: decode into buffers",
                    decode), ("loader: row checks", check), ("loader: shuffled batch gather",
                                                               gather)):
        share = f"{100 * s / total:.0f}%" if not name.startswith("raw") else "-"
        print(f"| {name} | {s:.2f} | {s / rows * 1e6:.2f} | {share} |")
    print(f"| loader total | {total:.2f} | {total / rows * 1e6:.2f} | 100% |")
    print(f"\nbound on loader / raw decode at equal cores: {raw / total:.2f}")
    if args.threaded:
        threaded(args.store, args.batch_size)


def threaded(url: str, batch_size: int, rounds: int = 2) -> None:
    """Raw decoding vs loader epochs (prefetch thread on / off), 2 decode threads, interleaved."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_loader import batches, loader_rows_per_s, raw_decode_rows_per_s, synthetic_store

    from softtargets.format.store import LogitStore
    from softtargets.read.loop import StreamOptions
    store = LogitStore.open(url)
    n = store.meta.n
    # the benchmark's synthetic store and split (made by scripts/bench_loader.py in that folder)
    _, split = synthetic_store(Path(url).parent, n, store.meta.num_classes)
    print("\n| round | variant | rows/s | CPU us per row |\n|---:|---|---:|---:|")
    for r in range(rounds):
        for name, prefetch in (("raw decode", None), ("loader, prefetch 8", 8),
                               ("loader, prefetch 0", 0)):
            c0 = time.process_time()
            if prefetch is None:
                rate = raw_decode_rows_per_s(url, 2)
            else:
                data = batches(split, url, StreamOptions(
                    loader="stream", decode_threads=2, prefetch_batches=prefetch), batch_size)
                rate = loader_rows_per_s(data, batch_size)
            us = (time.process_time() - c0) / n * 1e6
            print(f"| {r + 1} | {name} | {rate:,.0f} | {us:.2f} |")


if __name__ == "__main__":
    main()
