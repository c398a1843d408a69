"""What a write session is told: where and how to write, and when a store may be resumed.

`WriteOptions` holds the session's keys of LogitsConfig for callers without one (the Python
API); `check_resumable` refuses to continue a store of another teacher, dataset or settings;
chunk and shard sizes of a new store. No torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from softtargets.format.codecs import balanced_rows, default_chunk_rows
from softtargets.config import LogitsConfig, to_dict
from softtargets.errors import ConfigError, ResumeMismatchError
from softtargets.format.remote import filesystem, is_remote, local_path
from softtargets.format.store import StoreMeta
from softtargets.write.targets import Targets

AUTO_SHARD_MIN_CHUNKS = 256  # above this many chunks a store is sharded automatically
SHARD_BYTES = 64 * 1024 * 1024  # target size of one shard object
# Config keys that may differ between a run and its resumption (they do not change the bytes).
RESUME_IGNORED = ("overwrite", "resume", "break_lock", "store", "teacher", "teachers")
# Teacher keys that must match to resume (device and paths may change between runs).
TEACHER_KEYS = ("checkpoint_sha256", "arch", "precision")
DATASET_KEYS = ("name", "split", "n", "limit", "fingerprint")  # reported first when they differ


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    """Where and how a session writes: the keys of LogitsConfig a session reads."""

    store: str
    overwrite: bool = False
    resume: bool = False
    break_lock: bool = False
    chunk_rows: int | None = None
    shard_rows: int | None = None
    compressor: str | None = None  # None: the store kind's default (Targets.default_compressor)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("resume continues an existing store and overwrite deletes it: "
                              "pass only one of them")
        if self.chunk_rows is not None and (isinstance(self.chunk_rows, bool)
                                            or not isinstance(self.chunk_rows, int)
                                            or self.chunk_rows <= 0):
            raise ConfigError(f"chunk_rows must be a positive integer, got {self.chunk_rows!r}")
        if self.shard_rows is not None and (isinstance(self.shard_rows, bool)
                                            or not isinstance(self.shard_rows, int)
                                            or self.shard_rows < 0):
            raise ConfigError(f"shard_rows must be an integer >= 0 (0: no sharding), got "
                              f"{self.shard_rows!r}")


def store_exists(url: str) -> bool:
    """Whether a Zarr group (zarr.json) is at `url`."""
    if not is_remote(url):
        return os.path.exists(os.path.join(local_path(url), "zarr.json"))
    fs, path = filesystem(url)
    fs.invalidate_cache()
    return bool(fs.exists(path.rstrip("/") + "/zarr.json"))


def effective_shard_rows(cfg: Any, *, n: int, num_classes: int) -> int | None:
    """cfg.shard_rows, or automatic shards of ~SHARD_BYTES when a store has many chunks."""
    chunk_rows = cfg.chunk_rows or default_chunk_rows(n, num_classes)
    if cfg.shard_rows is not None:
        return cfg.shard_rows or None  # 0 turns sharding off
    if math.ceil(n / chunk_rows) <= AUTO_SHARD_MIN_CHUNKS:
        return None
    per_shard = max(1, SHARD_BYTES // (chunk_rows * num_classes * 2))
    return chunk_rows * per_shard


def session_chunk_rows(targets: Targets, requested: int | None, *, n: int, num_classes: int,
                       per_sample: int) -> int:
    """Rows per chunk: `requested`, or the kind's default; with L rows per sample, a multiple
    of L, so that each chunk holds whole samples (their input digests do not overlap)."""
    if requested is not None:
        if requested % per_sample:
            raise ConfigError(f"chunk_rows must be a multiple of the {per_sample} positions per "
                              f"sample (whole sequences per chunk), got {requested}; e.g. "
                              f"{max(1, requested // per_sample) * per_sample}")
        return requested
    # rebalanced in whole samples: rounding the kind's default down to a multiple of L alone
    # could leave a last chunk of a few samples, padded to a full chunk on disk
    return balanced_rows(n, targets.chunk_rows(n, num_classes), per_sample)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Settings that change the bytes; keys added to LogitsConfig later take their defaults."""
    defaults = to_dict(LogitsConfig())
    out = {k: v for k, v in {**defaults, **config}.items() if k not in RESUME_IGNORED}
    if isinstance(out.get("data"), dict):
        data = {**defaults["data"], **out["data"]}
        out["data"] = {k: v for k, v in data.items() if k != "data_dir"}
    return out


def check_resumable(meta: StoreMeta, url: str, *, config: dict[str, Any],
                    dataset: dict[str, Any], teacher: dict[str, Any]) -> None:
    """Refuse to resume a store written with another teacher, dataset or settings."""
    def refuse(what: str, stored: Any, now: Any) -> None:
        raise ResumeMismatchError(
            f"cannot resume store {url!r}: its {what} is {stored!r} but this run's is {now!r}; "
            "rerun with the original teacher, dataset and settings, or pass --overwrite "
            "to start again")
    for key in TEACHER_KEYS:
        if meta.teacher.get(key) != teacher.get(key):
            refuse(f"teacher {key}", meta.teacher.get(key), teacher.get(key))
    others = sorted((set(meta.dataset) | set(dataset)) - set(DATASET_KEYS))
    for key in (*DATASET_KEYS, *others):
        if meta.dataset.get(key) != dataset.get(key):
            refuse(f"dataset {key}", meta.dataset.get(key), dataset.get(key))
    stored, now = _comparable(meta.config), _comparable(config)
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            refuse(f"setting {key}", stored.get(key), now.get(key))
