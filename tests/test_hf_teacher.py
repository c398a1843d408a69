"""Hugging Face causal-LM teachers (softtargets/write/hf_teacher.py); skipped without
transformers (the optional extra `hf`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

transformers = pytest.importorskip("transformers")

import softtargets as st  # noqa: E402
from conftest import run_cli  # noqa: E402
from dataset_helpers import write_tokens  # noqa: E402
from softtargets.errors import CheckpointError  # noqa: E402
from softtargets.format.sparse_store import SparseStore  # noqa: E402
from softtargets.write.hf_teacher import config_sha256  # noqa: E402

S, L, V, K = 4, 8, 300, 5


def save_lm(path, vocab_size):
    """A randomly initialised 2-layer GPT-2 (hidden 32) saved with save_pretrained."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=16, n_embd=32, n_layer=2,
                                  n_head=2, bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    return save_lm(root / "exact", V), save_lm(root / "padded", V + 4)


def tokens(tmp_path):
    toks = np.random.default_rng(0).integers(0, V, S * L + 1).astype(np.uint16)
    return st.TokenSequences(write_tokens(tmp_path / "t.bin", toks), seq_len=L, vocab_size=V)


def test_hf_teacher_logits_go_to_the_store_with_class_and_config_hash(tmp_path, lms):
    data = tokens(tmp_path)
    teacher = st.hf_teacher(str(lms[0]), num_classes=V)
    meta = st.write_logits(teacher, data, str(tmp_path / "s.zarr"), targets=st.TopK(K),
                           batch_size=3)
    model = transformers.AutoModelForCausalLM.from_pretrained(lms[0], local_files_only=True)
    with torch.no_grad():
        z = model(torch.from_numpy(data.inputs(slice(None)).astype(np.int64))).logits
    z16 = z.reshape(S * L, V).half().float().numpy()  # (rows, V): the fp16 values
    _, _, rows = SparseStore.open(str(tmp_path / "s.zarr")).read_all()
    stored = rows.logits.astype(np.float32)  # (rows, K)
    assert np.array_equal(stored, -np.sort(-z16, axis=1)[:, :K])  # the K largest, descending
    assert np.array_equal(np.take_along_axis(z16, rows.ids, axis=1), stored)  # at their ids
    t = meta.teacher
    assert t["kind"] == "hf" and t["arch"] == "hf GPT2LMHeadModel"
    assert t["hf_class"] == "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"
    assert t["hf_config_sha256"] == config_sha256(model.config)
    assert t["vocab_size"] == V and t["vocab_padding_dropped"] == 0
    assert t["checkpoint"] == str(lms[0]) and t["precision"] == "fp32"
    assert st.verify_store(str(tmp_path / "s.zarr")).ok


def test_a_padded_vocabulary_is_refused_unless_its_columns_are_dropped(tmp_path, lms):
    data = tokens(tmp_path)
    with pytest.raises(CheckpointError, match=r"has 304 logit columns but the data has 300 "
                                              r"token classes; if the 4 extra columns are "
                                              r"vocabulary padding .* drop_vocab_padding=True"):
        st.hf_teacher(str(lms[1]), num_classes=V)
    with pytest.raises(CheckpointError, match=r"returned logits \(2, 8, 304\) .* expected "
                                              r"\(2, 8, 300\) .* drop_vocab_padding=True"):
        st.write_logits(st.hf_teacher(str(lms[1])), data, str(tmp_path / "x.zarr"),
                        targets=st.TopK(K))
    assert not (tmp_path / "x.zarr").exists()
    meta = st.write_logits(st.hf_teacher(str(lms[1]), num_classes=V, drop_vocab_padding=True),
                           data, str(tmp_path / "s.zarr"), targets=st.TopK(K))
    assert meta.num_classes == V and meta.teacher["vocab_padding_dropped"] == 4
    assert meta.teacher["vocab_size"] == V + 4


def test_cli_teacher_hf(tmp_path, lms):
    tokens(tmp_path)
    args = ["teacher-logits", "--data", f"tokens:{tmp_path / 't.bin'}", "--seq-len", L,
            "--vocab-size", V, "--topk", K, "--quiet"]
    bad = run_cli(*args, "--teacher", f"hf:{lms[1]}", "--store", tmp_path / "a.zarr", ok=False)
    assert bad.exit_code == 1 and bad.output.startswith("Error: CheckpointError: Hugging Face "
                                                        "teacher ") and "304" in bad.output
    run_cli(*args, "--teacher", f"hf:{lms[1]}", "--drop-vocab-padding", "--store",
            tmp_path / "a.zarr")
    meta = zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs["softtargets"]
    assert meta["teacher"]["vocab_padding_dropped"] == 4 and meta["num_classes"] == V
    missing = run_cli(*args, "--teacher", f"hf:{tmp_path}", "--store", tmp_path / "b.zarr",
                      ok=False)
    assert "is not a model directory (no config.json)" in missing.output
