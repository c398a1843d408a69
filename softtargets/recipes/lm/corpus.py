"""The LM corpus: text files split by whole files, a tokenizer, and two token files.

With no sources the corpus is the Python standard library of the running interpreter (its `.py`
files, test suites left out), so nothing is downloaded. A file goes to validation when the
xxh3-64 hash of its relative path falls below `val_fraction` (whole files, and the split of a
file does not change when others are added). The tokenizer is a byte-level BPE trained on the
training files only, or the user's tokenizer.json. Each file's tokens are followed by
END_OF_TEXT, and the result is written as a flat token file per split (TokenSequences' format)
with the tokenizer identity beside it (`<file>.tokenizer.json`):

    <out>/corpus.json  tokenizer.json  train.bin (+ .tokenizer.json)  val.bin (+ .tokenizer.json)
"""

from __future__ import annotations

import dataclasses
import json
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from softtargets.atomic import replacing, write_json
from softtargets.datasets.tokenizer import TokenizerIdentity, write_sidecar
from softtargets.datasets.tokens import TokenSequences
from softtargets.errors import ConfigError, DatasetError, StoreExistsError
from softtargets.recipes.lm.tokenizer import (END_OF_TEXT, end_of_text_id, load_tokenizer,
                                              tokenizer_identity, train_bpe)

SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})
MANIFEST = "corpus.json"
SPLITS = ("train", "val")
ENCODE_BATCH = 64  # files tokenized per call: bounded memory


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Where the text comes from, how it is split, and the tokenizer."""

    sources: tuple[str, ...] = ()  # text files or folders; () = the standard library
    suffix: str = ".py"  # files of a folder that are read
    val_fraction: float = 0.05
    vocab_size: int = 2048
    tokenizer: str | None = None  # a tokenizer.json to use instead of training one
    max_bytes: int | None = None  # at most this much text (files in path order)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError(f"max_bytes must be >= 1, got {self.max_bytes!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON object; CorpusConfig.from_json gives the config back."""
        return {**dataclasses.asdict(self), "sources": list(self.sources)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CorpusConfig:
        return cls(**{**d, "sources": tuple(d["sources"])})


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A built corpus: its folder, the tokenizer identity and the tokens of each split."""

    root: Path
    identity: TokenizerIdentity
    tokens: dict[str, int]  # split -> tokens in its file
    files: dict[str, int]  # split -> text files in it

    def token_file(self, split: str) -> Path:
        """The flat token file of `split` ("train" or "val")."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
        return self.root / f"{split}.bin"

    @property
    def tokenizer_file(self) -> Path:
        return self.root / "tokenizer.json"

    def sequences(self, split: str, *, seq_len: int,
                  limit: int | None = None) -> TokenSequences:
        """`split` as TokenSequences of seq_len tokens (the first `limit` only), with the
        corpus's tokenizer identity."""
        return TokenSequences(self.token_file(split), seq_len=seq_len,
                              dtype=token_dtype(self.identity.vocab_size), split=split,
                              name=f"lm-{split}", tokenizer=self.identity, limit=limit)


def token_dtype(vocab_size: int) -> str:
    """uint16 when every id fits, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def stdlib_root() -> Path:
    """The standard library of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(sources: tuple[str, ...], *, suffix: str) -> list[tuple[str, Path]]:
    """(relative name, path) of every text file, sorted by name; folders are searched for
    `suffix` files, test suites and site-packages left out."""
    found: dict[str, Path] = {}
    for src in sources or (str(stdlib_root()),):
        root = Path(src)
        if root.is_file():
            found[root.name] = root
        elif root.is_dir():
            for path in root.rglob(f"*{suffix}"):
                rel = path.relative_to(root)
                if path.is_file() and not SKIP_DIRS.intersection(rel.parts[:-1]):
                    found[f"{root.name}/{rel.as_posix()}"] = path
        else:
            raise DatasetError(f"corpus source {src!r} is neither a file nor a folder; pass "
                               "text files or folders of them")
    if not found:
        raise DatasetError(f"no {suffix} files in {list(sources)}; pass other sources or "
                           "suffix")
    return sorted(found.items())


def is_validation(name: str, val_fraction: float) -> bool:
    """Whether the file `name` is held out: xxh3-64 of its name below val_fraction."""
    return xxhash.xxh3_64_intdigest(name.encode()) < val_fraction * 2.0 ** 64


def split_files(files: list[tuple[str, Path]], *, val_fraction: float,
                max_bytes: int | None = None) -> dict[str, list[tuple[str, Path]]]:
    """The files of each split (whole files); at least one in each."""
    if max_bytes is not None:
        kept, total = [], 0
        for name, path in files:
            if total >= max_bytes:
                break
            kept.append((name, path))
            total += path.stat().st_size
        files = kept
    val = [f for f in files if is_validation(f[0], val_fraction)]
    if not val and len(files) > 1:  # a tiny corpus: hold out the file hashed lowest
        val = [min(files, key=lambda f: xxhash.xxh3_64_intdigest(f[0].encode()))]
    train = [f for f in files if f not in val]
    if not train or not val:
        raise DatasetError(f"{len(files)} file(s) cannot be split into training and "
                           "validation files; give at least two files")
    return {"train": train, "val": val}


def _read(path: Path) -> str:
    # errors="replace": a few files are not UTF-8; the same bytes always give the same text
    return path.read_text(encoding="utf-8", errors="replace")


def _write_tokens(tokenizer: Any, files: list[tuple[str, Path]], out: Path,
                  dtype: str, eot: int) -> int:
    """Tokenize `files` into the flat token file `out`; returns the token count."""
    count = 0
    with replacing(out) as tmp, open(tmp, "wb") as f:
        for a in range(0, len(files), ENCODE_BATCH):
            batch = [_read(p) for _, p in files[a:a + ENCODE_BATCH]]
            for enc in tokenizer.encode_batch(batch):
                ids = np.asarray([*enc.ids, eot], dtype=np.dtype(dtype).newbyteorder("<"))
                f.write(ids.tobytes())
                count += ids.size
    return count


def build_corpus(out: str | Path, *, config: CorpusConfig = CorpusConfig(),
                 overwrite: bool = False) -> Corpus:
    """Split the text files by whole files, train (or take) the tokenizer, and write the
    token files of both splits under `out`; returns the Corpus."""
    root = Path(out)
    if (root / MANIFEST).exists() and not overwrite:
        raise StoreExistsError(f"corpus {str(root)!r} exists; pass overwrite=True "
                               "(--overwrite) to rebuild it, or open it with open_corpus")
    root.mkdir(parents=True, exist_ok=True)
    splits = split_files(list_files(config.sources, suffix=config.suffix),
                         val_fraction=config.val_fraction, max_bytes=config.max_bytes)
    tok_path = root / "tokenizer.json"
    if config.tokenizer is None:
        train_bpe((_read(p) for _, p in splits["train"]), vocab_size=config.vocab_size,
                  out=tok_path)
    else:
        tok_path.write_bytes(Path(config.tokenizer).read_bytes())
    tokenizer, identity = load_tokenizer(tok_path), tokenizer_identity(tok_path)
    eot = end_of_text_id(tokenizer)
    if eot is None:
        raise ConfigError(f"tokenizer {config.tokenizer!r} has no {END_OF_TEXT} token to "
                          "separate files; add it as a special token")
    dtype = token_dtype(identity.vocab_size)
    tokens = {}
    for split in SPLITS:
        path = root / f"{split}.bin"
        tokens[split] = _write_tokens(tokenizer, splits[split], path, dtype, eot)
        write_sidecar(path, identity)
    manifest = {"config": config.to_json(), "tokenizer": identity.to_json(), "dtype": dtype,
                "tokens": tokens, "files": {s: [n for n, _ in splits[s]] for s in SPLITS}}
    write_json(root / MANIFEST, manifest, indent=1)
    return open_corpus(root)


def open_corpus(root: str | Path) -> Corpus:
    """A corpus built by build_corpus (its corpus.json)."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"no corpus at {str(root)!r} ({MANIFEST} missing); build it with "
                           "`softtargets lm-corpus` (make lm-corpus)") from None
    return Corpus(root=root, identity=TokenizerIdentity.from_json(manifest["tokenizer"]),
                  tokens=dict(manifest["tokens"]),
                  files={s: len(v) for s, v in manifest["files"].items()})
