"""Token sequences from a flat token file (nanoGPT `train.bin` style), memory-mapped.

The file is a flat array of uint16 or uint32 token ids, little endian, no header. It is cut into
N = (T - 1) // seq_len non-overlapping sequences of seq_len tokens (T tokens in the file; the
last, partial sequence is dropped). Sequence i is

    input   tokens[i * L     : (i + 1) * L]        (L = seq_len)
    target  tokens[i * L + 1 : (i + 1) * L + 1]    the next token of each input position

so position p's target is the token after input position p: target[i, p] == input[i, p + 1]
for p < L - 1, and target[i, L - 1] is the first input token of sequence i + 1 (which is why
the file needs one token more than N * L). A per-token store has one row per (sequence i,
position p), p in [0, L); row (i, p) holds the teacher's logits for predicting target[i, p]
from input[i, :p + 1]. The file is read through np.memmap a unit at a time, never whole.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.datasets.base import BaseDataset, check_labels
from softtargets.datasets.tokenizer import TokenizerIdentity, read_sidecar
from softtargets.errors import DatasetError, DatasetNotFoundError

DTYPES = ("uint16", "uint32")
SCAN_TOKENS = 1 << 24  # tokens per step of the vocab_size scan: bounded memory


class TokenSequences(BaseDataset):
    """Sequences of `seq_len` tokens: item i = (input (L,), next-token targets (L,)); `limit`
    keeps the first `limit` sequences only."""

    _label_hint = {"what": "token", "fix": "pass the right vocab_size (or dtype)"}

    def __init__(self, path: str | Path, *, seq_len: int, dtype: str = "uint16",
                 vocab_size: int | None = None, name: str | None = None, split: str = "train",
                 dataset_id: str | None = None,
                 tokenizer: TokenizerIdentity | None = None,
                 limit: int | None = None) -> None:
        path = Path(path)
        self._set_common(name=name or path.name, split=split, dataset_id=dataset_id)
        if str(dtype) not in DTYPES and dtype not in (np.uint16, np.uint32):
            raise DatasetError(f"{path}: token dtype must be one of {list(DTYPES)}, got "
                               f"{dtype!r}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) \
                or seq_len < 1:
            raise DatasetError(f"{path}: seq_len must be a positive integer, got {seq_len!r}")
        self.path, self.dtype, self.seq_len = path, np.dtype(dtype).newbyteorder("<"), int(seq_len)
        self.positions = self.seq_len
        self.tokens = self._count_tokens()
        self._n = (self.tokens - 1) // self.seq_len
        if self._n < 1:
            raise DatasetError(f"{path}: {self.tokens} tokens make no sequence of seq_len "
                               f"{self.seq_len} (needs at least {self.seq_len + 1}); use a "
                               "smaller seq_len")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
                raise DatasetError(f"{path}: limit must be a positive number of sequences, "
                                   f"got {limit!r}")
            self._n = min(self._n, int(limit))
        self._mm: np.memmap | None = None
        self.tokenizer = self._tokenizer(tokenizer, vocab_size)
        self._num_classes = self._vocab(vocab_size if self.tokenizer is None
                                        else self.tokenizer.vocab_size)

    def _tokenizer(self, tokenizer: TokenizerIdentity | None,
                   vocab_size: int | None) -> TokenizerIdentity | None:
        """The given tokenizer identity, else the sidecar's; its size must be vocab_size."""
        if tokenizer is not None and not isinstance(tokenizer, TokenizerIdentity):
            raise DatasetError(f"{self.path}: tokenizer must be a TokenizerIdentity (e.g. "
                               "TokenizerIdentity.of_tokenizer_json(path)), got "
                               f"{type(tokenizer).__name__}")
        tokenizer = tokenizer or read_sidecar(self.path)
        if tokenizer is not None and vocab_size is not None \
                and vocab_size != tokenizer.vocab_size:
            raise DatasetError(f"{self.path}: vocab_size={vocab_size} but the tokenizer has "
                               f"{tokenizer.vocab_size} tokens; drop vocab_size (the "
                               "tokenizer's is used) or pass the right tokenizer")
        return tokenizer

    def _count_tokens(self) -> int:
        if not self.path.is_file():
            raise DatasetNotFoundError(f"token file {self.path} not found")
        size = self.path.stat().st_size
        if size % self.dtype.itemsize:
            raise DatasetError(f"{self.path}: {size} bytes is not a whole number of "
                               f"{self.dtype.name} tokens; is dtype right?")
        return size // self.dtype.itemsize

    def _vocab(self, vocab_size: int | None) -> int:
        """vocab_size as given, else the largest token + 1, scanned in bounded steps."""
        if vocab_size is not None:
            if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
                    or vocab_size < 1:
                raise DatasetError(f"{self.path}: vocab_size must be a positive integer, got "
                                   f"{vocab_size!r}")
            return int(vocab_size)
        used = self._n * self.seq_len + 1
        top = max(int(self.memmap[a:a + SCAN_TOKENS].max()) for a in range(0, used, SCAN_TOKENS))
        warnings.warn(f"{self.path}: vocab_size not given, taken as the largest token + 1 = "
                      f"{top + 1} (a full pass over the file, and another split may differ); "
                      "pass vocab_size=", stacklevel=3)
        return top + 1

    @property
    def memmap(self) -> np.memmap:
        """The token file, memory-mapped read-only (opened again after unpickling)."""
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.tokens,))
        return self._mm

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the path, not a copy of the file's pages
        return {**self.__dict__, "_mm": None}

    def __len__(self) -> int:
        return self._n

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs (B, L), next tokens (B, L) int64) of sequences `rows` (B,) in that order:
        one gather of their (B, L + 1) token windows from the memory map."""
        rows = np.asarray(rows, dtype=np.int64)
        if not rows.size or rows.min() < 0 or rows.max() >= len(self):
            return super().take(rows)  # refuses rows out of range in one line
        L = self.seq_len
        tokens = np.asarray(self.memmap[rows[:, None] * L + np.arange(L + 1)])  # (B, L + 1)
        tokens = tokens.astype(self.dtype.newbyteorder("="), copy=False)
        if tokens.max() >= self.num_classes:
            return super().take(rows)  # names the row and position of the token
        return np.ascontiguousarray(tokens[:, :-1]), tokens[:, 1:].astype(np.int64)

    def _window(self, start: int, stop: int, shift: int) -> np.ndarray:
        """(R, L) tokens of sequences start..stop-1, shifted by `shift` tokens."""
        L = self.seq_len
        flat = self.memmap[start * L + shift:stop * L + shift]
        return np.array(flat, dtype=self.dtype.newbyteorder("=")).reshape(stop - start, L)

    def _inputs(self, start: int, stop: int) -> np.ndarray:
        x = self._window(start, stop, 0)  # (R, L) token ids
        check_labels(x, self.num_classes, first_row=start, name=self.name, **self._label_hint)
        return x

    def _labels(self, start: int, stop: int) -> np.ndarray:
        return self._window(start, stop, 1)  # (R, L) next tokens

    def _identity(self) -> dict[str, Any]:
        # no fingerprint: it would take a pass over the file; unit input digests align it
        ident = {"tokens": self.tokens, "seq_len": self.seq_len, "dtype": self.dtype.name,
                 "vocab_size": self.num_classes}
        if self.tokenizer is not None:
            ident["tokenizer"] = self.tokenizer.to_json()
        return ident
