"""Stage 1 of a views store: CPU seconds of `write_logits` at the forward batch size the patient
experiment used (4096) against smaller ones, measured interleaved in one run, and whether the
stores come out identical (same fingerprint: every chunk digest equal).

Teachers: three of the recipe's CNNs (cnn 16-32-128, the patient experiment's), randomly
initialised (speed does not depend on the weights); views: the experiment's V=64 augment.
A CNN's activations at 4096 rows (4096 x 16 x 28 x 28 floats, 205 MB) far outgrow the caches:
conv, ReLU and max-pool run at memory speed.

    python scripts/bench_views_batch.py [--rows 400] [--views 64] [--batch-sizes 4096,512,128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import interleaved, paired  # noqa: E402  (first: sets OMP_WAIT_POLICY)

import torch  # noqa: E402

from softtargets import IDXDataset, Views, write_logits  # noqa: E402
from softtargets.config import DataConfig  # noqa: E402
from softtargets.datasets.idx_files import load_split  # noqa: E402
from softtargets.recipes.hinton2015.models import ModelSpec, build  # noqa: E402

from patient_ledger import fingerprint  # noqa: E402
from patient_plan import AUGMENT  # noqa: E402
from patient_experiment import Pixels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--views", type=int, default=64)
    ap.add_argument("--batch-sizes", default="4096,512,128")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    data = IDXDataset.from_split(load_split(DataConfig(limit=args.rows, val_rows=0)))
    torch.manual_seed(0)
    teachers = [Pixels(build(ModelSpec(arch="cnn", hidden=(16, 32, 128))).eval())
                for _ in range(3)]
    views = Views(count=args.views, augment=AUGMENT, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        def write(bs: int) -> float:
            c0 = time.process_time()
            write_logits(teachers, data, f"{tmp}/b{bs}.zarr", views=views, batch_size=bs,
                         device="cpu", overwrite=True)
            return time.process_time() - c0

        cpu = interleaved({bs: (lambda bs=bs: write(bs)) for bs in sizes}, repeat=args.repeat)
        prints = {bs: fingerprint(f"{tmp}/b{bs}.zarr") for bs in sizes}
    forwards = args.rows * args.views * len(teachers)
    print(f"{args.rows} rows x {args.views} views x 3 CNN teachers, {args.threads} thread(s); "
          f"CPU s of write_logits, median of {args.repeat} interleaved rounds")
    print("| batch | CPU s | forwards / CPU s | batch %d's CPU s / this (median, range) | "
          "same store |" % sizes[0])
    print("|---|---|---|---|---|")
    for bs in sizes:
        base, mine, ratio, (lo, hi) = paired(cpu[sizes[0]], cpu[bs])
        print(f"| {bs} | {mine:.1f} | {forwards / mine:,.0f} | {ratio:.2f}x ({lo:.2f}-{hi:.2f})"
              f" | {prints[bs] == prints[sizes[0]]} |")


if __name__ == "__main__":
    main()
