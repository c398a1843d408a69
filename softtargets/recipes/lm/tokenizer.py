"""A byte-level BPE trained locally with Hugging Face `tokenizers` (the optional `lm` extra).

Byte level: every byte string has a tokenization, so no text is ever out of vocabulary; one
special token, END_OF_TEXT, separates files in the token stream. Training is deterministic for
the same files in the same order and the same vocabulary size (tests/test_lm_corpus.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from softtargets.datasets.tokenizer import TokenizerIdentity
from softtargets.errors import ConfigError

END_OF_TEXT = "<|endoftext|>"
MIN_VOCAB = 257  # the 256 bytes and END_OF_TEXT


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ConfigError("the LM recipe needs Hugging Face tokenizers: pip install "
                          "'softtargets[lm]'") from None
    return tokenizers


def train_bpe(texts: Iterable[str], *, vocab_size: int, out: str | Path) -> Path:
    """Train a byte-level BPE of `vocab_size` tokens on `texts` and save it as tokenizer.json
    at `out`; returns `out`."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or vocab_size < MIN_VOCAB:
        raise ConfigError(f"vocab_size must be an integer >= {MIN_VOCAB} (256 bytes and "
                          f"{END_OF_TEXT}), got {vocab_size!r}")
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT],
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False)
    tok.train_from_iterator(texts, trainer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def load_tokenizer(path: str | Path) -> Any:
    """A saved tokenizer.json (ours or the user's) as a `tokenizers.Tokenizer`."""
    tk = _tokenizers()
    if not Path(path).is_file():
        raise ConfigError(f"tokenizer file {str(path)!r} not found; pass a Hugging Face "
                          "tokenizer.json or let lm-corpus train one")
    try:
        return tk.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ConfigError(f"{path}: not a Hugging Face tokenizer.json "
                          f"({str(e).splitlines()[0]})") from None


def end_of_text_id(tokenizer: Any) -> int | None:
    """The id of END_OF_TEXT in `tokenizer`, or None when it has no such token."""
    return tokenizer.token_to_id(END_OF_TEXT)


def tokenizer_identity(path: str | Path) -> TokenizerIdentity:
    """The identity (vocabulary, merges, special tokens, size) of a tokenizer.json."""
    return TokenizerIdentity.of_tokenizer_json(path)
