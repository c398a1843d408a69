"""The stage-1 write API as a user calls it: write_logits with their own teacher and data, their
own loop into LogitWriter, resume after SIGKILL and torchrun ranks for every kind, and the
input digests that refuse a student whose data differs."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from stage1_helpers import REPO, chunk_files, wait_for
from torch.utils.data import TensorDataset
from write_helpers import CHUNK, CLASSES, N, rgb_data, teacher, write

from softtargets.datasets import TokenSequences, from_tensors, wrap
from softtargets.errors import (AppendError, CheckpointError, ConfigError, IncompleteStoreError,
                                StoreMismatchError)
from softtargets.read import DistillDataset, SoftTargets, StreamingDistillDataset
from softtargets.format.store import LogitStore
from softtargets.write import Dense, LogitWriter, TopK, write_logits
from softtargets.write.forward import forward

HELPERS = REPO / "tests" / "write_helpers.py"


def test_write_logits_and_append_in_batches_of_37_give_the_same_bytes(tmp_path):
    images, labels = rgb_data()
    data = from_tensors(images, labels, num_classes=CLASSES, name="rgb")
    model = teacher()
    meta = write_logits(model, data, tmp_path / "api.zarr", batch_size=8, chunk_rows=CHUNK,
                        device="cpu")
    assert meta.complete and meta.n == N and meta.num_classes == CLASSES
    assert meta.teacher["arch"] == "write_helpers.TinyCNN" and meta.teacher["kind"] == "module"
    assert meta.dataset == data.identity() and model.training  # its mode is given back
    # the user's own loop: the same forward, any batch size
    logits = torch.cat([forward(model.eval(), torch.from_numpy(images[a:a + 8]),
                                torch.device("cpu")) for a in range(0, N, 8)])  # (N, 1000)
    with LogitWriter(tmp_path / "own.zarr", dataset=data, chunk_rows=CHUNK,
                     teacher=meta.teacher) as writer:
        for a in range(0, N, 37):
            writer.append(data.ids(slice(a, a + 37)), logits[a:a + 37])
    api, own = chunk_files(tmp_path / "api.zarr"), chunk_files(tmp_path / "own.zarr")
    assert len(api) == 4 * 12 + 12 and api == own  # logits, ids, their digests; input digests
    ids, stored = LogitStore.open(str(tmp_path / "own.zarr")).read_all()
    np.testing.assert_array_equal(ids, np.arange(N))
    assert stored.tobytes() == logits.numpy().astype(np.float16).tobytes()


def start(store, kinds: str, *, delay: float) -> subprocess.Popen:
    """write_helpers.py in a subprocess whose teacher sleeps `delay` s before each batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    return subprocess.Popen([sys.executable, str(HELPERS), str(store), kinds, "--slow",
                             str(delay)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def units_written(store) -> int:
    d = store / "sample_id" / "c"
    return len(list(d.iterdir())) if d.exists() else 0


@pytest.mark.parametrize("kind", ["topk", "sampled", "ensemble"])
def test_every_kind_resumes_after_sigkill_bit_identical(tmp_path, kind):
    write(str(tmp_path / "ref.zarr"), kind)  # uninterrupted
    store = tmp_path / "s.zarr"
    proc = start(store, kind, delay=0.3)
    try:
        wait_for(lambda: units_written(store) >= 4, what="4 units written")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 4 <= units_written(store) < 12
    with pytest.raises(IncompleteStoreError, match="is incomplete"):
        SoftTargets(str(store), temperature=4.0 if kind == "topk" else 2.0)
    before = {p.name: p.stat().st_mtime_ns for p in (store / "sample_id" / "c").iterdir()}
    meta = write(str(store), kind, resume=True)
    after = {p.name: p.stat().st_mtime_ns for p in (store / "sample_id" / "c").iterdir()}
    assert meta.complete and meta.kind == ("dense" if kind == "ensemble" else kind)
    assert len(after) == 12
    assert sum(before[u] == after[u] for u in before) >= len(before) - 1  # kept, not redone
    assert chunk_files(store) == chunk_files(tmp_path / "ref.zarr")
    assert not (tmp_path / "s.zarr.lock").exists()


def test_two_torchrun_ranks_write_what_one_process_writes(tmp_path):
    for kind in ("topk", "sampled", "ensemble"):
        write(str(tmp_path / f"one-{kind}.zarr"), kind)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(HELPERS), str(tmp_path / "two-KIND.zarr"),
                           "topk,sampled,ensemble"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo",
                                            "OMP_NUM_THREADS": "1",
                                            "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # sparse: 5 or 6 arrays; ensemble: sample_id, logits, 2 members; their digests; inputs
    for kind, objects in (("topk", 11), ("sampled", 13), ("ensemble", 9)):
        two, one = tmp_path / f"two-{kind}.zarr", tmp_path / f"one-{kind}.zarr"
        assert len(chunk_files(two)) == 12 * objects
        assert chunk_files(two) == chunk_files(one)
        assert SoftTargets(str(two), temperature=1.0).kind == \
            ("dense" if kind == "ensemble" else kind)


def test_a_student_whose_data_differs_in_one_row_is_refused_naming_the_chunk(tmp_path):
    images, labels = rgb_data()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    data = wrap(TensorDataset(x, y), num_classes=CLASSES, name="rgb")  # no fingerprint
    write_logits(teacher(), data, tmp_path / "t.zarr", batch_size=16, chunk_rows=CHUNK,
                 device="cpu")
    targets = SoftTargets(str(tmp_path / "t.zarr"), temperature=4.0)
    same = DistillDataset(wrap(TensorDataset(x.clone(), y), num_classes=CLASSES, name="rgb"),
                          targets)
    same.check_inputs()  # every chunk's input digest matches
    x[45, 2, 7, 7] += 0.5  # one value of row 45: chunk 5 (rows 40..47)
    student = DistillDataset(wrap(TensorDataset(x, y), num_classes=CLASSES, name="rgb"), targets)
    assert student[3][1] == labels[3] and student[47 - 8][2].logits.shape == (CLASSES,)
    with pytest.raises(StoreMismatchError, match=r"chunk 5 \(dataset rows 40\.\.47\) does not "
                       r"match the student's data: the student's data differs from the rows "
                       r"the teacher saw"):
        student[44]
    # streamed: the same refusal when the batch holding row 45 is read, in any order
    stream = StreamingDistillDataset(wrap(TensorDataset(x, y), num_classes=CLASSES, name="rgb"),
                                     str(tmp_path / "t.zarr"), temperature=4.0, batch_size=16)
    with pytest.raises(StoreMismatchError, match=r"chunk 5 \(dataset rows 40\.\.47\) does not "
                       r"match the student's data"):
        list(stream)
    # in-memory data carries a whole-data fingerprint, which refuses it at once
    write_logits(teacher(), from_tensors(images, labels, num_classes=CLASSES, name="rgb"),
                 tmp_path / "f.zarr", chunk_rows=CHUNK, device="cpu")
    images[45, 2, 7, 7] += 0.5
    with pytest.raises(StoreMismatchError, match="fingerprint differs"):
        DistillDataset(from_tensors(images, labels, num_classes=CLASSES, name="rgb"),
                       SoftTargets(str(tmp_path / "f.zarr"), temperature=4.0))


class CausalLM(torch.nn.Module):
    """A user's tiny causal teacher: position p sees tokens 0..p."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, 16)
        self.out = torch.nn.Linear(16, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x.long()).cumsum(dim=1)  # (B, L, 16): causal running sum
        return self.out(h)  # (B, L, vocab)


def test_a_per_position_topk_store_of_a_token_file(tmp_path):
    rng = np.random.default_rng(0)
    rng.integers(0, 300, 10 * 8 + 1).astype("<u2").tofile(tmp_path / "train.bin")
    text = TokenSequences(tmp_path / "train.bin", seq_len=8, vocab_size=300)
    meta = write_logits(CausalLM(300), text, tmp_path / "tok.zarr", targets=TopK(4),
                        batch_size=3, chunk_rows=16, device="cpu")
    assert meta.kind == "topk" and meta.n == 80 and meta.dataset["n"] == 10
    targets = SoftTargets(str(tmp_path / "tok.zarr"), temperature=1.0)
    assert targets.positions == 8 and targets[9].sparse.ids.shape == (8, 4)
    DistillDataset(text, targets).check_inputs()
    tokens = np.fromfile(tmp_path / "train.bin", "<u2")
    tokens[5 * 8 + 3] = (tokens[5 * 8 + 3] + 1) % 300  # one token of sequence 5
    tokens.tofile(tmp_path / "train.bin")
    changed = DistillDataset(TokenSequences(tmp_path / "train.bin", seq_len=8, vocab_size=300),
                             targets)
    changed[1]  # chunk 0 (sequences 0..1) is unchanged
    with pytest.raises(StoreMismatchError, match=r"chunk 2 \(dataset rows 4\.\.5\) does not"):
        changed[5]
    with pytest.raises(Exception, match=r"Dense\(\) targets have one row per sample; rows per "
                       r"sequence position need TopK\(k\) or Sampled\(k\)"):
        write_logits(CausalLM(300), text, tmp_path / "dense.zarr", targets=Dense(),
                     device="cpu")


def test_an_ensemble_of_modules_and_a_writer_with_members_give_the_same_bytes(tmp_path):
    images, labels = rgb_data()
    data = from_tensors(images, labels, num_classes=CLASSES, name="rgb")
    members = [teacher(0), teacher(1)]
    meta = write_logits(members, data, tmp_path / "api.zarr", batch_size=8, chunk_rows=CHUNK,
                        device="cpu")
    ens = meta.extra["ensemble"]
    assert [m["member"] for m in ens["members"]] == [0, 1] and ens["chunks"] == [1, 8, CLASSES]
    assert meta.teacher["arch"] == "ensemble of 2: write_helpers.TinyCNN"
    cpu = torch.device("cpu")
    logits = torch.stack([torch.cat([forward(m.eval(), torch.from_numpy(images[a:a + 8]), cpu)
                                     for a in range(0, N, 8)]) for m in members], dim=1)
    with LogitWriter(tmp_path / "own.zarr", dataset=data, chunk_rows=CHUNK, members=2,
                     teacher=[{k: v for k, v in m.items() if k != "member"}
                              for m in ens["members"]]) as writer:
        for a in range(0, N, 37):
            writer.append(data.ids(slice(a, a + 37)), logits[a:a + 37])  # (B, M, C)
        with pytest.raises(AppendError, match=r"logits \(B, M, C\) = \(1, 2, 1000\)"):
            writer.append(np.array([0]), logits[0, 0])
    assert chunk_files(tmp_path / "own.zarr") == chunk_files(tmp_path / "api.zarr")
    stored = LogitStore.open(str(tmp_path / "own.zarr")).read_all()[1]
    half = logits.numpy().astype(np.float16).astype(np.float64)
    assert stored.tobytes() == half.mean(axis=1).astype(np.float16).tobytes()
    rule = SoftTargets(str(tmp_path / "own.zarr"), temperature=2.0, rule="arithmetic")
    assert rule.kind == "dense" and rule[5].log_probs.shape == (CLASSES,)
    with pytest.raises(ConfigError, match=r"with members=2, teacher must be a list of 2 dicts"):
        LogitWriter(tmp_path / "x.zarr", dataset=data, members=2, teacher={"arch": "a"})
    with pytest.raises(ConfigError, match=r"members= needs Dense\(\) targets"):
        write_logits(members, data, tmp_path / "y.zarr", targets=TopK(3), device="cpu")


def test_mc_dropout_members_are_seeded_per_pass_and_chunk(tmp_path):
    from softtargets.write.passes import mc_seed
    images, labels = rgb_data()
    data = from_tensors(images, labels, num_classes=CLASSES, name="rgb")
    model = torch.nn.Sequential(teacher(), torch.nn.Dropout(0.5))
    meta = write_logits(model, data, tmp_path / "mc.zarr", mc_dropout=2, mc_seed=3,
                        batch_size=8, chunk_rows=CHUNK, device="cpu")
    ens = meta.extra["ensemble"]["members"]
    assert [(m["mc_pass"], m["mc_seed"]) for m in ens] == [(0, 3), (1, 3)]
    assert model.training and model[1].training  # modes given back
    stored = LogitStore.open(str(tmp_path / "mc.zarr")).group["member_logits"][:]  # (2, N, C)
    model.eval()
    model[1].train()  # only dropout in train mode, as the passes ran
    for k in range(2):
        for i in range(N // CHUNK):
            torch.manual_seed(mc_seed(3, k, i))
            with torch.inference_mode():
                want = model(torch.from_numpy(images[i * CHUNK:(i + 1) * CHUNK]))
            np.testing.assert_array_equal(stored[k, i * CHUNK:(i + 1) * CHUNK],
                                          want.numpy().astype(np.float16))
    assert not np.array_equal(stored[0], stored[1])  # the passes differ


@pytest.mark.parametrize("kwargs, message", [
    ({"views": 2}, r"views must be softtargets.Views\(count=V, augment=...\), got int"),
    ({"mc_dropout": 0}, r"mc_dropout must be a positive number of passes, got 0"),
    ({"mc_dropout": 2}, r"--mc-dropout 2: teacher 0 \(TinyCNN\) has no dropout layers"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
])
def test_what_write_logits_cannot_do_is_refused_in_one_line(tmp_path, kwargs, message):
    images, labels = rgb_data(8)
    data = from_tensors(images, labels, num_classes=CLASSES)
    with pytest.raises(ConfigError, match=message):
        write_logits(teacher(), data, tmp_path / "s.zarr", device="cpu", **kwargs)
    with pytest.raises(ConfigError, match=r"teacher 1 of the ensemble must be a torch "
                       r"nn.Module, got str"):
        write_logits([teacher(), "b.pt"], data, tmp_path / "s.zarr", device="cpu")
    with pytest.raises(ConfigError, match=r"dataset must be a softtargets dataset "
                       r"\(softtargets.datasets\), got TensorDataset; wrap yours"):
        write_logits(teacher(), TensorDataset(torch.zeros(2, 3)), tmp_path / "s.zarr")
    with pytest.raises(CheckpointError, match=r"teacher TinyCNN returned logits \(2, 1000\) for "
                       r"a batch of 2, expected \(2, 10\)"):
        write_logits(teacher(), from_tensors(images, labels % 10, num_classes=10),
                     tmp_path / "s.zarr", device="cpu")
    assert not (tmp_path / "s.zarr").exists()
