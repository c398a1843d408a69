"""LM stage 1 and stage 2 speeds side by side, in one run, on the recipe's corpus and teacher.

    python scripts/bench_lm.py [--corpus runs/lm/corpus] [--teacher runs/lm/teacher.pt]
                               [--sequences 128] [--steps 20] [--threads 1] [--repeat 3]

Stage 1: for each store kind (dense = top-V, top-k 8/32/128, sampled 12/32), tokens/s of
writing the store of the first --sequences training sequences, beside the teacher's bare
forward pass over the same sequences (the ratio is the cost of top-k, compression, digests and
writes). Stage 2: tokens/s of --steps student steps from each of those stores, beside the same
steps from hard labels. Each pair runs in interleaved rounds (A B, B A, ...) after an untimed
warm-up round; the table gives medians and the median per-round ratio with its range
(scripts/bench_common.py). Every number is measured in this run, on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import bench_common as bc  # before torch: idle OpenMP threads sleep instead of spin

from softtargets.recipes.lm import (STUDENT, DistillConfig, GPTConfig, LMTrainConfig,
                                    lm_targets, load_model, open_corpus, train_student,
                                    write_lm_logits)
from softtargets.recipes.lm.experiment import ARMS
from softtargets.recipes.lm.logits import bare_forward_seconds, bytes_per_token

_runs = itertools.count()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="runs/lm/corpus")
    ap.add_argument("--teacher", default="runs/lm/teacher.pt")
    ap.add_argument("--sequences", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="Timed a/b rounds per pair.")
    args = ap.parse_args()
    bc.Threads(intra=args.threads, decode=1).apply()
    c = open_corpus(args.corpus)
    vocab = c.identity.vocab_size
    data = c.sequences("train", seq_len=args.seq_len, limit=args.sequences)
    tokens = len(data) * args.seq_len
    model, _ = load_model(args.teacher)
    student = GPTConfig(**{**STUDENT.to_json(), "vocab_size": vocab})
    cfg = LMTrainConfig(steps=args.steps, seq_len=args.seq_len, eval_sequences=1,
                        checkpoint_every=10 ** 9)
    print(f"{tokens} tokens ({len(data)} x {args.seq_len}), vocab {vocab}, {args.threads} "
          f"thread(s), {bc.omp_settings()}; students {args.steps} steps of {cfg.batch_size} "
          f"sequences; {args.repeat} interleaved rounds per pair after a warm-up round")
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        def student_rate(store: Path | None) -> float:
            out = Path(tmp) / f"s{next(_runs)}.pt"
            m = train_student(data, out, model=student, config=cfg,
                              distill=DistillConfig(store=None if store is None else str(store)))
            out.unlink()
            return m["train_tokens_per_s"]

        for arm, (kind, k) in ARMS.items():
            if kind is None:
                continue
            store = Path(tmp) / f"{arm}.zarr"
            targets = lm_targets(kind, vocab_size=vocab, k=k)

            def write() -> float:
                t0 = time.perf_counter()
                write_lm_logits(args.teacher, data, store, targets=targets, overwrite=True)
                return tokens / (time.perf_counter() - t0)

            r = bc.interleaved({"write": write,
                                "bare": lambda: tokens / bare_forward_seconds(model, data)},
                               repeat=args.repeat)
            rows.append(bc._paired_row(f"stage 1 tok/s: {arm} store / bare forward",
                                       r["write"], r["bare"], "-", None))
            sizes[arm] = bytes_per_token(store)["bytes_per_token"]
            r = bc.interleaved({"kd": lambda: student_rate(store),
                                "hard": lambda: student_rate(None)}, repeat=args.repeat)
            rows.append(bc._paired_row(f"stage 2 tok/s: {arm} / hard labels", r["kd"],
                                       r["hard"], "-", None))
    print(bc.table(rows))
    print("bytes/token: " + ", ".join(f"{a} {b:.1f}" for a, b in sizes.items()))


if __name__ == "__main__":
    main()
