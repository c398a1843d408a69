#!/usr/bin/env python3
"""Peak RSS and time of writing V stored views per sample (write_logits(views=Views(V)))
of Fashion-MNIST with a small MLP teacher, for several row counts: bounded memory means the
peak does not grow with N (a forward batch holds batch_size // V rows of V views each; the
writer holds one chunk of (chunk_rows, V, C) logits). Each run is a fresh subprocess
reporting its own ru_maxrss.

    python scripts/peak_rss_views.py [--views 64] [--limits 1000,4000] [--mix]

glibc keeps freed batch buffers (its mmap threshold grows after large frees), which shows as
a slow rise of the peak with N; MALLOC_ARENA_MAX=1 MALLOC_MMAP_THRESHOLD_=65536 in the
environment removes it (README, "Patient and consistent distillation").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
from torch import nn
from softtargets import IDXDataset, Mix, Views, write_logits
data = IDXDataset("fashion-mnist", split="train", limit=args["limit"])
torch.manual_seed(0)
teacher = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
views = Views(count=args["views"], augment="shift=2,flip=1,rotate=10,scale=1.1", seed=0,
              mix=Mix(kind="mixup", alpha=1.0, prob=0.5) if args["mix"] else None)
t0 = time.perf_counter()
write_logits(teacher, data, args["store"], views=views, batch_size=4096, device="cpu",
             overwrite=True)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(**args: object) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"views write failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--limits", default="1000,4000")
    ap.add_argument("--mix", action="store_true", help="mixed views (Mix(prob=0.5))")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"V={args.views} views per sample{' (mixed, prob 0.5)' if args.mix else ''}")
        print(f"{'rows':>8} {'views written':>14} {'seconds':>8} {'views/s':>8} "
              f"{'peak RSS MiB':>13}")
        for limit in (int(x) for x in args.limits.split(",")):
            m = measure(limit=limit, views=args.views, mix=args.mix,
                        store=str(Path(tmp) / f"v{limit}.zarr"))
            n = limit * args.views
            print(f"{limit:>8} {n:>14} {m['seconds']:>8.1f} {n / m['seconds']:>8.0f} "
                  f"{m['maxrss_mib']:>13.0f}")


if __name__ == "__main__":
    main()
