"""Chunk sizing (softtargets/format/codecs.py): no store pads its last chunk to a full one."""

from pathlib import Path

import numpy as np
import pytest

from softtargets.format.codecs import balanced_rows, default_chunk_rows
from softtargets.write import LogitWriter, TopK


@pytest.mark.parametrize("n, cap, multiple, rows", [
    (1049, 1048, 1, 525),        # 2 chunks of 525 (old: 1048 + 1 padded to 1048)
    (60_000, 104_857, 1, 60_000),  # one chunk of exactly the store
    (10**6, 1048, 1, 1048),      # 955 chunks; the last holds 952 rows
    (7, 1, 1, 1),
    (104, 30, 8, 24),            # cap 30 -> 24 (3 samples of 8); 13 samples in 5 chunks of 3
    (56, 52, 4, 28),             # 14 samples of 4 in 2 chunks of 7 (old: 13 + 1 padded to 13)
    (3, 1, 4, 4),                # at least one whole sample
])
def test_balanced_rows_spreads_rows_evenly_under_the_cap(n, cap, multiple, rows):
    assert balanced_rows(n, cap, multiple) == rows
    assert rows % multiple == 0 and rows <= max(cap - cap % multiple, multiple)


def test_default_chunk_rows_is_at_most_two_mib_and_balanced():
    assert default_chunk_rows(60_000, 10) == 60_000
    assert default_chunk_rows(1049, 1000) == 525  # 2 MiB / 2000 B = 1,048 rows at most


def chunk_bytes(store: Path, array: str) -> int:
    return sum(f.stat().st_size for f in (store / array / "c").rglob("*") if f.is_file())


def test_an_uncompressed_store_just_over_one_chunk_is_not_padded(tmp_path):
    n, c = 1049, 1000
    logits = np.random.default_rng(0).normal(size=(n, c)).astype(np.float32)
    with LogitWriter(tmp_path / "s.zarr", num_classes=c, n=n, compressor="none",
                     dataset_identity={"name": "synthetic", "split": "train", "n": n}) as w:
        w.append(np.arange(n), logits)
    assert w.meta.chunk_rows == 525
    # 2 chunks of 525 x 1000 float16 + a 4-byte crc32c each: one padded row (2,000 B), not a
    # second full chunk (before: 4,192,008 B, 2.0x the 2,098,000 raw bytes)
    assert chunk_bytes(tmp_path / "s.zarr", "logits") == 2 * (525 * c * 2 + 4)


def test_per_position_chunks_are_balanced_in_whole_sequences(tmp_path):
    # C = K = 20,000: a top-k chunk of 2 MiB holds 52 rows, 13 sequences of L = 4
    n, L, c = 14, 4, 20_000
    logits = np.random.default_rng(0).normal(size=(n, L, c)).astype(np.float32)
    with LogitWriter(tmp_path / "t.zarr", num_classes=c, n=n, positions=L,
                     targets=TopK(c), dataset_identity={"name": "tokens", "split": "train",
                                                        "n": n}) as w:
        w.append(np.arange(n), logits)
    assert w.meta.chunk_rows == 28  # 2 chunks of 7 sequences (before: 52 + 4 rows)
