#!/usr/bin/env python3
"""Peak RSS of stage 1 and stage 2 for an ensemble of M big teachers vs. one.

Stage 2 never loads a teacher: its memory grows only with the stored logits (M x N x C float16,
read one row chunk at a time), not with the members' parameters. Stage 1 runs members one at a
time, so its peak is about one teacher, not M. Each measurement runs in a fresh subprocess and
reports its own ru_maxrss. Teachers are random-initialised (their memory, not accuracy, matters).

    python scripts/peak_rss_ensemble.py [--members 8] [--hidden 2000,2000] [--limit 6000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
args = json.loads(sys.argv[1])
from softtargets.config import DataConfig, EnsembleLogitsConfig, StudentTrainConfig
data = DataConfig(dataset="fashion-mnist", limit=args["limit"])
if args["stage"] == 1:
    from softtargets.write.ensemble_run import write_ensemble_logits
    write_ensemble_logits(EnsembleLogitsConfig(data=data, teachers=tuple(args["teachers"]),
                          store=args["store"], overwrite=True, device="cpu"), progress=False)
else:
    from softtargets.recipes.hinton2015.train import train_student
    train_student(StudentTrainConfig(data=data, store=args["store"], hidden=(800, 800),
                  epochs=1), out_dir=args["out"], progress=False)
print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(**args: object) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"stage {args['stage']} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_mib"]


def make_teachers(root: Path, count: int, hidden: tuple[int, ...]) -> tuple[list[str], int]:
    import torch
    from softtargets.config import DataConfig
    from softtargets.datasets.idx_files import load_split
    from softtargets.recipes.hinton2015.models import MLP, ModelSpec, save_checkpoint
    split = load_split(DataConfig(dataset="fashion-mnist", limit=10))
    paths, params = [], 0
    for seed in range(count):
        torch.manual_seed(seed)
        spec = ModelSpec(hidden=hidden, dropout=0.5)
        model = MLP(spec)
        params = sum(p.numel() for p in model.parameters())
        path = root / f"teacher-{seed}.pt"
        save_checkpoint(path, model=model, spec=spec, config={}, dataset=split.identity(),
                        class_names=split.class_names, metrics={})
        paths.append(str(path))
    return paths, params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--hidden", default="2000,2000")
    p.add_argument("--limit", type=int, default=6000)
    a = p.parse_args()
    hidden = tuple(int(h) for h in a.hidden.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teachers, params = make_teachers(root, a.members, hidden)
        print(f"teachers: mlp 784-{'-'.join(map(str, hidden))}-10, {params / 1e6:.1f} M params "
              f"({params * 4 / 2**20:.0f} MiB fp32) each; transfer set {a.limit} rows")
        print("| members M | teacher params (all members) | stored logits | stage 1 peak RSS | "
              "stage 2 peak RSS |")
        print("|---:|---:|---:|---:|---:|")
        for m in (1, a.members):
            store = str(root / f"m{m}.zarr")
            rss1 = measure(stage=1, limit=a.limit, teachers=teachers[:m], store=store)
            rss2 = measure(stage=2, limit=a.limit, store=store, out=str(root / f"s{m}"))
            logits = (m + (m > 1)) * a.limit * 10 * 2  # member_logits + mean `logits`
            print(f"| {m} | {m * params * 4 / 2**20:.0f} MiB | {logits / 2**20:.2f} MiB | "
                  f"{rss1:.0f} MiB | {rss2:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
