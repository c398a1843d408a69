"""The tokenizer part of a token store's dataset identity (docs/FORMAT.md, "Tokenizer identity").

A store computed on token ids records its tokenizer under dataset["tokenizer"] as
{"vocab_size", "vocab_sha256", "merges_sha256", "special_tokens"}
(softtargets.datasets.tokenizer.TokenizerIdentity makes it); a student's data whose tokenizer
differs is refused, naming the first part that differs.
"""

from __future__ import annotations

from typing import Any


def tokenizer_difference(mine: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """What differs between two identities' JSON objects (the first difference), or None."""
    if mine.get("vocab_size") != theirs.get("vocab_size"):
        return f"vocab size {mine.get('vocab_size')} vs {theirs.get('vocab_size')}"
    if mine.get("special_tokens") != theirs.get("special_tokens"):
        return (f"special tokens differ ({_specials(mine)} vs {_specials(theirs)})")
    if mine.get("vocab_sha256") != theirs.get("vocab_sha256"):
        return "vocabularies differ (same size, other tokens or ids)"
    if mine.get("merges_sha256") != theirs.get("merges_sha256"):
        return "merges differ"
    return None


def _specials(d: dict[str, Any]) -> str:
    tokens = d.get("special_tokens") or []
    return ", ".join(f"{t}={i}" for i, t in tokens) or "none"
