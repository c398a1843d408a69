"""StreamingDistillDataset: every store kind streamed unit by unit, split across DataLoader
workers and ranks, resumed mid-epoch, in bounded memory, through the checked readers."""

import copy
import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from conftest import make_dataset, run_cli
from dataset_helpers import write_tokens
from read_helpers import write_dense, write_positions
from softtargets.config import DataConfig
from softtargets.datasets import IDXDataset, TokenSequences, from_tensors
from softtargets.errors import ConfigError, DatasetError, StoreError, StoreMismatchError
from softtargets.read import (DenseTarget, DistillDataset, PositionTargets, SoftTargets,
                              SparseTargets, StreamingDistillDataset, distillation_loss,
                              stack_targets)
from stage1_helpers import make_teacher, stage1_args

S, L, V = 24, 8, 32  # token sequences, their length, the vocabulary


class TinyLM(nn.Module):
    """A causal transformer language model: tokens (B, L) -> next-token logits (B, L, V)."""

    def __init__(self, dim: int = 16, scale: float = 1.0) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(V, dim), nn.Embedding(L, dim)
        self.block = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=2 * dim,
                                                dropout=0.0, batch_first=True)
        self.head, self.scale = nn.Linear(dim, V), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        h = self.emb(x.long()) + self.pos(torch.arange(x.shape[1]))  # (B, L, dim)
        return self.scale * self.head(self.block(h, src_mask=mask, is_causal=True))


def token_store(tmp_path):
    """A token file of S sequences and a top-k store of every position of a TinyLM teacher,
    written with SparseWriter in chunks of 12 rows (sequences of 8 cross chunk boundaries)."""
    tokens = np.random.default_rng(0).integers(0, V, S * L + 1).astype(np.uint16)
    text = TokenSequences(write_tokens(tmp_path / "train.bin", tokens), seq_len=L, vocab_size=V)
    torch.manual_seed(0)
    with torch.no_grad():
        z = TinyLM(scale=4.0)(torch.from_numpy(text.inputs(slice(None)).astype(np.int64)))
    keys = np.array([(s, p) for s in range(S) for p in range(L)])  # row r = (r // L, r % L)
    write_positions(tmp_path / "tokens.zarr", keys=keys, logits=z.reshape(S * L, V).numpy(),
                    dataset=text.identity(), k=4, chunk_rows=12)
    return text, tmp_path / "tokens.zarr"


def test_token_stream_under_two_workers_and_two_ranks_teaches_a_student(tmp_path):
    text, url = token_store(tmp_path)
    want = SoftTargets(url, temperature=2.0)
    torch.manual_seed(1)
    student = TinyLM()
    optim = torch.optim.Adam(student.parameters(), lr=0.01)
    losses = []
    for epoch in range(2):
        seen, total, steps = Counter(), 0.0, 0
        for rank in range(2):
            data = StreamingDistillDataset(text, url, temperature=2.0, batch_size=3, seed=5,
                                           epoch=epoch, with_ids=True, rank=rank, world_size=2,
                                           buffer_chunks=2)
            for ids, x, y, target in DataLoader(data, batch_size=None, num_workers=2):
                assert isinstance(target, PositionTargets) and target.sparse.ids.shape[1:] == (L, 4)
                mine = want.batch(ids)  # the map-style targets of these sequences
                assert torch.equal(target.sparse.ids, mine.sparse.ids)
                assert torch.equal(target.sparse.tail, mine.sparse.tail)
                assert torch.equal(y, torch.from_numpy(text.labels(slice(None))[ids.numpy()]))
                seen.update((int(i), p) for i in ids for p in range(L))
                loss = distillation_loss(student(x), target, y, temperature=2.0, alpha=0.9)
                optim.zero_grad()
                loss.backward()
                optim.step()
                total, steps = total + loss.item(), steps + 1
        assert sorted(seen) == [(s, p) for s in range(S) for p in range(L)]
        assert set(seen.values()) == {1}  # every (sequence, position) exactly once
        losses.append(total / steps)
    assert losses[1] < 0.9 * losses[0]


@pytest.fixture(scope="module")
def idx_stores(tmp_path_factory):
    """The 96-row tiny IDX dataset and stores of every kind over it, written by the CLI."""
    root = tmp_path_factory.mktemp("stores")
    make_dataset(root / "data")
    cfg = DataConfig(dataset="mnist", split="train", data_dir=str(root / "data"))
    a, b = make_teacher(root / "a.pt", cfg, seed=0), make_teacher(root / "b.pt", cfg, seed=1)
    flags = {"dense": [], "ensemble": ["--teacher", b], "views": ["--views", 3],
             "topk": ["--topk", 4, "--temperatures", 2],
             "sampled": ["--sample", 6, "--sample-temperature", 2, "--temperatures", 2]}
    for kind, extra in flags.items():
        run_cli(*stage1_args(cfg, a, root / f"{kind}.zarr", *extra))
    return IDXDataset("mnist", data_dir=str(root / "data")), root


READS = {"dense": {}, "ensemble": {"rule": "geometric", "temperature": 4.0},
         "views": {"view": 2}, "topk": {"temperature": 2.0}, "sampled": {"temperature": 2.0}}


@pytest.mark.parametrize("kind", list(READS))
def test_streamed_targets_equal_the_map_style_ones(idx_stores, kind):
    ds, root = idx_stores
    options = {"temperature": 2.0, **READS[kind]}
    mapped = DistillDataset(ds, SoftTargets(root / f"{kind}.zarr", **options))
    data = StreamingDistillDataset(ds, root / f"{kind}.zarr", batch_size=10, with_ids=True,
                                   buffer_chunks=3, **options)
    order = []
    for ids, x, y, target in data:
        items = [mapped[i] for i in ids.tolist()]  # (image, label, target) of each row
        want = (np.stack([item[0] for item in items]), [item[1] for item in items],
                stack_targets([item[2] for item in items]))
        assert torch.equal(x, torch.from_numpy(want[0])) and y.tolist() == want[1]
        assert type(target) is type(want[2]) and target.temperature == want[2].temperature
        for name in ("logits", "log_probs", "ids", "tail", "weights"):
            got, expect = getattr(target, name, None), getattr(want[2], name, None)
            assert (got is None and expect is None) or torch.equal(got, expect), name
        order += ids.tolist()
    assert sorted(order) == list(range(96)) and order != list(range(96))
    assert isinstance(target, SparseTargets if kind in ("topk", "sampled") else DenseTarget)


def ids_store(tmp_path, *, n=96, chunk_rows=8):
    """A dense store over `n` rows whose logit 0 is the row's sample id, rows in shuffled order."""
    data = from_tensors(np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 5,
                        num_classes=5, name="ids")
    perm = np.random.default_rng(0).permutation(n)
    logits = np.zeros((n, 5), np.float32)
    logits[:, 0] = perm
    write_dense(tmp_path / "ids.zarr", ids=perm, logits=logits, dataset=data.identity(),
                chunk_rows=chunk_rows)
    return data, tmp_path / "ids.zarr"


def batches(data, loader=None):
    """The ids of every batch, each batch checked to hold its own rows' inputs and targets."""
    out = []
    for x, _, target in (loader if loader is not None else data):
        assert torch.equal(target.logits[:, 0].long(), x[:, 0].long())
        out.append(x[:, 0].long().tolist())
    return out


def test_epochs_shuffle_deterministically_and_split_over_workers_and_ranks(tmp_path):
    data, url = ids_store(tmp_path)
    def make(batch_size=5, **kw):
        return StreamingDistillDataset(data, url, batch_size=batch_size, seed=3, **kw)

    first = make()
    epoch0 = batches(first)
    assert epoch0 == batches(make()) and sorted(sum(epoch0, [])) == list(range(96))
    first.set_epoch(1)
    assert batches(first) != epoch0 and batches(make(epoch=1)) == batches(first)
    assert batches(make(shuffle=False))[0] != epoch0[0]
    rows = []
    for rank in range(3):
        part = make(rank=rank, world_size=3)
        got = batches(part, DataLoader(part, batch_size=None, num_workers=2))
        assert len(got) == part.num_batches(2)
        rows += sum(got, [])
    assert sorted(rows) == list(range(96))  # every row once across 3 ranks x 2 workers
    dropped = make(drop_last=True, batch_size=7)
    assert [len(b) for b in batches(dropped)] == [7] * 13 and dropped.num_batches() == 13


@pytest.mark.parametrize("workers", [0, 2])
def test_state_dict_resumes_mid_epoch_with_exactly_the_rest(tmp_path, workers):
    data, url = ids_store(tmp_path)
    def make():
        return StreamingDistillDataset(data, url, batch_size=5, seed=1, epoch=2)

    full = batches(make(), make().loader(num_workers=workers))
    for k in (1, 6, len(full) - 1):
        first = make()
        it = iter(first.loader(num_workers=workers))
        head = [next(it)[0][:, 0].long().tolist() for _ in range(k)]
        state = first.state_dict()
        del it
        assert head == full[:k] and (state["epoch"], state["delivered"]) == (2, k)
        second = make()
        second.set_epoch(0)
        second.load_state_dict(state)
        assert batches(second, second.loader(num_workers=workers)) == full[k:]
        assert second.state_dict()["delivered"] == len(full)


def test_resume_refuses_other_settings_and_worker_counts(tmp_path):
    data, url = ids_store(tmp_path)
    ds = StreamingDistillDataset(data, url, batch_size=5)
    it = iter(ds.loader(num_workers=2))
    next(it)
    state = ds.state_dict()
    other = StreamingDistillDataset(data, url, batch_size=6)
    with pytest.raises(ConfigError, match="saved with batch_size=5, this dataset has "
                       "batch_size=6; resume with the same settings"):
        other.load_state_dict(state)
    again = StreamingDistillDataset(data, url, batch_size=5)
    again.load_state_dict(state)
    with pytest.raises(ConfigError, match="saved with 2 DataLoader workers, this DataLoader "
                       "runs 0; resume with the same num_workers"):
        next(iter(again))
    with pytest.raises(ConfigError, match=r"stream state lacks \['batch_size', 'buffer_chunks', "
                       r"'delivered', .*\]; load_state_dict takes a dict from "
                       r"StreamingDistillDataset.state_dict\(\)"):
        again.load_state_dict({"epoch": 0})


def test_memory_is_bounded_by_two_groups_of_units(tmp_path):
    data, url = ids_store(tmp_path, n=400, chunk_rows=4)  # 100 chunks
    ds = StreamingDistillDataset(data, url, batch_size=7, buffer_chunks=3)
    assert sorted(sum(batches(ds), [])) == list(range(400))
    assert (ds.gauge.read, ds.gauge.peak, ds.gauge.held) == (100, 6, 0)
    text, tokens = token_store(tmp_path)
    seqs = StreamingDistillDataset(text, tokens, temperature=2.0, batch_size=2, buffer_chunks=2)
    assert sum(len(x) for x, _, _ in seqs) == S
    assert (seqs.gauge.read, seqs.gauge.peak, seqs.gauge.held) == (16, 4, 0)


def test_epochs_in_one_process_reuse_the_reader_opened_at_construction(tmp_path, monkeypatch):
    from softtargets.read.units import UnitSpec
    data, url = ids_store(tmp_path)
    opened = []
    real = UnitSpec.open
    monkeypatch.setattr(UnitSpec, "open", lambda self: opened.append(self.url) or real(self))
    ds = StreamingDistillDataset(data, url, batch_size=5, decode_threads=2)
    epochs = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        epochs.append(sum(batches(ds), []))
    assert opened == [str(url)]  # the scan's reader, read with in every epoch
    again = copy.copy(ds)  # a copy of the dataset shares its reader
    assert sum(batches(again), []) == epochs[2] and opened == [str(url)]
    assert not pickle.loads(pickle.dumps(ds))._readers  # another process opens its own
    assert all(sorted(e) == list(range(96)) for e in epochs) and epochs[0] != epochs[1]
    # worker processes open their own reader (in their process: `opened` here is unchanged)
    assert sorted(sum(batches(ds, ds.loader(num_workers=2)), [])) == list(range(96))


def test_a_damaged_chunk_is_one_line_in_the_main_process_also_from_a_worker(tmp_path):
    data, url = ids_store(tmp_path)
    chunk = url / "logits" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    ds = StreamingDistillDataset(data, url, batch_size=5)
    message = rf"^store '{url}': chunk 1 \(rows 8..15\) of 'logits' cannot be decoded, the "
    for loader in (ds, DataLoader(ds, batch_size=None, num_workers=2), ds.loader(num_workers=2)):
        with pytest.raises(StoreError, match=message) as caught:
            for _x, _y, _t in loader:
                pass
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind, array", [("ensemble", "member_logits"),
                                         ("topk", "topk_logits")])
def test_a_damaged_chunk_of_any_kind_names_its_array(idx_stores, tmp_path, kind, array):
    ds, root = idx_stores
    url = tmp_path / f"{kind}.zarr"
    shutil.copytree(root / f"{kind}.zarr", url)
    chunk = next(p for p in sorted((url / array / "c").rglob("*")) if p.is_file()
                 and p.relative_to(url / array / "c").parts[-2] == "2")  # chunk 2 (rows 16..23)
    chunk.write_bytes(chunk.read_bytes()[:-3])
    data = StreamingDistillDataset(ds, url, temperature=2.0, batch_size=16)
    with pytest.raises(StoreError, match=rf"^store '{url}': chunk 2 \(rows 16..23\) of "
                       rf"'{array}' cannot be decoded, the stored bytes are damaged: "):
        for _batch in data.loader(num_workers=2):
            pass


def test_user_sample_ids_and_plain_map_style_datasets_pair_by_sample_id(tmp_path):
    perm = np.random.default_rng(1).permutation(40)
    keyed = from_tensors(perm[:, None].astype(np.float32), perm % 5, num_classes=5,
                         name="keyed", sample_ids=perm)  # row i holds sample id perm[i]
    logits = np.zeros((40, 5), np.float32)
    logits[:, 0] = np.arange(40)
    write_dense(tmp_path / "k.zarr", ids=np.arange(40), logits=logits, dataset=keyed.identity())
    got = batches(StreamingDistillDataset(keyed, tmp_path / "k.zarr", batch_size=6))
    assert sorted(sum(got, [])) == list(range(40))

    class Plain(torch.utils.data.Dataset):  # no sample ids: row i is sample id i
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return torch.tensor([float(i)]), i % 5

    plain = StreamingDistillDataset(Plain(), tmp_path / "k.zarr", batch_size=6)
    got = batches(plain, plain.loader(num_workers=2))
    assert sorted(sum(got, [])) == list(range(40))


def test_subsets_and_refusals(tmp_path):
    data, url = ids_store(tmp_path)
    few = StreamingDistillDataset(data, url, batch_size=4, sample_ids=[50, 3, 9])
    assert few.num_rows == 3 and sorted(sum(batches(few), [])) == [3, 9, 50]
    with pytest.raises(DatasetError, match=r"sample_ids \[96\] are not sample ids of dataset"):
        StreamingDistillDataset(data, url, sample_ids=[1, 96])
    write_dense(tmp_path / "half.zarr", ids=np.arange(48), logits=np.zeros((48, 5)),
                dataset=data.identity())
    with pytest.raises(StoreMismatchError, match=r"has no target for 48 of the 96 sample ids of "
                       r"dataset ids \(first: \[48, 49, 50, 51, 52\]\)"):
        StreamingDistillDataset(data, tmp_path / "half.zarr")
    with pytest.raises(StoreMismatchError, match="n differs"):
        StreamingDistillDataset(from_tensors(np.zeros((95, 1)), np.zeros(95, int),
                                             num_classes=5, name="ids"), url)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got 0"):
        StreamingDistillDataset(data, url, batch_size=0)
    with pytest.raises(ConfigError, match="pass rank and world_size together"):
        StreamingDistillDataset(data, url, rank=1)
    with pytest.raises(ConfigError, match="rule='geometric' combines an ensemble's members"):
        StreamingDistillDataset(data, url, rule="geometric")


def test_per_position_rows_out_of_sequence_order_are_refused_naming_the_row(tmp_path):
    tokens = np.random.default_rng(0).integers(0, V, 3 * 4 + 1).astype(np.uint16)
    text = TokenSequences(write_tokens(tmp_path / "t.bin", tokens), seq_len=4, vocab_size=V)
    keys = np.array([(s, p) for s in range(3) for p in range(4)])[::-1].copy()
    write_positions(tmp_path / "p.zarr", keys=keys, logits=np.zeros((12, V)),
                    dataset=text.identity())
    with pytest.raises(StoreError, match=r"row 0 \(chunk 0\) holds position 3 of sequence 2; "
                       r"streaming needs row r to hold position r % 4 of one sequence"):
        StreamingDistillDataset(text, tmp_path / "p.zarr", temperature=2.0)
    SoftTargets(tmp_path / "p.zarr", temperature=2.0).batch([0])  # the map-style read takes it
