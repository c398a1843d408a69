"""import_topk / export_topk (write/imports.py, tools/export.py) and their commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

import softtargets as st
from conftest import run_cli
from dataset_helpers import write_tokens
from softtargets.errors import (AppendError, ForeignDataError, IncompleteStoreError, RecordError,
                                SparseStoreError)

S, L, V, K = 6, 4, 20, 3  # sequences, positions, vocabulary, tokens per position
ARRAYS = ("sample_id", "position", "topk_ids", "topk_logits", "lse", "tail_mass")


def tokens(tmp_path):
    toks = np.random.default_rng(0).integers(0, V, S * L + 1).astype(np.uint16)
    return st.TokenSequences(write_tokens(tmp_path / "t.bin", toks), seq_len=L, vocab_size=V)


def records(seed=1):
    """Top-K log-probs (S, L, K) of random next-token distributions, most likely first."""
    z = np.random.default_rng(seed).normal(0, 2, (S, L, V))
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ids = np.argsort(-lp, axis=-1)[..., :K]
    return {"sample_id": np.arange(S), "token_ids": ids,
            "logprobs": np.take_along_axis(lp, ids, -1)}


def test_imported_store_verifies_and_reads_through_targets_stream_and_loss(tmp_path):
    data, r = tokens(tmp_path), records()
    meta = st.import_topk(r, str(tmp_path / "s.zarr"), dataset=data, temperature=1.0,
                          chunk_rows=8)
    assert meta.complete and meta.kind == "topk" and meta.n == S * L
    assert meta.extra["sparse"]["computed_from"] == "log_probs"
    assert meta.extra["sparse"]["temperatures"] == [1.0]
    assert meta.teacher["kind"] == "records" and meta.dataset == data.identity()
    assert st.verify_store(str(tmp_path / "s.zarr")).ok
    p16 = np.exp(r["logprobs"].astype(np.float16).astype(np.float64))  # (S, L, K)
    got = st.SoftTargets(str(tmp_path / "s.zarr"), temperature=1.0).batch([2, 4]).sparse
    assert torch.equal(got.ids, torch.from_numpy(r["token_ids"][[2, 4]]))
    assert np.allclose(got.log_probs.exp().numpy(), p16[[2, 4]], rtol=1e-6)
    assert np.allclose(got.tail.numpy(), 1 - p16[[2, 4]].sum(-1), atol=1e-6)
    stream = st.StreamingDistillDataset(data, str(tmp_path / "s.zarr"), temperature=1.0,
                                        batch_size=3, with_ids=True)
    for ids, x, y, target in stream:
        assert torch.equal(target.sparse.ids, torch.from_numpy(r["token_ids"][ids.numpy()]))
        loss = st.distillation_loss(torch.zeros(len(ids), L, V), target, y, temperature=1.0,
                                    alpha=1.0)
        assert torch.isfinite(loss) and loss > 0


@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_import_export_import_is_exact(tmp_path, suffix):
    data = tokens(tmp_path)
    st.import_topk(records(), str(tmp_path / "a.zarr"), dataset=data, temperature=1.0)
    assert st.export_topk(str(tmp_path / "a.zarr"), tmp_path / f"r{suffix}",
                          dataset=data) == S
    st.import_topk(tmp_path / f"r{suffix}", str(tmp_path / "b.zarr"), dataset=data,
                   chunk_rows=12)  # other chunks, same rows
    a, b = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("a.zarr", "b.zarr"))
    for name in ARRAYS:
        assert np.array_equal(a[name][:], b[name][:]), name
    st.export_topk(str(tmp_path / "b.zarr"), tmp_path / f"again{suffix}", dataset=data)
    one, two = ([(b.token_ids, b.logprobs, b.input_ids) for b in
                 st_records(tmp_path / f"{n}{suffix}")] for n in ("r", "again"))
    assert all(np.array_equal(x, y) for p, q in zip(one, two) for x, y in zip(p, q))
    assert np.array_equal(one[0][2], data.inputs(slice(None)))  # input_ids: the data's tokens


def st_records(path):
    from softtargets.format.records import read_records
    return list(read_records(path)[1])


def test_cli_import_and_export(tmp_path):
    data = tokens(tmp_path)
    st.import_topk(records(), str(tmp_path / "a.zarr"), dataset=data, temperature=1.0)
    data_flags = ["--data", f"tokens:{tmp_path / 't.bin'}", "--seq-len", L, "--vocab-size", V]
    out = run_cli("export-topk", tmp_path / "a.zarr", tmp_path / "r.jsonl").output
    assert out.startswith(f"export-topk: {S} records of ")
    out = run_cli("import-topk", tmp_path / "r.jsonl", *data_flags, "--store",
                  tmp_path / "b.zarr").output
    assert out.startswith(f"import-topk: {S * L} rows (k={K}) of t.bin from ")
    assert run_cli("verify", tmp_path / "b.zarr").exit_code == 0
    bad = run_cli("import-topk", tmp_path / "r.jsonl", *data_flags, "--store",
                  tmp_path / "c.zarr", "--temperature", 2, ok=False)
    assert bad.exit_code == 1 and bad.output.startswith("Error: RecordError: records ")
    assert "are log-probs at temperature 1 (header) but temperature=2 was passed" in bad.output


def _header(**kw):
    return json.dumps({"format": "softtargets.topk_records", "version": 1, "temperature": 1.0,
                       "k": K, "vocab_size": V, "positions": L, **kw})


def test_records_that_do_not_fit_the_data_are_refused(tmp_path):
    data, r = tokens(tmp_path), records()
    lines = [json.dumps({"sample_id": i, "token_ids": r["token_ids"][i].tolist(),
                         "logprobs": r["logprobs"][i].tolist()}) for i in range(S)]
    (tmp_path / "v.jsonl").write_text("\n".join([_header(vocab_size=32), *lines]) + "\n")
    with pytest.raises(RecordError, match=r"have vocab_size 32 but dataset t.bin has 20 token"):
        st.import_topk(tmp_path / "v.jsonl", str(tmp_path / "v.zarr"), dataset=data)
    (tmp_path / "t.jsonl").write_text("\n".join([_header(temperature=2.0), *lines]) + "\n")
    with pytest.raises(RecordError, match=r"log-probs at temperature 2: .* record log-probs "
                                          r"at temperature 1"):
        st.import_topk(tmp_path / "t.jsonl", str(tmp_path / "t.zarr"), dataset=data)
    with pytest.raises(RecordError, match=r"records 0..5: LogitWriter.append: sample id 9 is "
                                          r"not one of the dataset's ids"):
        st.import_topk({**r, "sample_id": np.array([0, 1, 2, 3, 4, 9])},
                       str(tmp_path / "i.zarr"), dataset=data, temperature=1.0)
    inputs = data.inputs(slice(None)).astype(np.int64)
    inputs[3, 2] += 1
    with pytest.raises(RecordError, match=r"record 3 \(sample_id 3\) position 2: input token "
                                          r"\d+ but dataset t.bin has \d+ there"):
        st.import_topk({**r, "input_ids": inputs}, str(tmp_path / "n.zarr"), dataset=data,
                       temperature=1.0)
    with pytest.raises(IncompleteStoreError, match=r"1 sample\(s\) were never appended "
                                                   r"\(sample ids 5\)"):
        st.import_topk({k: v[:5] for k, v in r.items()}, str(tmp_path / "m.zarr"),
                       dataset=data, temperature=1.0)


def test_an_interrupted_import_resumes_to_the_same_store(tmp_path):
    data, r = tokens(tmp_path), records()
    st.import_topk(r, str(tmp_path / "a.zarr"), dataset=data, temperature=1.0, chunk_rows=8)
    dicts = [{"sample_id": i, "token_ids": r["token_ids"][i], "logprobs": r["logprobs"][i]}
             for i in range(S)]

    def dying():
        yield from dicts[:4]
        raise RecordError("server went away")
    with pytest.raises(RecordError, match="server went away"):
        st.import_topk(dying(), str(tmp_path / "b.zarr"), dataset=data, temperature=1.0,
                       chunk_rows=8, batch_records=2)
    assert zarr.open_group(str(tmp_path / "b.zarr"), mode="r").attrs["softtargets"][
        "complete"] is False
    st.import_topk(dicts, str(tmp_path / "b.zarr"), dataset=data, temperature=1.0,
                   chunk_rows=8, resume=True)
    a, b = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("a.zarr", "b.zarr"))
    for name in ARRAYS:
        assert np.array_equal(a[name][:], b[name][:]), name


def test_export_refuses_sampled_stores_unstored_temperatures_and_foreign_files(tmp_path):
    data = tokens(tmp_path)
    st.import_topk(records(), str(tmp_path / "a.zarr"), dataset=data, temperature=1.0)
    with pytest.raises(st.SofttargetsError, match=r"at T=4 needs the tail mass"):
        st.export_topk(str(tmp_path / "a.zarr"), tmp_path / "r.jsonl", temperature=4.0)
    (tmp_path / "mine.jsonl").write_text("my notes\n")
    with pytest.raises(ForeignDataError, match=r"is not a records file softtargets wrote"):
        st.export_topk(str(tmp_path / "a.zarr"), tmp_path / "mine.jsonl", overwrite=True)
    assert (tmp_path / "mine.jsonl").read_text() == "my notes\n"
    z = np.random.default_rng(0).normal(size=(S, L, V)).astype(np.float32)
    with st.LogitWriter(str(tmp_path / "s.zarr"), dataset=data, targets=st.Sampled(4),
                        positions=True) as w:
        w.append(np.arange(S), z)
    with pytest.raises(SparseStoreError, match=r"is a 'sampled' store; records hold top-k"):
        st.export_topk(str(tmp_path / "s.zarr"), tmp_path / "s.jsonl")


def test_append_and_append_topk_each_refuse_the_other_kind_of_targets(tmp_path):
    data, r = tokens(tmp_path), records()
    with pytest.raises(AppendError, match=r"TopKLogProbs targets take precomputed rows: use "
                                          r"append_topk\(sample_ids, token_ids, logprobs\)"):
        with st.LogitWriter(str(tmp_path / "a.zarr"), dataset=data, targets=st.TopKLogProbs(K),
                            positions=True) as w:
            w.append(np.arange(S), np.zeros((S, L, V), np.float32))
    with pytest.raises(AppendError, match=r"append_topk: TopK targets convert dense logits"):
        with st.LogitWriter(str(tmp_path / "b.zarr"), dataset=data, targets=st.TopK(K),
                            positions=True) as w:
            w.append_topk(r["sample_id"], r["token_ids"], r["logprobs"])
    with pytest.raises(RecordError, match=r"append_topk: sample id 0 position 1: token id 2 is "
                                          r"listed twice"):
        with st.LogitWriter(str(tmp_path / "c.zarr"), dataset=data, targets=st.TopKLogProbs(2),
                            positions=True) as w:
            ids = np.broadcast_to([2, 3], (S, L, 2)).copy()
            ids[0, 1] = 2
            w.append_topk(np.arange(S), ids, np.full((S, L, 2), -1.0) - [0, 1])
