"""LM stage 1 and stage 2 speeds side by side, in one run, on the recipe's corpus and teacher.

    python scripts/bench_lm.py [--corpus runs/lm/corpus] [--teacher runs/lm/teacher.pt]
                               [--sequences 128] [--steps 20] [--threads 1]

Stage 1: for each store kind (dense = top-V, top-k 8/32/128, sampled 12/32), tokens/s of
writing the store of the first --sequences training sequences, beside the teacher's bare
forward pass over the same sequences (the ratio is the cost of top-k, compression, digests and
writes). Stage 2: tokens/s of --steps student steps from each of those stores, beside the same
steps from hard labels. Every number is measured in this run, on this machine; the printed
ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from softtargets.recipes.lm import (STUDENT, DistillConfig, LMTrainConfig, lm_targets,
                                    load_model, open_corpus, train_student, write_lm_logits)
from softtargets.recipes.lm.experiment import ARMS
from softtargets.recipes.lm.logits import bare_forward_seconds, bytes_per_token


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="runs/lm/corpus")
    ap.add_argument("--teacher", default="runs/lm/teacher.pt")
    ap.add_argument("--sequences", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = open_corpus(args.corpus)
    vocab = c.identity.vocab_size
    data = c.sequences("train", seq_len=args.seq_len, limit=args.sequences)
    tokens = len(data) * args.seq_len
    model, _ = load_model(args.teacher)
    student = STUDENT.__class__(**{**STUDENT.to_json(), "vocab_size": vocab})
    cfg = LMTrainConfig(steps=args.steps, seq_len=args.seq_len, eval_sequences=1,
                        checkpoint_every=10 ** 9)
    print(f"{tokens} tokens ({len(data)} x {args.seq_len}), vocab {vocab}, "
          f"{args.threads} thread(s), student {args.steps} steps of {cfg.batch_size} sequences")
    print("| store | bytes/token | stage 1 tok/s | bare forward tok/s | ratio | stage 2 tok/s "
          "| vs hard labels |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        hard = train_student(data, Path(tmp) / "hard.pt", model=student, config=cfg)
        print(f"| hard labels | | | | | {hard['train_tokens_per_s']:.0f} | 1.00 |")
        for arm, (kind, k) in ARMS.items():
            if kind is None:
                continue
            store = Path(tmp) / f"{arm}.zarr"
            t0 = time.perf_counter()
            write_lm_logits(args.teacher, data, store,
                            targets=lm_targets(kind, vocab_size=vocab, k=k))
            write = tokens / (time.perf_counter() - t0)
            bare = tokens / bare_forward_seconds(model, data)
            m = train_student(data, Path(tmp) / f"{arm}.pt", model=student, config=cfg,
                              distill=DistillConfig(store=str(store)))
            speed = m["train_tokens_per_s"]
            print(f"| {arm} | {bytes_per_token(store)['bytes_per_token']:.1f} | {write:.0f} | "
                  f"{bare:.0f} | {write / bare:.2f} | {speed:.0f} | "
                  f"{speed / hard['train_tokens_per_s']:.2f} |")


if __name__ == "__main__":
    main()
