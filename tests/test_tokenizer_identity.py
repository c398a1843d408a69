"""Tokenizer identity (softtargets/datasets/tokenizer.py, format/tokenizer.py): hashes of a
tokenizer.json computed by hand, the sidecar TokenSequences reads, and the one-line refusal of
a store made with another tokenizer, naming what differs."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from softtargets import TokenizerIdentity
from softtargets.datasets import TokenSequences
from softtargets.datasets.tokenizer import write_sidecar
from softtargets.errors import DatasetError, StoreMismatchError
from softtargets.format.identity import check_dataset
from softtargets.format.tokenizer import tokenizer_difference


def tokenizer_json(path, *, merges=("a b",), special=True):
    spec = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": list(merges)},
            "added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": special}]}
    path.write_text(json.dumps(spec))
    return path


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_identity_of_a_tokenizer_json_by_hand(tmp_path):
    ident = TokenizerIdentity.of_tokenizer_json(tokenizer_json(tmp_path / "t.json"))
    assert ident == TokenizerIdentity(
        vocab_size=4, vocab_sha256=sha('[["a",0],["b",1],["ab",2],["<|endoftext|>",3]]'),
        merges_sha256=sha('["a b"]'), special_tokens=((3, "<|endoftext|>"),))
    assert TokenizerIdentity.from_json(json.loads(json.dumps(ident.to_json()))) == ident
    other = TokenizerIdentity.of_tokenizer_json(tokenizer_json(tmp_path / "o.json",
                                                               merges=("b a",)))
    assert ident.difference(other) == "merges differ" and ident.difference(ident) is None


def test_what_differs_is_named():
    base = TokenizerIdentity(8192, "v" * 64, "m" * 64, ((0, "<|endoftext|>"),)).to_json()
    assert tokenizer_difference(base, {**base, "vocab_size": 8256}) == "vocab size 8192 vs 8256"
    assert tokenizer_difference(base, {**base, "merges_sha256": "x"}) == "merges differ"
    assert tokenizer_difference(base, {**base, "vocab_sha256": "x"}) == \
        "vocabularies differ (same size, other tokens or ids)"
    assert tokenizer_difference(base, {**base, "special_tokens": [[0, "<pad>"]]}) == \
        "special tokens differ (<|endoftext|>=0 vs <pad>=0)"


def test_token_sequences_carry_the_sidecar_and_keep_the_first_sequences(tmp_path):
    np.arange(41, dtype="<u2").tofile(tmp_path / "t.bin")  # 5 sequences of 8 tokens
    ident = TokenizerIdentity(50, "v" * 64, "m" * 64, ())
    write_sidecar(tmp_path / "t.bin", ident)
    seqs = TokenSequences(tmp_path / "t.bin", seq_len=8, limit=3)
    assert seqs.num_classes == 50 and len(seqs) == 3  # the size is the tokenizer's: no scan
    assert seqs.identity()["tokenizer"] == ident.to_json() and seqs.identity()["n"] == 3
    assert seqs.read(slice(2, 3))[1].tolist() == [list(range(17, 25))]
    with pytest.raises(DatasetError, match="vocab_size=60 but the tokenizer has 50 tokens"):
        TokenSequences(tmp_path / "t.bin", seq_len=8, vocab_size=60)
    with pytest.raises(DatasetError, match="limit must be a positive number of sequences"):
        TokenSequences(tmp_path / "t.bin", seq_len=8, limit=0)


def test_a_store_refuses_data_of_another_tokenizer_in_one_line():
    ident = TokenizerIdentity(8192, "v" * 64, "m" * 64, ((0, "<|endoftext|>"),))
    meta = type("Meta", (), {"dataset": {"name": "t", "split": "train", "n": 4,
                                         "tokenizer": ident.to_json()}})()
    check_dataset(meta, "s.zarr", dict(meta.dataset))  # the same: accepted
    bigger = dataclasses.replace(ident, vocab_size=8256).to_json()
    with pytest.raises(StoreMismatchError, match=r"another tokenizer than the data's: vocab "
                       r"size 8192 vs 8256 \(store vs data\)"):
        check_dataset(meta, "s.zarr", {**meta.dataset, "tokenizer": bigger})
    with pytest.raises(StoreMismatchError, match="tokenizer identity missing .the data has none"):
        check_dataset(meta, "s.zarr", {"name": "t", "split": "train", "n": 4})
