"""Parallel stage-1 writers under torchrun with gloo on CPU."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from stage1_helpers import REPO, chunk_files, make_teacher, stage1_args

from softtargets.cli import cli
from softtargets.write.distributed import Ranks, my_units
from softtargets.format.store import LogitStore


def torchrun(args, nproc=2):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), "-m", "softtargets", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_units_are_disjoint_and_cover_everything():
    shares = [my_units(13, Ranks(rank=r, world=3)) for r in range(3)]
    assert shares == [[0, 3, 6, 9, 12], [1, 4, 7, 10], [2, 5, 8, 11]]


@pytest.mark.parametrize("extra", [[], ["--shard-rows", "16"],
                                   ["--views", "2", "--augment", "shift=1,flip=1",
                                    "--shard-rows", "16"]], ids=["chunks", "shards", "views"])
def test_two_process_torchrun_matches_one_process(tiny_data, tmp_path, extra):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    res = CliRunner().invoke(cli, stage1_args(tiny_data, teacher, one, *extra))
    assert res.exit_code == 0, res.output
    proc = torchrun(stage1_args(tiny_data, teacher, two, *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("teacher-logits: 96 x 10 float16 logits") == 1  # rank 0 only
    assert chunk_files(two) == chunk_files(one)  # every chunk/shard object byte-identical
    a, b = LogitStore.open(str(two)), LogitStore.open(str(one))
    assert a.meta.complete
    for x, y in zip(a.read_all(), b.read_all()):
        np.testing.assert_array_equal(x, y)
    assert not (tmp_path / "two.zarr.lock").exists()


@pytest.mark.slow
def test_torchrun_failure_on_rank_0_stops_every_rank(tiny_data, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / "keep.txt").write_text("not a store")
    proc = torchrun(stage1_args(tiny_data, teacher, store, "--overwrite"))
    assert proc.returncode != 0
    assert "Error: ForeignDataError: " in proc.stderr and "holds 'keep.txt'; move it" in proc.stderr
    assert "Error: ForeignDataError: rank 0 failed: ForeignDataError:" in proc.stderr  # rank 1
    assert (store / "keep.txt").read_text() == "not a store"
