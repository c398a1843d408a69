"""A store's dataset identity against the student's data: name, split, held-out rows, size,
fingerprint and, for token stores, the tokenizer (docs/FORMAT.md "Fingerprint", "Tokenizer
identity"). numpy-free, torch-free: plain dicts."""

from __future__ import annotations

from typing import Any

from softtargets.errors import StoreMismatchError
from softtargets.format.tokenizer import tokenizer_difference


def check_dataset(meta: Any, url: str, identity: dict[str, Any]) -> None:
    """Refuse to pair a store (dense or sparse) with data other than the data it was computed on."""
    mine = meta.dataset
    for key in ("name", "split", "val_rows", "n", "fingerprint"):
        if _identity_value(mine, key) != _identity_value(identity, key):
            fix = (f"pass the store's --val-rows {_identity_value(mine, key)} or rewrite it with "
                   f"teacher-logits --val-rows {_identity_value(identity, key)}"
                   if key == "val_rows" else
                   "recompute the store on this data or pass the data it was made from")
            raise StoreMismatchError(f"store {url!r} was computed on {_describe(mine)} but is used "
                                     f"with {_describe(identity)}: {key} differs; {fix}")
    _check_tokenizer(mine.get("tokenizer"), identity.get("tokenizer"), url)


def _check_tokenizer(mine: Any, theirs: Any, url: str) -> None:
    """Refuse token data made with another tokenizer than the store's, naming what differs."""
    if mine is None and theirs is None:
        return
    if mine is None or theirs is None:
        which = "the store records no tokenizer" if mine is None else "the data has none"
        raise StoreMismatchError(f"store {url!r}: tokenizer identity missing ({which}); give "
                                 "both the tokenizer (TokenSequences(tokenizer=...) or the "
                                 "token file's .tokenizer.json) or neither")
    diff = tokenizer_difference(mine, theirs)
    if diff is not None:
        raise StoreMismatchError(f"store {url!r} was computed with another tokenizer than the "
                                 f"data's: {diff} (store vs data); tokenize the student's text "
                                 "with the store's tokenizer or recompute the store")


def _identity_value(identity: dict[str, Any], key: str) -> Any:
    # stores written before validation splits existed have no val_rows: none were held out
    return int(identity.get(key) or 0) if key == "val_rows" else identity.get(key)


def _describe(identity: dict[str, Any]) -> str:
    return (f"{identity.get('name')}/{identity.get('split')} (n={identity.get('n')}, "
            f"val_rows={_identity_value(identity, 'val_rows')}, "
            f"fingerprint {identity.get('fingerprint')})")
