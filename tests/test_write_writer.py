"""LogitWriter: any batch size and order, the same bytes as the command line, one-line refusals,
resume, per-position rows and a dataset's own sample ids."""

import re

import numpy as np
import pytest
import torch
from conftest import run_cli
from stage1_helpers import chunk_files, make_teacher, stage1_args

from softtargets.datasets.idx_files import load_split
from softtargets.datasets import TokenSequences, from_tensors
from softtargets.errors import (AppendError, ConfigError, IncompleteStoreError, LogitValueError,
                                ResumeMismatchError, StoreError)
from softtargets.recipes.hinton2015.models import load_checkpoint
from softtargets.read import SoftTargets
from softtargets.format.store import LogitStore
from softtargets.write import Dense, LogitWriter, Sampled, TopK
from softtargets.write.forward import forward


def cli_logits(data_cfg, teacher) -> np.ndarray:
    """What teacher-logits computes: the teacher's logits (96, 10), one 8-row chunk a batch."""
    split = load_split(data_cfg)
    model = load_checkpoint(str(teacher)).model.eval()
    x = torch.from_numpy(split.inputs())
    return torch.cat([forward(model, x[a:a + 8], torch.device("cpu"))
                      for a in range(0, 96, 8)]).numpy()


@pytest.mark.parametrize("flags, targets", [
    ((), Dense()), (("--topk", 3, "--temperatures", "4"), TopK(3, temperatures=(4.0,))),
    (("--sample", 4, "--sample-temperature", "2"), Sampled(4, temperature=2.0))],
    ids=["dense", "topk", "sampled"])
def test_appends_in_any_order_give_the_bytes_of_the_command_line(tiny_data, tmp_path, flags,
                                                                  targets):
    teacher = make_teacher(tmp_path / "t.pt", tiny_data)
    run_cli(*stage1_args(tiny_data, teacher, tmp_path / "cli.zarr", *flags))
    split, logits = load_split(tiny_data), cli_logits(tiny_data, teacher)
    order = np.random.default_rng(0).permutation(96)
    with LogitWriter(tmp_path / "own.zarr", n=96, class_names=split.class_names,
                     dataset_identity=split.identity(), targets=targets, chunk_rows=8) as writer:
        assert writer.todo_rows() == [slice(0, 96)]
        for a in range(0, 96, 37):  # 37, 37, 22 rows in random order
            ids = order[a:a + 37]
            writer.append(ids, logits[ids])
    assert writer.meta.complete and writer.meta.kind == targets.kind
    assert chunk_files(tmp_path / "own.zarr") == chunk_files(tmp_path / "cli.zarr")


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return from_tensors(rng.normal(size=(40, 2, 3)).astype(np.float32), rng.integers(0, 5, 40),
                        num_classes=5, name="small")


def logits_of(n=40, c=5, seed=2):
    return np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32)


@pytest.mark.parametrize("ids, values, error, message", [
    ([0, 1], torch.zeros(2, 5, requires_grad=True), AppendError,
     r"^LogitWriter.append: logits require grad \(they are part of an autograd graph\); compute "
     r"them under torch.inference_mode\(\) or torch.no_grad\(\), or pass logits.detach\(\)$"),
    ([3, 4], np.array([[0, 1, 2, 3, np.nan], [0] * 5]), LogitValueError,
     r"non-finite logits \(NaN/Inf\) at sample ids \[3\]"),
    ([3, 4], np.array([[0] * 5, [0, 7e4, 0, 0, 0]]), LogitValueError,
     r"logit magnitude 7e\+04 at sample id 4 overflows float16"),
    ([40], np.zeros((1, 5)), AppendError,
     r"^LogitWriter.append: sample id 40 is not one of the dataset's ids 0..39$"),
    ([7, 7], np.zeros((2, 5)), AppendError, r"sample id 7 was appended more than once"),
    ([1, 2], np.zeros((2, 6)), AppendError,
     r"needs sample_ids \(B,\) integers and logits \(B, C\) = \(2, 5\), got sample_ids of "
     r"shape \(2,\) dtype int64 and logits of shape \(2, 6\)"),
    ([1.0], np.zeros((1, 5)), AppendError, "got sample_ids of shape \\(1,\\) dtype float64"),
    ([1], np.zeros((1, 5), np.int64), AppendError, "logits must be floating point, got dtype "
                                                   "int64"),
])
def test_bad_appends_are_refused_in_one_line(data, tmp_path, ids, values, error, message):
    with LogitWriter(tmp_path / "s.zarr", dataset=data, chunk_rows=8) as writer:
        with pytest.raises(error, match=message):
            writer.append(np.asarray(ids), values)
        writer.append(np.arange(40), logits_of())  # nothing of the refused batch was kept
    assert writer.meta.complete


def test_a_sample_appended_again_later_is_refused(data, tmp_path):
    with LogitWriter(tmp_path / "s.zarr", dataset=data, chunk_rows=8) as writer:
        writer.append(np.arange(10), logits_of()[:10])  # unit 0 written, unit 1 buffered
        for again in (3, 9):
            with pytest.raises(AppendError, match=f"sample id {again} was appended more than "):
                writer.append(np.array([20, again]), logits_of()[[20, again]])
        writer.append(np.arange(10, 40), logits_of()[10:])


def test_close_with_rows_missing_names_them_and_leaves_a_resumable_store(data, tmp_path):
    store = tmp_path / "s.zarr"
    with pytest.raises(IncompleteStoreError, match=r"^LogitWriter.close: 13 sample\(s\) were "
                       r"never appended \(sample ids 5, 21, 22, 23, 24, 25, 26, 27, 28, 29, "
                       r"\.\.\.\); the store is left incomplete"):
        with LogitWriter(store, dataset=data, chunk_rows=8) as writer:
            keep = np.r_[0:5, 6:21, 33:40]
            writer.append(keep, logits_of()[keep])
    assert not (tmp_path / "s.zarr.lock").exists()
    with pytest.raises(IncompleteStoreError, match="is incomplete"):
        LogitStore.open(str(store))
    with LogitWriter(store, dataset=data, chunk_rows=8, resume=True) as writer:
        assert writer.todo_rows() == [slice(0, 8), slice(16, 40)]  # units 0, 2, 3 and 4
        for rows in writer.todo_rows():
            writer.append(np.arange(rows.start, rows.stop), logits_of()[rows])
    with LogitWriter(tmp_path / "ref.zarr", dataset=data, chunk_rows=8) as ref:
        ref.append(np.arange(40), logits_of())
    assert chunk_files(store) == chunk_files(tmp_path / "ref.zarr")


def test_resume_refuses_other_targets_teachers_and_data(data, tmp_path):
    store = tmp_path / "s.zarr"
    writer = LogitWriter(store, dataset=data, chunk_rows=8, teacher={"arch": "mine"})
    writer.append(np.arange(8), logits_of()[:8])
    writer.abort()
    cases = [({"targets": TopK(2)}, "its setting targets is {'kind': 'dense'} but this run's "
              "is {'kind': 'topk', 'k': 2, 'temperatures': [1.0]}"),
             ({"teacher": {"arch": "other"}}, "its teacher arch is 'mine' but this run's is "
              "'other'"),
             ({"dataset_id": "v2"}, "its dataset dataset_id is None but this run's is 'v2'")]
    for change, message in cases:
        args = {"teacher": {"arch": "mine"}, **change}
        with pytest.raises(ResumeMismatchError, match="cannot resume store .*: "
                           + re.escape(message)):
            LogitWriter(store, dataset=data, chunk_rows=8, resume=True, **args)
    with LogitWriter(store, dataset=data, chunk_rows=8, resume=True,
                     teacher={"arch": "mine"}) as writer:
        assert writer.todo_rows() == [slice(8, 40)]
        writer.append(np.arange(8, 40), logits_of()[8:])


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 40}, r"^pass either dataset or n \(the dataset gives its classes, size and identity\)"),
    ({"positions": True}, "positions=True takes L from the dataset's `positions`"),
    ({"targets": "topk"}, r"targets must be Dense\(\), TopK\(k\), Sampled\(k\) or "
                          r"TopKLogProbs\(k\)"),
    ({"teacher": "resnet"}, "teacher must be a dict identifying the teacher"),
    ({"chunk_rows": 0}, "chunk_rows must be a positive integer, got 0"),
    ({"resume": True, "overwrite": True}, "pass only one of them"),
])
def test_bad_writer_options_are_refused_in_one_line(data, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LogitWriter(tmp_path / "s.zarr", dataset=data, **kwargs)


def test_sparse_stores_are_not_sharded(data, tmp_path):
    with pytest.raises(StoreError, match=r"^sparse stores are not sharded \(got shard_rows=16\); "
                       "drop shard_rows: their units are chunks$"):
        LogitWriter(tmp_path / "s.zarr", dataset=data, targets=TopK(2), shard_rows=16)
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.lock").exists()


def test_without_a_dataset_classes_n_and_identity_are_given(tmp_path):
    with pytest.raises(ConfigError, match="without a dataset, n .* must be a positive integer"):
        LogitWriter(tmp_path / "s.zarr", num_classes=3)
    with pytest.raises(ConfigError, match=r"dataset_identity says n=5 but n=4"):
        LogitWriter(tmp_path / "s.zarr", num_classes=3, n=4, dataset_identity={"n": 5})
    with LogitWriter(tmp_path / "s.zarr", class_names=["a", "b", "c"], n=4,
                     dataset_identity={"name": "mine", "dataset_id": "v1"}) as writer:
        writer.append(np.arange(4), np.eye(4, 3, dtype=np.float32))
    meta = writer.meta
    assert meta.dataset == {"name": "mine", "split": "train", "dataset_id": "v1", "n": 4}
    assert meta.class_names == ("a", "b", "c") and "inputs" not in meta.extra["digests"]


def test_rows_per_position_of_token_sequences(tmp_path):
    rng = np.random.default_rng(0)
    rng.integers(0, 50, 6 * 4 + 1).astype("<u2").tofile(tmp_path / "t.bin")
    text = TokenSequences(tmp_path / "t.bin", seq_len=4, vocab_size=50)
    with pytest.raises(ConfigError, match=r"chunk_rows must be a multiple of the 4 positions per "
                       r"sample \(whole sequences per chunk\), got 6; e.g. 4"):
        LogitWriter(tmp_path / "x.zarr", dataset=text, targets=TopK(3), positions=True,
                    chunk_rows=6)
    values = rng.normal(size=(6, 4, 50)).astype(np.float32)  # (sequences, positions, vocab)
    with LogitWriter(tmp_path / "s.zarr", dataset=text, targets=TopK(3), positions=True,
                     chunk_rows=8) as writer:
        writer.append(np.array([5, 0, 1]), values[[5, 0, 1]])
        with pytest.raises(AppendError, match=r"logits \(B, L, C\) = \(1, 4, 50\)"):
            writer.append(np.array([2]), values[2, 0])
        writer.append(np.arange(2, 5), values[2:5])
    targets = SoftTargets(str(tmp_path / "s.zarr"), temperature=1.0)
    assert targets.positions == 4 and writer.meta.n == 24
    top = targets[5].sparse.ids.numpy()  # (4, 3): the 3 largest of each position, in order
    np.testing.assert_array_equal(top, np.argsort(-values[5].astype(np.float16), axis=1)[:, :3])


def test_a_datasets_own_sample_ids_place_its_rows(tmp_path):
    rng = np.random.default_rng(0)
    keys = rng.permutation(12)
    data = from_tensors(rng.normal(size=(12, 3)).astype(np.float32), np.arange(12) % 3,
                        num_classes=3, sample_ids=keys)
    z = rng.normal(size=(12, 3)).astype(np.float32)  # z[r]: logits of dataset row r
    with LogitWriter(tmp_path / "s.zarr", dataset=data, chunk_rows=4) as writer:
        writer.append(keys[::-1], z[::-1])  # by sample id, in any order
        with pytest.raises(AppendError):  # ids live in [0, 12) here; 12 is none of them
            writer.append(np.array([12]), z[:1])
    ids, stored = LogitStore.open(str(tmp_path / "s.zarr")).read_all()
    np.testing.assert_array_equal(ids, keys)  # row r holds dataset row r, under its id
    np.testing.assert_array_equal(stored, z.astype(np.float16))


def test_resuming_a_complete_store_changes_nothing(data, tmp_path):
    store = tmp_path / "s.zarr"
    with LogitWriter(store, dataset=data, chunk_rows=8) as writer:
        writer.append(np.arange(40), logits_of())
    before = chunk_files(store)
    with LogitWriter(store, dataset=data, chunk_rows=8, resume=True) as again:
        assert again.todo_rows() == [] and again.meta.complete
        again.append(np.arange(40), logits_of(seed=5))  # nothing left to write: ignored
    assert again.meta == writer.meta and chunk_files(store) == before
