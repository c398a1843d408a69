"""DistillDataset: a user's dataset with its soft targets under DataLoader workers (fork and
spawn) and DistributedSampler; training a student from it; refusals of mismatched stores."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dataset_helpers import write_tokens
from read_helpers import identity, write_dense, write_positions
from softtargets.datasets import TokenSequences, from_tensors
from softtargets.errors import ConfigError, StoreMismatchError
from softtargets.read import (DenseTarget, DistillDataset, PositionTargets, SoftTargets,
                              distillation_loss)

N, C, T = 48, 1000, 2.0


class TinyCNN(nn.Module):
    """3x32x32 -> 1,000 classes: one strided conv, global average pooling, a linear layer."""

    def __init__(self, width: int = 8, scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width, C)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))  # (B, width)
        return self.scale * self.fc(h)  # (B, C)


def rgb(seed: int = 0, **kw):
    """N float32 3x32x32 images with int64 labels of 1,000 classes; pixel (0, 0, 0) of row i
    is i, so a batch tells which rows it holds."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 3, 32, 32)).astype(np.float32)
    x[:, 0, 0, 0] = np.arange(N)
    y = rng.integers(0, C, N).astype(np.int64)
    return from_tensors(x, y, num_classes=C, name="rgb", dataset_id="rgb-v1", **kw)


@pytest.fixture
def store(tmp_path):
    """A dense store of a tiny CNN teacher's logits over rgb(), in chunks of 8 rows."""
    ds = rgb()
    torch.manual_seed(0)
    with torch.no_grad():
        logits = TinyCNN(scale=20.0)(torch.from_numpy(ds.inputs(slice(None)))).numpy()
    write_dense(tmp_path / "rgb.zarr", ids=ds.sample_ids, logits=logits, dataset=ds.identity(),
                class_names=list(ds.class_names), chunk_rows=8)
    return tmp_path / "rgb.zarr"


def rows_of(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].round().long().tolist()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_yield_each_sample_with_its_target(store, context):
    targets = SoftTargets(store, temperature=T)
    data = DistillDataset(rgb(), targets)
    loader = DataLoader(data, batch_size=10, shuffle=True, num_workers=2,
                        multiprocessing_context=context, collate_fn=DistillDataset.collate,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for x, y, target in loader:
        rows = rows_of(x)
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert isinstance(target, DenseTarget) and target.temperature == T
        assert torch.equal(target.logits, targets.batch(rows).logits)
        assert torch.equal(y, torch.from_numpy(rgb().labels(slice(None))[rows]))
        seen += rows
    assert sorted(seen) == list(range(N))


def test_distributed_sampler_ranks_see_every_sample_once(store):
    data = DistillDataset(rgb(), SoftTargets(store, temperature=T))
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader = DataLoader(data, batch_size=8, sampler=sampler, num_workers=2,
                            multiprocessing_context="fork", collate_fn=DistillDataset.collate)
        mine = [r for x, _, _ in loader for r in rows_of(x)]
        assert len(mine) == N // 2
        seen += mine
    assert sorted(seen) == list(range(N))


def test_student_loss_falls_under_workers_and_a_distributed_sampler(store):
    data = DistillDataset(rgb(), SoftTargets(store, temperature=T))
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=8, sampler=sampler, num_workers=2,
                        multiprocessing_context="fork", persistent_workers=True,
                        collate_fn=DistillDataset.collate)
    torch.manual_seed(1)
    student = TinyCNN()
    optim = torch.optim.Adam(student.parameters(), lr=0.02)
    epochs = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        losses = []
        for x, y, target in loader:
            loss = distillation_loss(student(x), target, y, temperature=T, alpha=0.9)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        epochs.append(float(np.mean(losses)))
    assert epochs[-1] < 0.8 * epochs[0], epochs


def test_store_of_other_data_is_refused(store):
    x, y = rgb().inputs(slice(None)).copy(), rgb().labels(slice(None))
    x[17, 1, 2, 3] += 1.0  # one pixel of one row
    other = from_tensors(x, y, num_classes=C, name="rgb", dataset_id="rgb-v1")
    with pytest.raises(StoreMismatchError, match="fingerprint differs; recompute the store on "
                       "this data"):
        DistillDataset(other, SoftTargets(store))


def test_store_of_another_class_count_is_refused(store):
    ds = rgb()
    more = from_tensors(ds.inputs(slice(None)), ds.labels(slice(None)), num_classes=C + 1,
                        name="rgb", dataset_id="rgb-v1")
    with pytest.raises(StoreMismatchError, match=r"has 1000 classes but dataset rgb has 1001; "
                       "use the store computed on it"):
        DistillDataset(more, SoftTargets(store))


def test_store_missing_some_sample_ids_is_refused(tmp_path):
    ds = rgb()
    write_dense(tmp_path / "part.zarr", ids=np.arange(40), logits=np.zeros((40, C)),
                dataset=ds.identity(), class_names=list(ds.class_names), chunk_rows=8)
    with pytest.raises(StoreMismatchError, match=r"has no target for 8 of the 48 sample ids of "
                       r"dataset rgb \(first: \[40, 41, 42, 43, 44\]\)"):
        DistillDataset(ds, SoftTargets(tmp_path / "part.zarr"))


class Plain(Dataset):
    """A user's own map-style dataset: no identity, no sample ids (row i is sample i)."""

    def __init__(self, n: int, positions: int | None = None) -> None:
        self.n = n
        if positions is not None:
            self.positions = positions

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((2,), float(i)), i % 3


def test_plain_map_style_dataset_pairs_by_row(tmp_path):
    write_dense(tmp_path / "p.zarr", ids=np.arange(6)[::-1].copy(),
                logits=np.arange(6.0)[::-1, None] * np.ones((1, 4)), dataset=identity(6))
    data = DistillDataset(Plain(6), SoftTargets(tmp_path / "p.zarr"))
    x, y, target = data[4]
    assert x.tolist() == [4.0, 4.0] and y == 1 and target.logits.tolist() == [4.0] * 4
    with pytest.raises(StoreMismatchError, match="has no target for 1 of the 7 sample ids of "
                       r"dataset Plain \(first: \[6\]\)"):
        DistillDataset(Plain(7), SoftTargets(tmp_path / "p.zarr"))
    with pytest.raises(StoreMismatchError, match="has one target per sample but dataset Plain "
                       "has labels of 5 positions per sample"):
        DistillDataset(Plain(6, positions=5), SoftTargets(tmp_path / "p.zarr"))
    with pytest.raises(ConfigError, match="DistillDataset takes SoftTargets, got str"):
        DistillDataset(Plain(6), str(tmp_path / "p.zarr"))


def test_token_sequences_with_a_per_position_topk_store(tmp_path):
    tokens = np.random.default_rng(2).integers(0, 12, 3 * 4 + 1).astype(np.uint16)
    ds = TokenSequences(write_tokens(tmp_path / "t.bin", tokens), seq_len=4, vocab_size=12)
    keys = np.array([(s, p) for s in range(3) for p in range(4)])[::-1].copy()  # any row order
    z = np.random.default_rng(3).normal(0, 2, (12, 12)).astype(np.float32)
    write_positions(tmp_path / "p.zarr", keys=keys, logits=z, dataset=ds.identity())
    targets = SoftTargets(tmp_path / "p.zarr", temperature=2.0)
    data = DistillDataset(ds, targets)
    loader = DataLoader(data, batch_size=2, num_workers=2, multiprocessing_context="fork",
                        collate_fn=DistillDataset.collate)
    (x0, y0, t0), (x1, y1, t1) = list(loader)
    assert x0.shape == (2, 4) and y0.shape == (2, 4) and x1.shape == (1, 4)
    assert isinstance(t0, PositionTargets) and t0.sparse.ids.shape == (2, 4, 3)
    assert torch.equal(y0[0], torch.from_numpy(tokens[1:5].astype(np.int64)))  # next tokens
    assert torch.equal(t0.sparse.log_probs, targets.batch([0, 1]).sparse.log_probs)
    assert torch.equal(t1.sparse.tail, targets.batch([2]).sparse.tail)
    loss = distillation_loss(torch.zeros(2, 4, 12), t0, y0, temperature=2.0, alpha=0.5)
    assert torch.isfinite(loss) and loss.item() > 0
    short = TokenSequences(tmp_path / "t.bin", seq_len=3, vocab_size=12)
    with pytest.raises(StoreMismatchError, match="n differs"):
        DistillDataset(short, targets)


def test_a_batch_fetched_at_once_equals_the_rows_fetched_one_by_one(store):
    data = DistillDataset(rgb(), SoftTargets(store, temperature=T))
    rows = [5, 0, 47, 12, 5]
    batch = data.__getitems__(rows)  # what the DataLoader's fetcher calls for each batch
    x, y, target = DistillDataset.collate(batch)
    one = DistillDataset.collate([data[i] for i in rows])  # per-row items, stacked
    assert rows_of(x) == rows and torch.equal(x, one[0])
    assert torch.equal(y, one[1]) and y.dtype == one[1].dtype == torch.int64
    assert torch.equal(target.logits, one[2].logits) and target.temperature == T
    # a user's own collate_fn still sees B (input, label, target) items
    assert len(batch) == 5 and rows_of(batch[2][0][None]) == [47]
    assert torch.equal(batch[1][2].logits, data[0][2].logits)
    loader = DataLoader(data, batch_size=16, shuffle=True, collate_fn=DistillDataset.collate,
                        generator=torch.Generator().manual_seed(0))
    assert sorted(r for x, _, _ in loader for r in rows_of(x)) == list(range(N))
    with pytest.raises(IndexError, match=r"rows \[48\] are outside DistillDataset of 48 rows"):
        data.__getitems__([1, 48])


def test_a_subclass_that_overrides_getitem_still_gets_its_rows_through_it(store):
    class Flipped(DistillDataset):
        def __getitem__(self, index):
            x, y, target = super().__getitem__(index)
            return -x, y, target

    data = Flipped(rgb(), SoftTargets(store, temperature=T))
    x, _, _ = DistillDataset.collate(data.__getitems__([3, 1]))
    assert rows_of(-x) == [3, 1]  # each row through the subclass: negated
