"""The benchmarks' measurement helpers (scripts/bench_common.py): round order and paired ratios."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
bench_common = pytest.importorskip("bench_common")


def test_interleaved_reverses_the_order_every_other_round_after_untimed_warmup():
    calls = []

    def variant(name, value):
        def run():
            calls.append(name)
            return value + len(calls)
        return run

    got = bench_common.interleaved({"a": variant("a", 0), "b": variant("b", 100)}, repeat=3,
                                   warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up round, then B A, A B, B A
    assert got == {"a": [4, 5, 8], "b": [103, 106, 107]}  # warm-up results dropped


def test_paired_takes_medians_and_the_median_of_per_round_ratios():
    a_med, b_med, ratio, spread = bench_common.paired([2.0, 9.0, 3.0], [1.0, 3.0, 3.0])
    assert (a_med, b_med) == (3.0, 3.0)
    assert ratio == 2.0 and spread == (1.0, 3.0)  # ratios 2, 3, 1: one slow round moves nothing
    with pytest.raises(ValueError, match="need rounds of both variants"):
        bench_common.paired([1.0], [])


def test_table_shows_the_ratio_range_or_a_dash():
    rows = [bench_common._paired_row("x", [2.0, 4.0], [1.0, 1.0], ">= 1", lambda r: r >= 1),
            bench_common._row("y", 1.0, 2.0, 0.5, "(info)", None)]
    text = bench_common.table(rows)
    assert "| x | 3.00 | 1.00 | 3.00 | 2.00-4.00 | >= 1 | yes |" in text
    assert "| y | 1.00 | 2.00 | 0.50 | - | (info) | - |" in text


def test_gpu_check_rows_join_the_table_named_by_device_and_date(tmp_path):
    bench = pytest.importorskip("bench")
    assert bench.gpu_rows(tmp_path / "absent.json") == []
    row = bench_common._row("  stage 2 x / y (s)", 2.0, 1.0, 2.0, "<= 1.05", False)
    (tmp_path / "r.json").write_text(json.dumps({
        "rows": [row], "environment": {"device": "cuda", "gpu": "NVIDIA H200",
                                       "date": "2026-12-01 10:00:00 UTC"}}))
    got = bench.gpu_rows(tmp_path / "r.json")
    assert got == [{**row, "measurement": "GPU check (NVIDIA H200, 2026-12-01 10:00:00 UTC): "
                                          "stage 2 x / y (s)"}]
    assert "| GPU check (NVIDIA H200, 2026-12-01 10:00:00 UTC): stage 2 x / y (s) | 2.00 | " \
        "1.00 | 2.00 | - | <= 1.05 | NO |" in bench_common.table(got)


def test_the_datasets_benchmark_runs_in_its_tiny_mode(tmp_path):
    bench_datasets = pytest.importorskip("bench_datasets")
    args = bench_datasets.tiny(bench_datasets.parser().parse_args(["--dir", str(tmp_path)]))
    rows = bench_datasets.measure(args)
    names = [r["measurement"] for r in rows]
    assert len(rows) == 16 and all(r["ratio"] > 0 for r in rows)
    assert names[:4] == [f"  limit: {what} (numpy) / raw decode (dense 2,048 x 64)" for what in
                         ("checked read", "checked read + shuffle",
                          "checked read + shuffle + copy into shared memory",
                          "shuffle from memory")]
    assert names[4] == "StreamingDistillDataset / raw decode (dense 2,048 x 64, w=0, rows/s)"
    assert rows[4]["goal"] == f">= 0.80 (limit {rows[1]['ratio']:.2f})"  # checked read + shuffle
    assert names[5] == "  same, rows per CPU-second of this process"
    assert names[14] == ("DistillDataset / raw decode (top-32 of C=1,000, 2,048 rows, w=0, "
                         "rows/s)")
