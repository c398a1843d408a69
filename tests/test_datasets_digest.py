"""Input digests: the documented recipe, one digest per unit, independent of batching and of the
adapter that read the rows, and fast for array-backed data."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import xxhash
from dataset_helpers import write_cifar10, write_images, write_tokens
from test_datasets import UserDataset

from softtargets.datasets import (CIFAR, ImageFolder, InputDigest, TokenSequences, from_tensors,
                                  unit_input_digest, wrap)
from softtargets.errors import DatasetError

UNIT = 8  # rows per unit in these tests


def documented_digest(ids, inputs, labels) -> bytes:
    """docs/DATASETS.md 'Input digests', written out row by row with numpy and xxhash only."""
    h = xxhash.xxh3_128(b"softtargets.input-digest/v1\n" + f"{len(ids)}\n".encode())
    for i, x, y in zip(ids, inputs, labels):
        x, y = np.asarray(x), np.asarray(y)
        shape = "x".join(map(str, x.shape))
        header = f"{x.dtype.str} {shape} {'x'.join(map(str, y.shape))}\n"
        h.update(header.encode() + np.int64(i).tobytes() + x.astype(x.dtype.newbyteorder("<"))
                 .tobytes() + y.astype("<i8").tobytes())
    return h.digest()


def unit_digests(ds, unit: int = UNIT) -> list[bytes]:
    return [unit_input_digest(ds, slice(a, a + unit)) for a in range(0, len(ds), unit)]


def changed_units(a, b) -> list[int]:
    return [u for u, (x, y) in enumerate(zip(unit_digests(a), unit_digests(b))) if x != y]


def test_digest_follows_the_documented_recipe():
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) / 4
    y = np.array([1, 7], np.uint8)
    ds = from_tensors(x, y, num_classes=10, sample_ids=[5, 9])
    got = unit_input_digest(ds, slice(None))
    assert got == documented_digest([5, 9], x, y) and len(got) == 16
    # the recipe is frozen: stores record these digests
    assert got.hex() == "a4cc747149f4362676386921e83034c8"
    # per-position labels carry their shape in the header
    tokens = from_tensors(np.array([[3, 4]], np.uint16), np.array([[4, 5]]), num_classes=6)
    assert unit_input_digest(tokens, slice(None)) == documented_digest(
        [0], [np.array([3, 4], np.uint16)], [np.array([4, 5])])


def test_one_changed_pixel_or_label_changes_exactly_its_unit():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 1000, 40)
    base = from_tensors(x, y, num_classes=1000)
    pixel = x.copy()
    pixel[19, 2, 31, 0] ^= 1
    assert changed_units(base, from_tensors(pixel, y, num_classes=1000)) == [2]
    label = y.copy()
    label[32] = (label[32] + 1) % 1000
    assert changed_units(base, from_tensors(x, label, num_classes=1000)) == [4]
    ids = np.arange(40)
    ids[[3, 40 - 1]] = ids[[40 - 1, 3]]  # two rows' ids swapped: both units change
    assert changed_units(base, from_tensors(x, y, num_classes=1000, sample_ids=ids)) == [0, 4]
    as_float = from_tensors(x.astype(np.float32), y, num_classes=1000)  # same values, other dtype
    assert changed_units(base, as_float) == [0, 1, 2, 3, 4]


def test_one_changed_token_changes_exactly_its_sequences_unit(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 500, 4 * 8 * 6 + 1).astype(np.uint16)
    base = TokenSequences(write_tokens(tmp_path / "a.bin", tokens), seq_len=4, vocab_size=500)
    inner = tokens.copy()
    inner[4 * 21 + 2] = (inner[4 * 21 + 2] + 1) % 500  # inside sequence 21 (unit 2)
    edited = TokenSequences(write_tokens(tmp_path / "b.bin", inner), seq_len=4, vocab_size=500)
    assert changed_units(base, edited) == [2]
    edge = tokens.copy()
    edge[4 * 16] = (edge[4 * 16] + 1) % 500  # sequence 16's first input, sequence 15's last target
    edited = TokenSequences(write_tokens(tmp_path / "c.bin", edge), seq_len=4, vocab_size=500)
    assert changed_units(base, edited) == [1, 2]


def test_one_changed_image_pixel_changes_exactly_its_unit(tmp_path):
    from PIL import Image

    write_images(tmp_path / "imgs", {"a": 10, "b": 7})
    base = unit_digests(ImageFolder(tmp_path / "imgs"))
    path = tmp_path / "imgs" / "b" / "img0.png"  # row 10: unit 1
    x = np.asarray(Image.open(path)).copy()
    x[4, 5, 1] ^= 1
    Image.fromarray(x).save(path)
    after = unit_digests(ImageFolder(tmp_path / "imgs"))
    assert [u for u in range(3) if base[u] != after[u]] == [1]


def test_digest_does_not_depend_on_batching_or_the_adapter(tmp_path):
    cifar = CIFAR(write_cifar10(tmp_path, per_batch=5))
    x, y = cifar.read(slice(None))
    tensors = from_tensors(torch.from_numpy(x), torch.from_numpy(y), num_classes=10)
    user = wrap(UserDataset(torch.from_numpy(x), [int(v) for v in y]), num_classes=10)
    want = unit_input_digest(cifar, slice(3, 22))
    for ds in (cifar, tensors, user):
        for batch_rows in (1, 4, 7, None):
            assert unit_input_digest(ds, slice(3, 22), batch_rows=batch_rows) == want
    fed = InputDigest(19)  # stage 1 feeding the batches it reads, of any size
    for a, b in ((3, 4), (4, 15), (15, 22)):
        fed.update(np.arange(a, b), x[a:b], torch.from_numpy(y[a:b]))
    assert fed.digest() == want
    assert want == documented_digest(range(3, 22), x[3:22], y[3:22])


def test_token_digest_equals_the_same_arrays_in_memory(tmp_path):
    tokens = np.arange(3 * 6 + 1, dtype=np.uint32) * 1000
    ds = TokenSequences(write_tokens(tmp_path / "t.bin", tokens), seq_len=6, dtype="uint32",
                        vocab_size=20_000)
    x, y = ds.read(slice(None))
    same = from_tensors(x, y, num_classes=20_000)
    assert unit_input_digest(ds, slice(1, 3), batch_rows=1) == unit_input_digest(same,
                                                                                 slice(1, 3))


def test_digest_refusals():
    with pytest.raises(DatasetError, match="input digest needs a softtargets dataset, got "
                                           "UserDataset; wrap it with"):
        unit_input_digest(UserDataset(torch.zeros(2, 1), [0, 1]), slice(None))
    h = InputDigest(3)
    h.update([0, 1], np.zeros((2, 4)), [0, 0])
    with pytest.raises(DatasetError, match="a unit of 3 rows got 2"):
        h.digest()
    with pytest.raises(DatasetError, match="got 4 rows for a unit of 3"):
        h.update([2, 3], np.zeros((2, 4)), [0, 0])
    objects = from_tensors(np.array([[None]], dtype=object), np.array([0]))
    with pytest.raises(DatasetError, match="inputs of dtype object have no canonical bytes"):
        unit_input_digest(objects, slice(None))


def test_digest_is_vectorised_for_array_backed_data():
    rng = np.random.default_rng(2)
    ds = from_tensors(rng.integers(0, 256, (20_000, 3, 32, 32), dtype=np.uint8),
                      rng.integers(0, 50_000, 20_000), num_classes=50_000)  # 61 MB of inputs
    t0 = time.perf_counter()
    digests = [unit_input_digest(ds, slice(a, a + 5000)) for a in range(0, 20_000, 5000)]
    elapsed = time.perf_counter() - t0
    assert len(set(digests)) == 4
    # a copy and a hash per batch of rows: ~0.015 s here; a digest call per row takes ~0.6 s
    assert elapsed < 0.5, f"digests of 61 MB took {elapsed:.2f} s"
