"""Tokenizer identity: what a token store records about the tokenizer that made its token ids.

A store of per-token targets is only meaningful to a student that reads its text with the same
tokenizer: class c of the store is token id c of that tokenizer. The identity is

    vocab_size        tokens in the vocabulary, special tokens included
    vocab_sha256      sha256 of the vocabulary, canonical JSON [[token, id], ...] sorted by id
    merges_sha256     sha256 of the BPE merges, canonical JSON list in merge order ("" if none)
    special_tokens    the special tokens, as (id, text) pairs sorted by id

computed from a Hugging Face `tokenizer.json` (json and hashlib only, no `tokenizers` import).
It travels with a token file as a sidecar `<file>.tokenizer.json` that TokenSequences reads, and
into the store's dataset identity under "tokenizer" (docs/FORMAT.md, "Tokenizer identity").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from softtargets.atomic import write_json
from softtargets.errors import DatasetError
from softtargets.format.tokenizer import tokenizer_difference

SIDECAR_SUFFIX = ".tokenizer.json"


def _sha256(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class TokenizerIdentity:
    """The identity of a tokenizer (vocabulary, merges, special tokens, vocabulary size)."""

    vocab_size: int
    vocab_sha256: str
    merges_sha256: str
    special_tokens: tuple[tuple[int, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON object; `from_json` gives the identity back."""
        return {"vocab_size": self.vocab_size, "vocab_sha256": self.vocab_sha256,
                "merges_sha256": self.merges_sha256,
                "special_tokens": [list(t) for t in self.special_tokens]}

    @classmethod
    def from_json(cls, d: Any, *, where: str = "tokenizer identity") -> TokenizerIdentity:
        """The identity of a JSON object written by `to_json`."""
        keys = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) != keys:
            raise DatasetError(f"{where}: a tokenizer identity is a JSON object with keys "
                               f"{sorted(keys)}, got {d!r}")
        special = tuple((int(i), str(t)) for i, t in d["special_tokens"])
        return cls(vocab_size=int(d["vocab_size"]), vocab_sha256=str(d["vocab_sha256"]),
                   merges_sha256=str(d["merges_sha256"]), special_tokens=special)

    @classmethod
    def of_tokenizer_json(cls, path: str | Path) -> TokenizerIdentity:
        """The identity of a Hugging Face `tokenizer.json` file."""
        path = Path(path)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
            model = spec["model"]
            vocab = model["vocab"]
        except FileNotFoundError:
            raise DatasetError(f"tokenizer file {path} not found; pass the tokenizer.json the "
                               "tokens were made with") from None
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{path}: not a Hugging Face tokenizer.json with a model "
                               f"vocabulary ({type(e).__name__}: {e})") from None
        added = {int(t["id"]): str(t["content"]) for t in spec.get("added_tokens") or []}
        merged = {**{str(tok): int(i) for tok, i in vocab.items()},
                  **{c: i for i, c in added.items()}}
        by_id = sorted(merged.items(), key=lambda kv: (kv[1], kv[0]))  # [(token, id)]
        merges = model.get("merges") or []
        special = tuple(sorted((int(t["id"]), str(t["content"]))
                               for t in spec.get("added_tokens") or [] if t.get("special")))
        return cls(vocab_size=len({i for _, i in by_id}), vocab_sha256=_sha256(by_id),
                   merges_sha256=_sha256(merges) if merges else "", special_tokens=special)

    def difference(self, other: TokenizerIdentity) -> str | None:
        """None if equal, else what differs, e.g. "vocab size 8192 vs 8256" or "merges
        differ" (self first)."""
        return tokenizer_difference(self.to_json(), other.to_json())


def sidecar_path(token_file: str | Path) -> Path:
    """Where a token file's tokenizer identity is kept: `<file>.tokenizer.json`."""
    token_file = Path(token_file)
    return token_file.with_name(token_file.name + SIDECAR_SUFFIX)


def write_sidecar(token_file: str | Path, identity: TokenizerIdentity) -> Path:
    """Record `identity` beside `token_file`; returns the sidecar's path."""
    path = sidecar_path(token_file)
    write_json(path, identity.to_json(), indent=1)
    return path


def read_sidecar(token_file: str | Path) -> TokenizerIdentity | None:
    """The identity recorded beside `token_file`, or None when there is no sidecar."""
    path = sidecar_path(token_file)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DatasetError(f"{path}: not JSON ({e}); rewrite it with "
                           "softtargets.datasets.tokenizer.write_sidecar") from None
    return TokenizerIdentity.from_json(d, where=str(path))
