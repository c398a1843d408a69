"""Sharded stores: many chunks per object, whole shards per writer, v1 readers work."""

import json
import math

import numpy as np
import pytest
import zarr
from conftest import run_cli
from stage1_helpers import make_teacher, stage1_args

from softtargets.config import LogitsConfig
from softtargets.write.session import effective_shard_rows
from softtargets.format.store import LogitStore
from softtargets.tools.verify import verify_store


def test_sharded_store_matches_unsharded_and_has_few_objects(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    run_cli(*stage1_args(tiny_data, teacher, tmp_path / "plain.zarr"))
    run_cli(*stage1_args(tiny_data, teacher, tmp_path / "sh.zarr", "--shard-rows", 32))
    arr = zarr.open_array(str(tmp_path / "sh.zarr" / "logits"), mode="r")
    codecs = arr.metadata.to_dict()["codecs"]
    assert [c["name"] for c in codecs] == ["sharding_indexed"]
    # the dense default: crc32c only (docs/SCALE.md, "Codecs")
    assert [c["name"] for c in codecs[0]["configuration"]["codecs"]] == ["bytes", "crc32c"]
    assert arr.shards == (32, 10) and arr.chunks == (8, 10)
    assert sorted(p.name for p in (tmp_path / "sh.zarr" / "logits" / "c").iterdir()) == \
        ["0", "1", "2"]  # 12 chunks in 3 shard objects
    a = LogitStore.open(str(tmp_path / "sh.zarr"))
    assert a.meta.extra["shard_rows"] == 32 and a.num_chunks == 12
    b = LogitStore.open(str(tmp_path / "plain.zarr"))
    for x, y in zip(a.read_all(), b.read_all()):
        np.testing.assert_array_equal(x, y)
    assert verify_store(str(tmp_path / "sh.zarr")).ok


def test_shard_rows_must_hold_whole_chunks(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    res = run_cli(*stage1_args(tiny_data, teacher, tmp_path / "s.zarr", "--shard-rows", 12), ok=False)
    assert res.exit_code == 1
    assert ("StoreError: shard_rows must be a positive multiple of chunk_rows (8), got 12; "
            "pick e.g. 256") in res.output


@pytest.mark.parametrize("n, classes, objects", [
    (10_000_000, 1000, 299),   # 20 GB of logits: 9,543 chunks of 2 MiB -> 299 shards of 64 MiB
    (60_000, 10, None),        # Fashion-MNIST: one chunk, no sharding
])
def test_large_stores_are_sharded_automatically(n, classes, objects):
    shard = effective_shard_rows(LogitsConfig(), n=n, num_classes=classes)
    if objects is None:
        assert shard is None
    else:
        assert math.ceil(n / shard) == objects
        assert shard * classes * 2 <= 64 * 1024 * 1024
    assert effective_shard_rows(LogitsConfig(shard_rows=0), n=n, num_classes=classes) is None


def test_metadata_codecs_of_a_sharded_store_are_its_real_chain(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    run_cli(*stage1_args(tiny_data, teacher, tmp_path / "sh.zarr", "--shard-rows", 16))
    g = zarr.open_group(str(tmp_path / "sh.zarr"), mode="r")
    chain = g.attrs["softtargets"]["codecs"]
    assert chain == json.loads(json.dumps(g["logits"].metadata.to_dict()["codecs"]))
    assert chain[0]["name"] == "sharding_indexed"
    assert chain[0]["configuration"]["chunk_shape"] == [8, 10]
