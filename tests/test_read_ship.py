"""read/ship.py: a DataLoader worker's batches through its reused shared-memory ring."""

import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory pickling)

from softtargets.errors import ConfigError
from softtargets.read import ship
from softtargets.read.batch import DenseTarget
from softtargets.read.distill import SparseTargets


@pytest.fixture
def worker(monkeypatch):
    """Run as if in DataLoader worker 0, with a ring of its own."""
    monkeypatch.setattr(ship, "get_worker_info", lambda: object())
    monkeypatch.setattr(ship, "_worker_ring", [])
    monkeypatch.setattr(ship, "_received", {})


def batch(value: float):
    x = torch.full((4, 3), value)  # (B, 3) float32
    y = torch.arange(4)  # (B,) int64
    sparse = SparseTargets("topk", ids=torch.arange(8).view(4, 2), log_probs=torch.zeros(4, 2),
                           tail=torch.full((4,), 0.5), temperature=2.0)
    return x, y, DenseTarget(4.0, logits=torch.full((4, 5), value, dtype=torch.float16)), sparse


def send(obj):
    return pickle.loads(ForkingPickler.dumps(obj))  # what the DataLoader's queue does


def test_a_shipped_batch_arrives_equal_and_frees_its_slot_when_dropped(worker):
    shipped = ship.ship(batch(1.5))
    assert isinstance(shipped, ship.Shipped)
    ring = ship._worker_ring[0]
    assert ring.flags.tolist() == [1, 0, 0, 0, 0, 0]  # slot 0 in flight
    x, y, dense, sparse = send(shipped)
    assert torch.equal(x, torch.full((4, 3), 1.5)) and torch.equal(y, torch.arange(4))
    assert dense.temperature == 4.0 and dense.log_probs is None
    assert dense.logits.dtype == torch.float16 and dense.logits.tolist() == [[1.5] * 5] * 4
    assert sparse.kind == "topk" and sparse.weights is None and sparse.temperature == 2.0
    assert sparse.ids.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    second = ship.ship(batch(2.5))
    assert second.ring is ring and second.slot == 1  # the same ring, the next slot
    assert len(ForkingPickler.dumps(second)) < 2000  # names the ring: no storage, no data
    assert send(second)[0].tolist() == [[2.5] * 3] * 4
    assert ring.flags.tolist() == [1, 0, 0, 0, 0, 0]  # slot 1 freed with its dropped batch
    x[:] = 9  # the batch's own memory until dropped: the worker never writes a leased slot
    row = x[0]  # a view holds the slot too
    del x, y, dense, sparse
    assert ring.flags.tolist() == [1, 0, 0, 0, 0, 0] and row.tolist() == [9.0] * 3
    del row
    assert ring.flags.tolist() == [0] * 6


def test_a_bfloat16_tensor_arrives_as_a_copy(worker):
    x = torch.arange(6, dtype=torch.bfloat16).view(2, 3)
    (got,) = send(ship.ship((x,)))
    assert got.dtype == torch.bfloat16 and torch.equal(got, x)
    assert ship._worker_ring[0].flags.tolist() == [0] * 6  # nothing held the slot


def test_a_full_ring_or_a_larger_batch_goes_as_torch_sends_it(worker):
    shipped = [ship.ship(batch(float(i))) for i in range(6)]
    assert all(isinstance(s, ship.Shipped) for s in shipped)
    plain = ship.ship(batch(7.0))  # every slot in flight
    assert isinstance(plain, tuple) and plain[0][0, 0] == 7.0
    big = (torch.zeros(1000, 100),)
    assert ship.ship(big) is big
    send(shipped[0])  # received and dropped at once
    assert isinstance(ship.ship(batch(8.0)), ship.Shipped)  # slot 0 is free again


def test_outside_a_worker_nothing_changes():
    b = batch(0.0)
    assert ship.ship(b) is b


def test_a_batch_of_a_ring_never_received_is_refused(worker):
    ship.ship(batch(0.0))
    lost = ship.ship(batch(1.0))
    ship._worker_ring[0].sent = True  # as if the batch carrying the ring went elsewhere
    data = ForkingPickler.dumps(lost)
    with pytest.raises(ConfigError, match="shared memory this process never mapped"):
        pickle.loads(data)
