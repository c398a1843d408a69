"""scripts/scale_sim.py --tiny: scaled-down stores written through the public API, measured and
extrapolated."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
scale_sim = pytest.importorskip("scale_sim")


def test_tiny_run_measures_both_stores_and_extrapolates_linearly(tmp_path):
    got = scale_sim.main(["--tiny", "--dir", str(tmp_path), "--out", str(tmp_path / "out")])
    images, tokens = got["stores"]
    # images: 2,000 / 10 images x 4 views = 800 rows of 100 classes, one unsharded chunk
    assert (images["rows"], images["chunk_rows"], images["shard_rows"]) == (800, 800, None)
    # logits, sample_id, their digests and the input digests: one object each per unit
    assert images["objects"] - images["metadata_objects"] == 5 * images["units"] == 5
    assert images["bytes"] > 800 * 100 * 2 * 0.8  # fp16 noise compresses little
    full = images["full"]
    data = images["bytes"] - images["metadata_bytes"]
    assert sum(images["array_bytes"].values()) == data
    assert full["bytes"] == pytest.approx(data * 10 + images["metadata_bytes"])
    assert full["teacher_rows_s"] == 8 * 3000  # a view is one forward
    assert full["writers_to_keep_up"] >= 1 and full["put_per_s"] > 0
    # tokens: 4,096 / 16 = 256 tokens in sequences of 64, top-8 of a 500-token vocabulary
    assert tokens["rows"] == 256 and tokens["chunk_rows"] % 64 == 0
    assert tokens["full"]["chunk_rows"] % 64 == 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert len(table.splitlines()) == 4 and "| images | 800 |" in table
    assert not any(p.name.endswith(".zarr") for p in tmp_path.rglob("*"))  # stores removed
