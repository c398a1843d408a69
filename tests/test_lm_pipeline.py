"""The LM recipe's stages on a tiny corpus and tiny GPTs: per-token stores of every kind with
the tokenizer identity, a moved store that verifies and refuses another tokenizer, a student
whose validation loss falls, and a killed teacher run that resumes bit-identically."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from lm_helpers import (L, TINY_STUDENT, TINY_TEACHER, TINY_TRAIN, VOCAB,  # noqa: F401
                        one_thread, tiny_corpus, tiny_teacher)
from softtargets import SoftTargets, StreamingDistillDataset, TokenizerIdentity, verify_store
from softtargets.datasets import TokenSequences
from softtargets.errors import StoreMismatchError, TrainingDivergedError
from softtargets.recipes.lm import (GPT, DistillConfig, evaluate, lm_targets, load_model,
                                    train_student, train_teacher, write_lm_logits)
from softtargets.recipes.lm import train as train_mod
from softtargets.write import Sampled, TopK

SEQS = 12  # the stores' training sequences: 12 x 16 = 192 token rows


@pytest.mark.parametrize("kind,k,stored", [("dense", None, VOCAB), ("topk", 8, 8),
                                           ("sampled", 6, 6)])
def test_a_store_of_every_kind_has_a_row_per_token(tiny_corpus, tiny_teacher, tmp_path, kind, k,
                                                   stored):
    data = tiny_corpus.sequences("train", seq_len=L, limit=SEQS)
    meta = write_lm_logits(tiny_teacher, data, tmp_path / "s.zarr",
                           targets=lm_targets(kind, vocab_size=VOCAB, k=k))
    assert meta.n == SEQS * L and meta.dataset["n"] == SEQS and meta.dataset["seq_len"] == L
    assert meta.dataset["tokenizer"] == tiny_corpus.identity.to_json()
    target = SoftTargets(str(tmp_path / "s.zarr"), temperature=1.0)[3]  # sequence 3
    assert target.sparse.ids.shape == (L, stored)
    # row (3, p) is the teacher's distribution of the token after position p of sequence 3
    model, _ = load_model(tiny_teacher)
    x = torch.from_numpy(data.inputs(slice(3, 4)).astype(np.int64))
    top = model(x)[0].argmax(-1)  # (L,)
    if kind != "sampled":
        assert torch.equal(target.sparse.ids[:, 0].long(), top)


def test_lm_targets_names_the_kinds():
    assert lm_targets("dense", vocab_size=300) == TopK(300)
    assert lm_targets("sampled", vocab_size=300, k=12, seed=3) == Sampled(12, seed=3)
    with pytest.raises(Exception, match="topk targets need k"):
        lm_targets("topk", vocab_size=300)


def test_a_moved_store_verifies_and_refuses_another_tokenizer(tiny_corpus, tiny_teacher,
                                                              tmp_path):
    data = tiny_corpus.sequences("train", seq_len=L, limit=SEQS)
    write_lm_logits(tiny_teacher, data, tmp_path / "a" / "s.zarr", targets=TopK(8))
    moved = tmp_path / "elsewhere" / "s.zarr"
    shutil.move(tmp_path / "a", tmp_path / "elsewhere")
    report = verify_store(str(moved), identity=data.identity())
    assert report.ok, report.text()
    assert len(list(StreamingDistillDataset(data, str(moved), batch_size=4))) == 3
    other = dataclasses.replace(tiny_corpus.identity, merges_sha256="0" * 64)
    theirs = TokenSequences(tiny_corpus.token_file("train"), seq_len=L, limit=SEQS,
                            name=data.name, split="train", tokenizer=other)
    with pytest.raises(StoreMismatchError, match=r"another tokenizer than the data's: merges "
                       r"differ \(store vs data\)"):
        StreamingDistillDataset(theirs, str(moved), batch_size=4)
    assert not verify_store(str(moved), identity=theirs.identity()).ok


def test_a_teacher_of_another_tokenizer_is_refused_before_writing(tiny_corpus, tiny_teacher,
                                                                  tmp_path):
    bigger = TokenizerIdentity(**{**tiny_corpus.identity.__dict__, "vocab_size": VOCAB + 1})
    data = TokenSequences(tiny_corpus.token_file("train"), seq_len=L, limit=SEQS,
                          tokenizer=bigger)
    with pytest.raises(StoreMismatchError, match=r"vocab size 300 vs 301, teacher vs tokens"):
        write_lm_logits(tiny_teacher, data, tmp_path / "s.zarr", targets=TopK(8))
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("kind,k", [("topk", 8), ("sampled", 6), (None, None)])
def test_a_student_learns_from_a_store_or_hard_labels(tiny_corpus, tiny_teacher, tmp_path,
                                                      kind, k):
    data = tiny_corpus.sequences("train", seq_len=L, limit=SEQS)
    val = tiny_corpus.sequences("val", seq_len=L)
    store = None
    if kind:
        store = str(tmp_path / "s.zarr")
        write_lm_logits(tiny_teacher, data, store, targets=lm_targets(kind, vocab_size=VOCAB,
                                                                      k=k))
    torch.manual_seed(TINY_TRAIN.seed)
    before = evaluate(GPT(TINY_STUDENT), val, sequences=16)["val_loss"]
    m = train_student(data, tmp_path / "student.pt", model=TINY_STUDENT, config=TINY_TRAIN,
                      distill=DistillConfig(store=store), val=val)
    assert m["val_loss"] < before - 0.1 and m["val_tokens"] == 16 * L
    assert not (tmp_path / "student.pt.state").exists()  # removed once the model is saved
    student, ckpt = load_model(tmp_path / "student.pt")
    assert ckpt["distill"]["store"] == store and ckpt["metrics"] == m


def test_a_killed_teacher_run_resumes_bit_identically(tiny_corpus, tmp_path, monkeypatch):
    train = np.fromfile(tiny_corpus.token_file("train"), "<u2")
    train_teacher(train, tmp_path / "whole.pt", model=TINY_TEACHER, config=TINY_TRAIN)
    real = train_mod._step

    def dies_at_step_6(model, optim, loss, step, cfg):
        if step == 6:
            raise TrainingDivergedError("killed")
        return real(model, optim, loss, step, cfg)

    monkeypatch.setattr(train_mod, "_step", dies_at_step_6)
    with pytest.raises(TrainingDivergedError):
        train_teacher(train, tmp_path / "t.pt", model=TINY_TEACHER, config=TINY_TRAIN)
    assert (tmp_path / "t.pt.state").exists() and not (tmp_path / "t.pt").exists()
    monkeypatch.setattr(train_mod, "_step", real)
    train_teacher(train, tmp_path / "t.pt", model=TINY_TEACHER, config=TINY_TRAIN)
    whole, _ = load_model(tmp_path / "whole.pt")
    resumed, _ = load_model(tmp_path / "t.pt")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("hard", [False, True])
def test_a_killed_student_run_resumes_mid_stream_bit_identically(tiny_corpus, tiny_teacher,
                                                                 tmp_path, monkeypatch, hard):
    data = tiny_corpus.sequences("train", seq_len=L, limit=20)  # 3 batches of 8 an epoch
    if not hard:  # hard labels: the student's own seeded order, no store
        write_lm_logits(tiny_teacher, data, tmp_path / "s.zarr", targets=lm_targets(
            "sampled", vocab_size=VOCAB, k=6))
    cfg = dataclasses.replace(TINY_TRAIN, checkpoint_every=2)
    distill = DistillConfig() if hard else DistillConfig(store=str(tmp_path / "s.zarr"))
    train_student(data, tmp_path / "whole.pt", model=TINY_STUDENT, config=cfg, distill=distill)
    real = train_mod._step

    def dies_at_step_5(model, optim, loss, step, cfg):
        if step == 5:  # the last save is after 4 steps: epoch 1, its first batch done
            raise TrainingDivergedError("killed")
        return real(model, optim, loss, step, cfg)

    monkeypatch.setattr(train_mod, "_step", dies_at_step_5)
    with pytest.raises(TrainingDivergedError):
        train_student(data, tmp_path / "s.pt", model=TINY_STUDENT, config=cfg, distill=distill)
    monkeypatch.setattr(train_mod, "_step", real)
    train_student(data, tmp_path / "s.pt", model=TINY_STUDENT, config=cfg, distill=distill)
    whole, _ = load_model(tmp_path / "whole.pt")
    resumed, _ = load_model(tmp_path / "s.pt")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
