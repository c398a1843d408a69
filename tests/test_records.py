"""The top-k records format (softtargets/format/records.py): checks, conversion, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from softtargets.errors import RecordError
from softtargets.format import records as rec


def test_rows_of_normalised_log_probs_have_lse_0_and_the_rest_as_tail():
    ids = np.array([[2, 0, 5]])
    values = np.array([[-1.0, -2.0, -3.0]], np.float16)  # exact in float16
    rows = rec.to_sparse_rows(ids, values)
    assert rows.ids.tolist() == [[2, 0, 5]] and rows.lse.tolist() == [0.0]
    # 1 - (e^-1 + e^-2 + e^-3) = 1 - 0.367879 - 0.135335 - 0.049787
    assert rows.tail.dtype == np.float32 and rows.tail[0, 0] == pytest.approx(0.446999, abs=1e-6)
    over = rec.to_sparse_rows(ids[:, :1], np.array([[0.0004]], np.float16))  # mass 1.0004
    assert over.tail.tolist() == [[0.0]]  # clamped at 0


def _check(token_ids, logprobs, **kw):
    return rec.check_topk(np.array(token_ids)[None], np.array(logprobs, float)[None],
                          vocab_size=10, tolerance=1e-3, name=lambda b: "record 1 (sample_id 7)",
                          positions=True, **kw)


@pytest.mark.parametrize("ids, lps, match", [
    ([[0, 1], [3, 10]], [[-1, -2], [-1, -2]],
     r"record 1 \(sample_id 7\) position 1: token id 10 is outside \[0, 10\)"),
    ([[0, 1], [4, 4]], [[-1, -2], [-1, -2]], r"position 1: token id 4 is listed twice"),
    ([[0, 1], [3, 4]], [[-1, np.nan], [-1, -2]], r"position 0: logprob nan is not finite"),
    ([[0, 1], [3, 4]], [[-1, -2], [-2, -1]],
     r"position 1: logprobs are not in descending order \(-2 then -1\)"),
    ([[0, 1], [3, 4]], [[-1, -2], [-1e5, -1e5]], r"position 1: logprob -100000 is below float16"),
    ([[0, 1], [3, 4]], [[2.0, 1.0], [-1, -2]],
     r"position 0: top-k probabilities sum to 10.1\d* > 1 \+ tolerance 0.001: .* are they logits"),
])
def test_bad_records_are_refused_naming_record_position_and_value(ids, lps, match):
    with pytest.raises(RecordError, match=match):
        _check(ids, lps)


def test_a_mass_within_the_tolerance_passes():
    values = _check([[0, 1]], [[np.log(0.6), np.log(0.4005)]])  # sums to 1.0005
    assert values.dtype == np.float16 and values.shape == (1, 1, 2)


def _batch(n=3, L=2, k=2, first=0):
    rng = np.random.default_rng(0)
    lp = -np.sort(rng.random((n, L, k)) + 1, axis=2)
    tok = np.broadcast_to(np.arange(k), (n, L, k)).copy()
    return rec.RecordBatch(first=first, sample_ids=np.arange(n), token_ids=tok, logprobs=lp,
                           input_ids=np.ones((n, L), np.int64))


@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_files_round_trip_header_and_records(tmp_path, suffix):
    header = rec.RecordsHeader(temperature=1.0, k=2, vocab_size=10, positions=2, records=3)
    b = _batch()
    write = rec.write_jsonl if suffix == ".jsonl" else rec.write_npz
    assert write(tmp_path / f"r{suffix}", header, [b]) == 3
    got_header, batches = rec.read_records(tmp_path / f"r{suffix}", batch_records=2)
    got = list(batches)
    assert got_header == header and [g.first for g in got] == [0, 2]
    assert np.array_equal(np.concatenate([g.token_ids for g in got]), b.token_ids)
    assert np.array_equal(np.concatenate([g.logprobs for g in got]),
                          b.logprobs.astype(np.float32 if suffix == ".npz" else np.float64))
    assert np.array_equal(np.concatenate([g.input_ids for g in got]), b.input_ids)
    assert rec.is_records_file(tmp_path / f"r{suffix}")


def test_jsonl_lines_are_one_record_each(tmp_path):
    header = rec.RecordsHeader(temperature=1.0, k=2, vocab_size=10, positions=None)
    b = _batch(n=2, L=1)
    rec.write_jsonl(tmp_path / "r.jsonl", header, [b])
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["format"] == "softtargets.topk_records"
    assert json.loads(lines[1]) == {"sample_id": 0, "token_ids": [0, 1],
                                    "logprobs": b.logprobs[0, 0].tolist(), "input_ids": 1}


@pytest.mark.parametrize("first_line, match", [
    ('{"format": "other"}', r"r.jsonl line 1: the header's format is 'other'"),
    ('{"format": "softtargets.topk_records", "version": 1, "temperature": 1, "k": 0, '
     '"vocab_size": 5, "positions": 2}', r"header k must be a positive integer, got 0"),
    ("not json", r"r.jsonl line 1: not JSON"),
])
def test_bad_headers_are_refused(tmp_path, first_line, match):
    (tmp_path / "r.jsonl").write_text(first_line + "\n")
    with pytest.raises(RecordError, match=match):
        rec.read_records(tmp_path / "r.jsonl")


def test_records_of_other_shapes_are_refused_naming_the_record():
    records = [{"sample_id": 0, "token_ids": [[1, 2]], "logprobs": [[-1.0, -2.0]]},
               {"sample_id": 1, "token_ids": [[1, 2, 3]], "logprobs": [[-1.0, -2.0, -3.0]]}]
    with pytest.raises(RecordError, match=r"record 1 \(sample_id 1\): token_ids \(1, 3\), "
                                          r"logprobs \(1, 3\) differ from the first record's"):
        list(rec.read_records(records)[1])
    with pytest.raises(RecordError, match=r"record 0: a record is an object with"):
        list(rec.read_records([{"sample_id": 0}])[1])
