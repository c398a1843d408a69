"""Benchmark: `verify` (decode + ids + finite + coverage) against a plain zarr read of the same
store, side by side in one run, for an unsharded and a sharded store. Prints the ratio.

    .venv/bin/python scripts/bench_verify.py [--rows 300000] [--classes 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from softtargets.format.remote import count_objects
from softtargets.format.store import StoreWriter
from softtargets.tools.verify import verify_store


def write(url: str, logits: np.ndarray, *, chunk_rows: int, shard_rows: int | None) -> None:
    n = len(logits)
    w = StoreWriter.create(url, n=n, class_names=[str(i) for i in range(logits.shape[1])],
                           dataset={"name": "bench", "split": "train", "n": n, "limit": None,
                                    "fingerprint": "sha256:" + "0" * 64},
                           teacher={}, config={}, chunk_rows=chunk_rows, shard_rows=shard_rows)
    for i in range(w.num_units):
        sl = w.unit_slice(i)
        w.write_unit(i, sample_ids=np.arange(sl.start, sl.stop), logits=logits[sl])
    w.finalize()


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--classes", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((args.rows, args.classes), dtype=np.float32) * 4)  # (N, C)
    raw_mb = args.rows * (args.classes * 2 + 8) / 1e6
    chunk_rows = 2 * 1024 * 1024 // (2 * args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        for label, shard_rows in (("unsharded", None), ("sharded x8", chunk_rows * 8)):
            url = str(Path(tmp) / f"{label}.zarr")
            write(url, logits, chunk_rows=chunk_rows, shard_rows=shard_rows)

            def plain() -> None:
                g = zarr.open_group(url, mode="r")
                g["sample_id"][:], g["logits"][:]

            t_plain = best_of(plain)
            t_verify = best_of(lambda: verify_store(url))
            print(f"{label:11s} {raw_mb:.0f} MB raw, {count_objects(url)} files: plain read "
                  f"{raw_mb / t_plain:.0f} MB/s, verify {raw_mb / t_verify:.0f} MB/s, "
                  f"verify/plain time ratio {t_verify / t_plain:.2f}")


if __name__ == "__main__":
    main()
