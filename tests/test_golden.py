"""Golden bytes for every store kind: the committed fixtures (tests/golden_stores.py) still read
to the values they were written from, verify clean, and today's writer reproduces their bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from golden_stores import C, KINDS, N, SEQ, logits
from softtargets import SoftTargets, verify_store

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
VOLATILE = ("created_at", "created_by")  # when and with which library versions it was written


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file()}


def _attrs(raw: bytes) -> dict:
    meta = json.loads(raw)
    for key in VOLATILE:
        meta["attributes"]["softtargets"].pop(key)
    return meta


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_writer_reproduces_the_golden_bytes(tmp_path, kind):
    KINDS[kind](tmp_path / "s.zarr")
    got, want = _files(tmp_path / "s.zarr"), _files(GOLDEN / f"{kind}.zarr")
    assert sorted(got) == sorted(want)
    for name, data in want.items():
        if name == "zarr.json":
            assert _attrs(got[name]) == _attrs(data)
        else:
            assert got[name] == data, name


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_golden_store_verifies(kind):
    report = verify_store(str(GOLDEN / f"{kind}.zarr"))
    assert report.ok, report


def _fp16(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float16))


@pytest.mark.parametrize("kind", ["dense", "sharded"])
def test_golden_dense_values(kind):
    t = SoftTargets(str(GOLDEN / f"{kind}.zarr"), temperature=1.0)
    assert torch.equal(t.batch(list(range(N))).logits, _fp16(logits(N, C)))


def test_golden_ensemble_values():
    members = logits(N, 3, C)  # (N, M, C) as appended
    t = SoftTargets(str(GOLDEN / "ensemble.zarr"), temperature=1.0, rule="arithmetic")
    want = torch.softmax(_fp16(members).float(), -1).mean(1)
    got = t.batch(list(range(N)))
    np.testing.assert_allclose(got.log_probs.exp().numpy(), want.numpy(), atol=1e-6)


def test_golden_topk_keeps_the_two_largest():
    z = logits(N, C)
    t = SoftTargets(str(GOLDEN / "topk.zarr"), temperature=4.0)
    got = t.batch(list(range(N)))
    top2 = np.sort(np.argsort(-z, axis=1)[:, :2], axis=1)
    np.testing.assert_array_equal(np.sort(got.ids.numpy(), axis=1), top2)


def test_golden_views_values():
    z = logits(N, 2, C)  # (N, V, C) as appended; view 0 is also the store's logits
    t = SoftTargets(str(GOLDEN / "views.zarr"), temperature=1.0, view=1)
    assert torch.equal(t.batch(list(range(N))).logits, _fp16(z[:, 1]))
    assert torch.equal(SoftTargets(str(GOLDEN / "views.zarr"), temperature=1.0)
                       .batch(list(range(N))).logits, _fp16(z[:, 0]))


def test_golden_sampled_and_position_read():
    s = SoftTargets(str(GOLDEN / "sampled.zarr"), temperature=2.0)
    assert (s.kind, len(s), s.num_classes) == ("sampled", N, C)
    p = SoftTargets(str(GOLDEN / "position.zarr"), temperature=1.0)
    assert (p.kind, len(p), p.num_classes) == ("topk", 4, C)
    z = logits(4, SEQ, C)  # (sequences, positions, classes) as appended
    got = p.batch([0, 1, 2, 3]).sparse.ids.numpy()  # (4, SEQ, 2)
    np.testing.assert_array_equal(np.sort(got, -1), np.sort(np.argsort(-z, -1)[..., :2], -1))
