"""The LM corpus (softtargets/recipes/lm/corpus.py, tokenizer.py): whole files held out, a
deterministic BPE whose identity is stable, token files that decode back to the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lm_helpers import (VOCAB, one_thread, tiny_corpus,  # noqa: F401 (fixtures)
                        tiny_corpus_config)
from softtargets.datasets.tokenizer import read_sidecar
from softtargets.errors import DatasetError, StoreExistsError
from softtargets.recipes.lm import CorpusConfig, build_corpus, open_corpus
from softtargets.recipes.lm.corpus import is_validation, list_files, split_files, stdlib_root
from softtargets.recipes.lm.tokenizer import load_tokenizer


def test_the_tokenizer_is_trained_deterministically_with_a_stable_identity(tiny_corpus,
                                                                           tmp_path):
    again = build_corpus(tmp_path / "again", config=tiny_corpus_config())
    assert again.identity == tiny_corpus.identity
    assert (again.root / "tokenizer.json").read_bytes() == \
        (tiny_corpus.root / "tokenizer.json").read_bytes()
    ident = tiny_corpus.identity
    assert ident.vocab_size == VOCAB and ident.special_tokens == ((0, "<|endoftext|>"),)
    assert len(ident.vocab_sha256) == 64 and len(ident.merges_sha256) == 64
    # the token files carry it, so TokenSequences picks it up without being told
    assert read_sidecar(tiny_corpus.token_file("train")) == ident
    assert tiny_corpus.sequences("val", seq_len=8).identity()["tokenizer"] == ident.to_json()


def test_validation_holds_out_whole_files_and_the_token_files_decode_to_them(tiny_corpus):
    manifest = json.loads((tiny_corpus.root / "corpus.json").read_text())
    names = [n for n, _ in list_files((str(stdlib_root() / "json"),), suffix=".py")]
    assert sorted(manifest["files"]["train"] + manifest["files"]["val"]) == names
    assert not set(manifest["files"]["train"]) & set(manifest["files"]["val"])
    assert manifest["files"]["val"] and manifest["files"]["train"]
    tok = load_tokenizer(tiny_corpus.root / "tokenizer.json")
    ids = np.fromfile(tiny_corpus.token_file("val"), "<u2")
    assert ids[-1] == 0 and (ids == 0).sum() == len(manifest["files"]["val"])  # one EOT a file
    texts = [(stdlib_root() / "json" / n.split("/", 1)[1]).read_text()
             for n in manifest["files"]["val"]]
    parts = np.split(ids, np.flatnonzero(ids == 0) + 1)[:-1]  # each ends with its EOT
    assert [tok.decode(p[:-1].tolist()) for p in parts] == texts
    assert tiny_corpus.tokens["val"] == ids.size


def test_the_split_of_a_file_depends_only_on_its_name():
    files = [(f"f{i}.py", None) for i in range(200)]
    val = {n for n, _ in split_files(files, val_fraction=0.1)["val"]}
    assert 8 <= len(val) <= 35  # about 10% of 200
    more = split_files(files + [(f"g{i}.py", None) for i in range(50)], val_fraction=0.1)
    assert val == {n for n, _ in more["val"]} - {f"g{i}.py" for i in range(50)}
    assert all(is_validation(n, 0.1) for n in val)


def test_bad_corpus_input_is_refused_in_one_line(tiny_corpus, tmp_path):
    with pytest.raises(StoreExistsError, match="exists; pass overwrite=True"):
        build_corpus(tiny_corpus.root, config=tiny_corpus_config())
    with pytest.raises(DatasetError, match="neither a file nor a folder"):
        build_corpus(tmp_path / "c", config=CorpusConfig(sources=(str(tmp_path / "nope"),)))
    (tmp_path / "one.txt").write_text("x = 1\n")
    with pytest.raises(DatasetError, match="1 file.s. cannot be split"):
        build_corpus(tmp_path / "c", config=CorpusConfig(sources=(str(tmp_path / "one.txt"),)))
    with pytest.raises(DatasetError, match="no corpus at .*lm-corpus"):
        open_corpus(tmp_path / "missing")
    with pytest.raises(Exception, match="vocab_size must be an integer >= 257"):
        build_corpus(tmp_path / "v", config=CorpusConfig(sources=(str(stdlib_root() / "json"),),
                                                         vocab_size=100))


def test_a_users_tokenizer_is_used_as_given(tiny_corpus, tmp_path):
    mine = CorpusConfig(sources=(str(stdlib_root() / "json"),),
                        tokenizer=str(tiny_corpus.root / "tokenizer.json"))
    c = build_corpus(tmp_path / "c", config=mine)
    assert c.identity == tiny_corpus.identity
    assert np.array_equal(np.fromfile(c.token_file("train"), "<u2"),
                          np.fromfile(tiny_corpus.token_file("train"), "<u2"))
