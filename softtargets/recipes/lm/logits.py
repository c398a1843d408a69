"""Stage 1 of the LM recipe: a causal LM's targets for every token position of a corpus split.

Row (i, p) of the store holds the teacher's logits for predicting token p + 1 of sequence i from
tokens 0..p (the next-token alignment of softtargets/datasets/tokens.py). TokenSequences cuts the
token stream into whole sequences, so no position is padding and every position is stored.
The store's dataset identity carries the tokenizer identity; a teacher trained with another
tokenizer than the corpus's is refused before anything is written.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from softtargets.datasets.tokenizer import TokenizerIdentity
from softtargets.datasets.tokens import TokenSequences
from softtargets.errors import ConfigError, StoreMismatchError
from softtargets.format.store import StoreMeta
from softtargets.recipes.lm.model import GPT, load_model
from softtargets.tools.provenance import store_info
from softtargets.write import Sampled, TopK, write_logits
from softtargets.write.targets import Targets

TARGET_KINDS = ("dense", "topk", "sampled")


def lm_targets(kind: str, *, vocab_size: int, k: int | None = None, seed: int = 0) -> Targets:
    """The target spec of `kind`: "dense" (every logit of the vocabulary: TopK(vocab_size),
    since the dense layout has no per-position rows; its tail is empty), "topk" (TopK(k)) or
    "sampled" (Sampled(k, seed=seed), unbiased at T = 1)."""
    if kind == "dense":
        return TopK(vocab_size)
    if kind not in TARGET_KINDS:
        raise ConfigError(f"target kind must be one of {list(TARGET_KINDS)}, got {kind!r}")
    if k is None:
        raise ConfigError(f"{kind} targets need k (--k), the classes kept or drawn per token")
    return TopK(k) if kind == "topk" else Sampled(k, seed=seed)


def check_teacher_tokenizer(ckpt: dict[str, Any], data: TokenSequences, *, what: str) -> None:
    """Refuse a teacher whose recorded tokenizer is not the data's, naming what differs."""
    recorded = ckpt.get("tokenizer")
    if recorded is None or data.tokenizer is None:
        return  # a user's teacher or tokens without an identity: the store records the data's
    diff = TokenizerIdentity.from_json(recorded).difference(data.tokenizer)
    if diff is not None:
        raise StoreMismatchError(f"{what} was trained with another tokenizer than the tokens' "
                                 f"({diff}, teacher vs tokens); use the corpus it was "
                                 "trained on or retrain it")


def write_lm_logits(teacher: str | os.PathLike[str], data: TokenSequences,
                    store: str | os.PathLike[str], *, targets: Targets, batch_size: int = 32,
                    chunk_rows: int | None = None, overwrite: bool = False,
                    resume: bool = False) -> StoreMeta:
    """Run the LM checkpoint `teacher` over every sequence of `data` and write a store with a
    row per token position (write_logits); returns its metadata."""
    model, ckpt = load_model(teacher)
    check_teacher_tokenizer(ckpt, data, what=f"teacher {str(teacher)!r}")
    return write_logits(model, data, str(store), targets=targets, batch_size=batch_size,
                        device="cpu", chunk_rows=chunk_rows, overwrite=overwrite,
                        resume=resume)


@torch.inference_mode()
def bare_forward_seconds(model: GPT, data: TokenSequences, *, batch_size: int = 32) -> float:
    """Seconds of the teacher's forward pass alone over every sequence of `data` (the
    baseline stage 1's tokens/s is compared with)."""
    model.eval()
    t0 = time.perf_counter()
    for a in range(0, len(data), batch_size):
        x = data.inputs(slice(a, min(len(data), a + batch_size)))
        model(torch.from_numpy(x.astype(np.int64)))
    return time.perf_counter() - t0


def bytes_per_token(store: str | os.PathLike[str]) -> dict[str, float]:
    """The store's bytes on disk per stored token: all objects, and the chunk payloads."""
    info = store_info(str(store))
    n = info["n"]
    return {"bytes_per_token": info["storage"]["bytes"] / n,
            "data_bytes_per_token": info["storage"]["data_bytes"] / n}
