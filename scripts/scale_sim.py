"""Scale by simulation: write scaled-down stores here, measure, extrapolate to full size.

Two stores of the project issue, written through the public API (write_logits with a trivial
random teacher, so the measured rate is the writer's, not a model's):

  images: 1.28M images x 1,000 classes x 32 augmented views, dense fp16. Views stores are
          written from the command line only (teacher-logits --views); their view_logits hold
          the same N x V x C fp16 values, so the simulation writes a dense store of N x V rows
          (the same bytes and codec, 2 MiB chunks, automatic 64 MiB shards).
  tokens: 10B tokens, top-32 per position (GPT-2 vocabulary 50,257, sequences of 1,024): a
          TokenSequences dataset and TopK(32).

Measured: bytes on disk, objects (files), shards, rows/s (tokens/s) of one writer process.
Extrapolated (linear in rows; objects from the per-unit count): full-size bytes and objects,
writers needed to keep up with a teacher of --gpus GPUs at --img-per-gpu / --tok-per-gpu (stated
assumptions, parameters), and object-storage PUT requests per second at that rate.

    python scripts/scale_sim.py                 # images 1/100 (~820 MB), tokens 1/1,000,000
    python scripts/scale_sim.py --tiny          # seconds: the test's dry run
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from softtargets.atomic import write_json
from softtargets import TokenSequences, from_tensors, write_logits
from softtargets.format.codecs import default_chunk_rows
from softtargets.write import TopK
from softtargets.write.options import WriteOptions, effective_shard_rows, session_chunk_rows

S3_PUT_PER_PREFIX = 3500  # AWS S3: 3,500 PUT and 5,500 GET requests/s per prefix (S3 docs)


class RandomTeacher(nn.Module):
    """Logits (B, [L,] C) ~ N(0, 3^2), seeded per call count: the writer's work without a model."""

    def __init__(self, classes: int, positions: int | None = None) -> None:
        super().__init__()
        self.classes, self.positions = classes, positions
        self.dummy = nn.Parameter(torch.zeros(1))  # a state dict to record
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (len(x), *((self.positions,) if self.positions else ()), self.classes)
        return torch.randn(shape, generator=self.gen) * 3.0


def on_disk(url: Path) -> dict[str, int]:
    """Bytes and objects (files) of a local store; shards/chunks of its main array."""
    files = [p for p in url.rglob("*") if p.is_file()]
    meta = [p for p in files if p.name == "zarr.json"]
    main = "logits" if (url / "logits").exists() else "topk_logits"
    arrays: dict[str, int] = {}
    for p in files:
        if p.name != "zarr.json":
            top = p.relative_to(url).parts[0]
            key = top if top != "digests" else "digests (all)"
            arrays[key] = arrays.get(key, 0) + p.stat().st_size
    return {"bytes": sum(p.stat().st_size for p in files), "objects": len(files),
            "metadata_objects": len(meta),
            "metadata_bytes": sum(p.stat().st_size for p in meta), "array_bytes": arrays,
            "data_objects_main_array": sum(1 for p in (url / main / "c").rglob("*")
                                           if p.is_file())}


def simulate(name: str, teacher: nn.Module, data: Any, url: Path, *, per_row: int,
             **options: Any) -> dict[str, Any]:
    """Write the scaled-down store once; its size and the writer's rate."""
    t0 = time.perf_counter()
    meta = write_logits(teacher, data, str(url), batch_size=256, device="cpu", **options)
    seconds = time.perf_counter() - t0
    disk = on_disk(url)
    unit = int(meta.extra.get("shard_rows") or meta.chunk_rows)
    return {"store": name, "rows": meta.n, "chunk_rows": meta.chunk_rows,
            "shard_rows": meta.extra.get("shard_rows"), "units": math.ceil(meta.n / unit),
            "seconds": seconds, "rows_per_s": meta.n / seconds,
            "items_per_s": meta.n / seconds / per_row, **disk}


def extrapolate(m: dict[str, Any], *, factor: float, full_rows: int, teacher_rows_s: float,
                per_unit_rows: int) -> dict[str, Any]:
    """Full size from the measured store: data bytes x factor (metadata once); data objects
    per unit x full units."""
    units = math.ceil(full_rows / per_unit_rows)
    per_unit = (m["objects"] - m["metadata_objects"]) / m["units"]
    objects = per_unit * units + m["metadata_objects"]
    write_s = full_rows / teacher_rows_s
    data = m["bytes"] - m["metadata_bytes"]
    return {"bytes": data * factor + m["metadata_bytes"], "objects": objects, "units": units,
            "writers_to_keep_up": math.ceil(teacher_rows_s / m["rows_per_s"]),
            "teacher_rows_s": teacher_rows_s, "hours_at_teacher_rate": write_s / 3600,
            "put_per_s": objects / write_s, "s3_prefixes_needed": math.ceil(
                objects / write_s / S3_PUT_PER_PREFIX)}


def images_case(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    n = args.images // args.image_scale
    rows = n * args.views  # one row per (image, view)
    data = from_tensors(np.zeros((rows, 1), np.uint8), np.zeros(rows, np.int64),
                        num_classes=args.classes, name="images-x-views")
    m = simulate("images", RandomTeacher(args.classes), data, root / "images.zarr",
                 per_row=args.views)
    full_rows = args.images * args.views
    teacher = args.gpus * args.img_per_gpu  # rows/s: each row (image, view) is one forward
    unit = m["shard_rows"] or m["chunk_rows"]
    # the full store's unit: its chunk rows and (automatic) shard rows at full size
    full_chunk = default_chunk_rows(full_rows, args.classes)
    full_unit = effective_shard_rows(WriteOptions(store="x", chunk_rows=full_chunk),
                                     n=full_rows, num_classes=args.classes) or full_chunk
    m["full"] = extrapolate(m, factor=full_rows / m["rows"], full_rows=full_rows,
                            teacher_rows_s=teacher, per_unit_rows=full_unit)
    m["full"] |= {"chunk_rows": full_chunk, "shard_rows": full_unit, "measured_unit": unit}
    return m


def tokens_case(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    tokens = max(args.seq_len + 1, int(args.tokens // args.token_scale) + 1)
    path = root / "tokens.bin"
    np.random.default_rng(0).integers(0, args.vocab, tokens).astype("<u2").tofile(path)
    text = TokenSequences(path, seq_len=args.seq_len, vocab_size=args.vocab)
    m = simulate("tokens", RandomTeacher(args.vocab, args.seq_len), text, root / "tokens.zarr",
                 per_row=1, targets=TopK(args.k))
    full_rows = int(args.tokens) // args.seq_len * args.seq_len
    teacher = args.gpus * args.tok_per_gpu
    # sparse stores are not sharded: a unit is a chunk, at full size in whole sequences
    full_chunk = session_chunk_rows(TopK(args.k), None, n=full_rows, num_classes=args.vocab,
                                    per_sample=args.seq_len)
    m["full"] = extrapolate(m, factor=full_rows / m["rows"], full_rows=full_rows,
                            teacher_rows_s=teacher, per_unit_rows=full_chunk)
    m["full"] |= {"chunk_rows": full_chunk, "shard_rows": None, "measured_unit": m["chunk_rows"]}
    return m


def report(results: dict[str, Any]) -> str:
    a = results["args"]
    lines = ["| store | simulated rows | bytes (measured) | objects | shards / chunks of the "
             "main array | one writer: rows/s | full size: bytes | objects | writers for "
             f"{a['gpus']} GPUs | PUT/s | hours |", "|---|---:|---:|---:|---:|---:|---:|---:|"
             "---:|---:|---:|"]
    for m in results["stores"]:
        f = m["full"]
        lines.append(f"| {m['store']} | {m['rows']:,} | {m['bytes'] / 1e6:,.1f} MB | "
                     f"{m['objects']:,} | {m['data_objects_main_array']:,} | "
                     f"{m['rows_per_s']:,.0f} | {f['bytes'] / 1e9:,.1f} GB | "
                     f"{f['objects']:,.0f} | {f['writers_to_keep_up']:,} | "
                     f"{f['put_per_s']:,.1f} | {f['hours_at_teacher_rate']:,.2f} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=1_280_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--views", type=int, default=32)
    p.add_argument("--image-scale", type=int, default=100, help="simulate images / this")
    p.add_argument("--tokens", type=float, default=10e9)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--token-scale", type=float, default=1e6, help="simulate tokens / this")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--img-per-gpu", type=float, default=3000.0,
                   help="teacher forwards (images or views) per second per GPU: an assumption")
    p.add_argument("--tok-per-gpu", type=float, default=200_000.0,
                   help="teacher tokens per second per GPU: an assumption")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the writer process")
    p.add_argument("--dir", default="runs", help="parent of the temporary stores")
    p.add_argument("--out", default="runs/scale-sim", help="results.json and results.md")
    p.add_argument("--tiny", action="store_true", help="seconds: the test's dry run")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.tiny:
        args.images, args.views, args.classes, args.image_scale = 2000, 4, 100, 10
        args.tokens, args.vocab, args.seq_len, args.token_scale = 4096, 500, 64, 16
    torch.set_num_threads(args.threads)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "stores": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for case in (images_case, tokens_case):
            results["stores"].append(case(args, Path(tmp)))
            print(f"# {results['stores'][-1]['store']}: "
                  f"{results['stores'][-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    text = report(results)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    (out / "results.md").write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()
