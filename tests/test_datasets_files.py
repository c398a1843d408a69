"""softtargets.datasets adapters of files: image folders, CIFAR-10/100, token files."""

from __future__ import annotations

import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_python_blocks
from dataset_helpers import write_cifar10, write_cifar100, write_images, write_tokens

from softtargets.datasets import CIFAR, ImageFolder, TokenSequences
from softtargets.errors import ConfigError, DatasetError, DatasetNotFoundError, LabelError


# --- image folders ---

def test_image_folder_classes_files_and_pixels(tmp_path):
    pixels = write_images(tmp_path / "imgs", {"zebra": 2, "ant": 3, "moth": 1})
    (tmp_path / "imgs" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / ".cache").mkdir()
    ds = ImageFolder(tmp_path / "imgs", dataset_id="bugs-v2")
    assert ds.class_names == ("ant", "moth", "zebra") and ds.num_classes == 3
    assert [p.relative_to(tmp_path / "imgs").as_posix() for p in ds.files] == [
        "ant/img0.png", "ant/img1.png", "ant/img2.png", "moth/img0.png", "zebra/img0.png",
        "zebra/img1.png"]
    inputs, labels = ds.read(slice(None))
    assert inputs.dtype == np.uint8 and inputs.shape == (6, 5, 6, 3)  # (N, H, W, C)
    np.testing.assert_array_equal(inputs[4], pixels["zebra"][0])  # png is lossless
    np.testing.assert_array_equal(inputs[:3], np.stack(pixels["ant"]))
    assert labels.tolist() == [0, 0, 0, 1, 2, 2]
    ident = ds.identity()
    assert ident["name"] == "imgs" and ident["n"] == 6 and ident["dataset_id"] == "bugs-v2"
    assert ident["mode"] == "RGB" and ident["listing"].startswith("xxh3-128:")
    (tmp_path / "imgs" / "moth" / "img0.png").rename(tmp_path / "imgs" / "moth" / "img9.png")
    assert ImageFolder(tmp_path / "imgs").identity()["listing"] != ident["listing"]


def test_image_folder_gray_mode_and_transform(tmp_path):
    write_images(tmp_path / "imgs", {"a": 2, "b": 1})
    gray = ImageFolder(tmp_path / "imgs", mode="L")
    assert gray.inputs(slice(0, 2)).shape == (2, 5, 6, 1)
    flat = ImageFolder(tmp_path / "imgs", transform=lambda x: x.astype(np.float32).mean(-1) / 255)
    x = flat.inputs(slice(None))
    assert x.dtype == np.float32 and x.shape == (3, 5, 6) and 0 <= x.min() and x.max() <= 1


def test_image_folder_names_the_first_odd_file_and_its_size(tmp_path):
    write_images(tmp_path / "imgs", {"a": 2, "b": 2})
    write_images(tmp_path / "imgs", {"c": 1}, size=(7, 4))
    ds = ImageFolder(tmp_path / "imgs")
    assert ds.inputs(slice(0, 4)).shape == (4, 5, 6, 3)
    odd = tmp_path / "imgs" / "c" / "img0.png"
    first = tmp_path / "imgs" / "a" / "img0.png"
    want = (f"image folder {tmp_path}/imgs: {odd} has size 7x4 (WxH), but {first} has 6x5; "
            "all images must share one size")
    with pytest.raises(DatasetError, match="^" + re.escape(want)):
        ImageFolder(tmp_path / "imgs").inputs(slice(3, 5))  # the first row read is not row 0
    resized = ImageFolder(tmp_path / "imgs", transform=lambda x: x[:4, :6])
    assert resized.inputs(slice(None)).shape == (5, 4, 6, 3)


def test_image_folder_refusals(tmp_path, monkeypatch):
    missing = re.escape(f"image folder {tmp_path}/none not found")
    with pytest.raises(DatasetNotFoundError, match=missing):
        ImageFolder(tmp_path / "none")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="has no class folders; put the images of class C"):
        ImageFolder(tmp_path / "flat")
    write_images(tmp_path / "imgs", {"a": 1})
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(DatasetError, match="class folder 'empty' has no .png/.jpg/.jpeg files"):
        ImageFolder(tmp_path / "imgs")
    (tmp_path / "imgs" / "empty" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"cannot decode .*empty/bad\.jpg"):
        ImageFolder(tmp_path / "imgs").inputs(slice(None))
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow not installed
    with pytest.raises(ConfigError, match=r"^ImageFolder needs Pillow: pip install "
                                          r"'softtargets\[images\]'"):
        ImageFolder(tmp_path / "imgs")


# --- CIFAR ---

def test_cifar10_train_and_test(tmp_path):
    folder = write_cifar10(tmp_path)
    train = CIFAR(tmp_path)  # the folder holding cifar-10-batches-py is found too
    assert train.name == "cifar10" and train.split == "train" and len(train) == 20
    assert train.class_names[0] == "airplane" and train.num_classes == 10
    x, y = train.read(slice(None))
    assert x.dtype == np.uint8 and x.shape == (20, 3, 32, 32)
    raw = pickle.loads((folder / "data_batch_2").read_bytes(), encoding="bytes")
    # rows 4..7 are batch 2; each row is 1024 red, then green, then blue values
    np.testing.assert_array_equal(x[4:8].reshape(4, 3072), raw[b"data"])
    np.testing.assert_array_equal(x[5, 1].reshape(-1), raw[b"data"][1, 1024:2048])
    assert y[4:8].tolist() == raw[b"labels"] and y.dtype == np.int64
    test = CIFAR(folder, train=False, dataset_id="c10")
    assert len(test) == 3 and test.identity() == {
        "name": "cifar10", "split": "test", "n": 3, "fingerprint": test.fingerprint,
        "dataset_id": "c10"}
    assert train.fingerprint != test.fingerprint


def test_cifar100_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path)
    ds = CIFAR(folder)
    assert ds.name == "cifar100" and len(ds) == 6 and ds.num_classes == 100
    assert ds.class_names[:2] == ("c0", "c1")
    raw = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    assert ds.labels(slice(None)).tolist() == raw[b"fine_labels"]
    assert len(CIFAR(folder, train=False)) == 2


def test_cifar_refusals(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="not a CIFAR python-format folder; expected "
                                                   "data_batch_1..5"):
        CIFAR(tmp_path)
    folder = write_cifar10(tmp_path)
    evil = pickle.dumps({b"data": __import__("os").getcwd}, protocol=2)  # builds a function
    (folder / "data_batch_3").write_bytes(evil)
    with pytest.raises(DatasetError, match=r"data_batch_3 is not a CIFAR python-format file "
                                           r"\(refusing to load (posix|os)\.getcwd\)"):
        CIFAR(folder)
    write_cifar10(tmp_path / "bad")
    d = tmp_path / "bad" / "cifar-10-batches-py"
    raw = pickle.loads((d / "test_batch").read_bytes(), encoding="bytes")
    raw[b"labels"][1] = 10
    (d / "test_batch").write_bytes(pickle.dumps(raw, protocol=2))
    with pytest.raises(LabelError, match=r"^cifar10: row 1 has label 10, outside the 10 "):
        CIFAR(d, train=False).read(slice(None))


# --- token files ---

def test_tokens_next_token_alignment(tmp_path):
    tokens = (np.arange(23) * 7 % 50).astype(np.uint16)
    ds = TokenSequences(write_tokens(tmp_path / "train.bin", tokens), seq_len=5, vocab_size=50)
    assert len(ds) == (23 - 1) // 5 == 4 and ds.positions == 5 and ds.num_classes == 50
    x, y = ds.read(slice(None))
    assert x.shape == y.shape == (4, 5) and x.dtype == np.uint16 and y.dtype == np.int64
    for i in range(4):
        np.testing.assert_array_equal(x[i], tokens[i * 5:(i + 1) * 5])
        np.testing.assert_array_equal(y[i], tokens[i * 5 + 1:(i + 1) * 5 + 1])
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # target p == input p + 1
    np.testing.assert_array_equal(y[:-1, -1], x[1:, 0])  # last target: next sequence's first
    item_x, item_y = ds[2]
    assert item_x.tolist() == tokens[10:15].tolist() and item_y.tolist() == tokens[11:16].tolist()
    assert ds.identity() == {"name": "train.bin", "split": "train", "n": 4, "tokens": 23,
                             "seq_len": 5, "dtype": "uint16", "vocab_size": 50}


def test_tokens_take_gathers_shuffled_sequences_as_read_does(tmp_path):
    tokens = (np.arange(53) * 7 % 50).astype(np.uint16)
    ds = TokenSequences(write_tokens(tmp_path / "train.bin", tokens), seq_len=5, vocab_size=50)
    rows = np.array([7, 0, 3, 3, 9])  # shuffled, a repeat, the last sequence
    x, y = ds.take(rows)
    assert x.dtype == np.uint16 and y.dtype == np.int64 and x.shape == y.shape == (5, 5)
    for got_x, got_y, row in zip(x, y, rows):
        want_x, want_y = ds.read(slice(row, row + 1))
        assert got_x.tolist() == want_x[0].tolist() and got_y.tolist() == want_y[0].tolist()
    small = TokenSequences(tmp_path / "train.bin", seq_len=5, vocab_size=40)
    with pytest.raises(LabelError, match=r"^train\.bin: row 1 position 1 has token 42"):
        small.take(np.array([3, 1]))  # the bad token named by its row, as read() names it
    with pytest.raises(DatasetError, match=r"rows 3\.\.10 out of range for 10 rows"):
        ds.take(np.array([3, 10]))


def test_tokens_are_memory_mapped_not_loaded(tmp_path):
    tokens = np.arange(40_001, dtype=np.uint32) % 70_000
    ds = TokenSequences(write_tokens(tmp_path / "t.bin", tokens), seq_len=100, dtype="uint32",
                        vocab_size=70_000)
    assert isinstance(ds.memmap, np.memmap) and ds.memmap.dtype == np.dtype("<u4")
    assert ds.labels(slice(399, 400))[0, -1] == 40_000
    blob = pickle.dumps(ds)  # what a DataLoader worker receives
    assert len(blob) < 2_000  # the path, not the 160 kB of tokens
    np.testing.assert_array_equal(pickle.loads(blob).inputs(slice(3, 4)), ds.inputs(slice(3, 4)))


def test_tokens_vocab_inferred_with_a_warning_and_checked(tmp_path):
    path = write_tokens(tmp_path / "t.bin", np.array([3, 1, 4, 1, 5, 9, 2, 6, 5], np.uint16))
    with pytest.warns(UserWarning, match="vocab_size not given, taken as the largest token \\+ 1 "
                                         "= 10"):
        assert TokenSequences(path, seq_len=4).num_classes == 10
    small = TokenSequences(path, seq_len=4, vocab_size=6)  # tokens 9 and 6 are out of range
    assert small.labels(slice(0, 1)).tolist() == [[1, 4, 1, 5]]
    with pytest.raises(LabelError, match=r"^t\.bin: row 1 position 0 has token 9, outside the 6 "
                                         r"classes \[0, 6\); pass the right vocab_size"):
        small.labels(slice(0, 2))
    with pytest.raises(LabelError, match="row 1 position 1 has token 9"):
        small.inputs(slice(1, 2))


def test_tokens_refusals(tmp_path):
    missing = re.escape(f"token file {tmp_path}/no.bin not found")
    with pytest.raises(DatasetNotFoundError, match=missing):
        TokenSequences(tmp_path / "no.bin", seq_len=4, vocab_size=10)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(DatasetError, match="3 bytes is not a whole number of uint16 tokens"):
        TokenSequences(odd, seq_len=1, vocab_size=10)
    short = write_tokens(tmp_path / "s.bin", np.arange(4, dtype=np.uint16))
    with pytest.raises(DatasetError, match="4 tokens make no sequence of seq_len 4 \\(needs at "
                                           "least 5\\)"):
        TokenSequences(short, seq_len=4, vocab_size=10)
    with pytest.raises(DatasetError, match="token dtype must be one of \\['uint16', 'uint32'\\], "
                                           "got 'int8'"):
        TokenSequences(short, seq_len=2, dtype="int8", vocab_size=10)
    with pytest.raises(DatasetError, match="seq_len must be a positive integer, got 0"):
        TokenSequences(short, seq_len=0, vocab_size=10)


def test_the_examples_of_docs_datasets_run(tmp_path, monkeypatch, fashion):
    doc = Path(__file__).parent.parent / "docs" / "DATASETS.md"
    text = doc.read_text()
    write_cifar10(tmp_path)
    write_images(tmp_path / "flowers", {"daisy": 2, "rose": 1})
    write_tokens(tmp_path / "train.bin", np.arange(8 * 256 + 1, dtype=np.uint16))
    monkeypatch.chdir(tmp_path)
    scope = run_python_blocks(text, doc, count=1,
                              only=lambda block: "import" in block)
    assert scope["x"].shape == (8, 256) and scope["y"][0, -1] == 256
    assert len(scope["cifar"]) == 3 and scope["flowers"].class_names == ("daisy", "rose")
    assert scope["mine"].identity()["name"] == "mine" and scope["rgb"].num_classes == 1000
    assert scope["fashion"].identity()["fingerprint"].startswith("sha256:0aeb5114")


def test_token_sequences_under_a_dataloader_with_workers(tmp_path):
    from torch.utils.data import DataLoader

    tokens = np.arange(6 * 4 + 1, dtype=np.uint16)
    ds = TokenSequences(write_tokens(tmp_path / "t.bin", tokens), seq_len=4, vocab_size=25)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    np.testing.assert_array_equal(x, tokens[:24].reshape(6, 4))
    np.testing.assert_array_equal(y, tokens[1:25].reshape(6, 4))
