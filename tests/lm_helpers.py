"""A tiny LM corpus (this Python's json package: 5 files, ~40 KB, a 300-token BPE) and tiny
GPTs, shared by the LM recipe's tests; built once per test session under pytest's tmp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softtargets.recipes.lm import (GPT, CorpusConfig, GPTConfig, LMTrainConfig, build_corpus,
                                    train_teacher)
from softtargets.recipes.lm.corpus import stdlib_root

VOCAB, L = 300, 16
TINY_TEACHER = GPTConfig(vocab_size=VOCAB, block_size=L, n_layer=1, n_head=2, n_embd=32)
TINY_STUDENT = GPTConfig(vocab_size=VOCAB, block_size=L, n_layer=1, n_head=1, n_embd=16)
TINY_TRAIN = LMTrainConfig(steps=8, batch_size=8, seq_len=L, lr=1e-2, warmup=2,
                           checkpoint_every=4, eval_sequences=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is tens of times faster than
    two threads contending with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_corpus_config() -> CorpusConfig:
    return CorpusConfig(sources=(str(stdlib_root() / "json"),), vocab_size=VOCAB)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("lm") / "corpus", config=tiny_corpus_config())


@pytest.fixture(scope="session")
def tiny_teacher(tiny_corpus, tmp_path_factory):
    """A 1-block GPT trained for 8 steps on the tiny corpus, with its tokenizer recorded."""
    train = np.fromfile(tiny_corpus.token_file("train"), "<u2")
    path = tmp_path_factory.mktemp("lm-teacher") / "teacher.pt"
    torch.set_num_threads(1)
    train_teacher(train, path, model=TINY_TEACHER, config=TINY_TRAIN,
                  extra={"tokenizer": tiny_corpus.identity.to_json()})
    return path


def tiny_gpt() -> GPT:
    """A user's causal LM factory (`lm_helpers:tiny_gpt`): tokens (B, L) -> (B, L, VOCAB)."""
    torch.manual_seed(0)
    return GPT(TINY_TEACHER)
