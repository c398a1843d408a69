"""The LM recipe's steps as the Makefile runs them (`make lm-corpus lm-teacher
lm-teacher-logits lm-student`), each a function of a corpus folder and paths:

    corpus = build_corpus("runs/lm/corpus")                       # stdlib, BPE, token files
    lm_teacher("runs/lm/corpus", "runs/lm/teacher.pt")            # resumable, seeded
    lm_teacher_logits("runs/lm/corpus", "runs/lm/teacher.pt", "runs/lm/topk32.zarr",
                      kind="topk", k=32, seq_len=64, sequences=1024)
    lm_student("runs/lm/corpus", "runs/lm/student.pt", store="runs/lm/topk32.zarr")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.errors import ConfigError
from softtargets.format.store import StoreMeta, read_meta
from softtargets.recipes.lm.corpus import open_corpus, token_dtype
from softtargets.recipes.lm.logits import lm_targets, write_lm_logits
from softtargets.recipes.lm.model import GPTConfig
from softtargets.recipes.lm.train import (DistillConfig, LMTrainConfig, train_student,
                                          train_teacher)

PathLike = str | os.PathLike[str]
TEACHER = GPTConfig(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=256)
STUDENT = GPTConfig(vocab_size=2048, block_size=64, n_layer=2, n_head=2, n_embd=128)


def lm_teacher(corpus: PathLike, out: PathLike, *, model: GPTConfig = TEACHER,
               config: LMTrainConfig = LMTrainConfig()) -> dict[str, Any]:
    """Train the teacher on the corpus's training tokens (resuming a saved state) and save it
    with the tokenizer identity; metrics on the held-out files. model.vocab_size is taken
    from the corpus's tokenizer."""
    c = open_corpus(corpus)
    model = GPTConfig(**{**model.to_json(), "vocab_size": c.identity.vocab_size})
    dtype = np.dtype(token_dtype(c.identity.vocab_size)).newbyteorder("<")
    train = np.memmap(c.token_file("train"), dtype=dtype, mode="r")
    val = c.sequences("val", seq_len=min(config.seq_len, model.block_size))
    return train_teacher(train, out, model=model, config=config, val=val,
                         extra={"tokenizer": c.identity.to_json()})


def lm_teacher_logits(corpus: PathLike, teacher: PathLike, store: PathLike, *,
                      kind: str = "topk", k: int | None = 32, seq_len: int = 64,
                      sequences: int | None = None, seed: int = 0, batch_size: int = 32,
                      overwrite: bool = False, resume: bool = False) -> StoreMeta:
    """Stage 1: the teacher's targets (`kind` dense, topk or sampled) for every position of
    the first `sequences` training sequences of seq_len tokens (all when None)."""
    c = open_corpus(corpus)
    data = c.sequences("train", seq_len=seq_len, limit=sequences)
    targets = lm_targets(kind, vocab_size=c.identity.vocab_size, k=k, seed=seed)
    return write_lm_logits(teacher, data, store, targets=targets, batch_size=batch_size,
                           overwrite=overwrite, resume=resume)


def lm_student(corpus: PathLike, out: PathLike, *, store: PathLike | None = None,
               model: GPTConfig = STUDENT, config: LMTrainConfig = LMTrainConfig(),
               distill: DistillConfig = DistillConfig(),
               sequences: int | None = None) -> dict[str, Any]:
    """Stage 2: a student on the sequences of `store` (their seq_len and count are the
    store's), or, without a store, on the first `sequences` training sequences of
    config.seq_len tokens from hard labels. Metrics on the held-out files."""
    c = open_corpus(corpus)
    seq_len, limit = config.seq_len, sequences
    if store is not None:
        meta, _ = read_meta(str(store))
        seq_len, limit = int(meta.dataset.get("seq_len", 0)), int(meta.dataset["n"])
        if not seq_len:
            raise ConfigError(f"store {str(store)!r} is not a per-token store of a token "
                              "file (no seq_len in its dataset identity); write it with "
                              "lm-teacher-logits")
        distill = DistillConfig(**{**distill.to_json(), "store": str(store)})
        config = LMTrainConfig(**{**config.to_json(), "seq_len": seq_len})
    model = GPTConfig(**{**model.to_json(), "vocab_size": c.identity.vocab_size,
                         "block_size": max(model.block_size, seq_len)})
    data = c.sequences("train", seq_len=seq_len, limit=limit)
    val = c.sequences("val", seq_len=seq_len)
    return train_student(data, Path(out), model=model, config=config, distill=distill, val=val,
                         extra={"tokenizer": c.identity.to_json()})
