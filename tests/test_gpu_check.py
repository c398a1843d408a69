"""scripts/gpu_check.sh: the GPU check's CPU dry run (--device cpu --tiny) end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_dry_run_writes_every_measurement_as_json_and_a_table(tmp_path):
    out = tmp_path / "gpu"
    run = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), str(out), "--device", "cpu",
                          "--tiny"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    got = json.loads((out / "results.json").read_text())
    assert got["errors"] == {} and got["environment"]["device"] == "cpu"
    names = [r["measurement"] for r in got["rows"]]
    assert [n.split(",")[0] for n in names if not n.startswith(" ")] == [
        "stage 1 write_logits / bare forward"] * 2 + [
        "stage 2 student epoch streamed / preloaded (256 rows x 10 classes"]
    assert {r["goal"] for r in got["rows"]} == {">= 0.90", "<= 1.05", "(info)"}
    for model in ("cnn", "gpt"):  # fp32 forward on a CPU: the store holds its fp16 rounding
        m = got[model]
        assert 0 < m["max_abs_fp32_logit"] and \
            m["max_abs_diff_fp16_vs_fp32"] <= m["max_abs_fp32_logit"] * 2.0 ** -11
    assert got["gpt"]["chunk_rows"] % 64 == 0  # whole sequences per chunk
    assert got["stage2"]["rows"] == 256
    table = (out / "results.md").read_text()
    assert "| measurement (A / B) | A | B | A/B | A/B range | goal | met |" in table
    assert table.splitlines()[-1] in run.stdout  # printed too
    assert "torch" in (out / "log.txt").read_text()


def test_cuda_asked_for_without_a_device_is_one_line(tmp_path, capsys):
    sys.path.insert(0, str(SCRIPTS))
    gpu_check = pytest.importorskip("gpu_check")
    if gpu_check.torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "Error: ConfigError: device 'cuda' asked for but CUDA is not available; use 'cpu' or "
        "'auto'")
