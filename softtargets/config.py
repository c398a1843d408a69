"""Frozen configuration dataclasses that round-trip through JSON.

They are written into store attributes and checkpoints, so a run can be read back and repeated.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, TypeVar

from softtargets.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build `cls` from `data`, refusing unknown keys; lists become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; allowed: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


# The default --data-dir: the only folder that may fall back to a system-wide copy of a dataset
# (data.search_dirs); a folder the user names is used alone.
DEFAULT_DATA_DIR = "data"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data: a named IDX dataset, a split, optionally only its first `limit` rows.

    val_rows > 0 holds out the last val_rows rows of the train split for validation: the split is
    then the rows before them (data.load_split), the held-out rows data.load_validation.
    """

    dataset: str = "fashion-mnist"
    split: str = "train"
    data_dir: str = DEFAULT_DATA_DIR
    limit: int | None = None
    val_rows: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be a positive number of rows, got {self.limit}")
        if self.val_rows < 0:
            raise ConfigError(f"--val-rows must be >= 0 (0: no validation rows), got "
                              f"{self.val_rows}")
        if self.val_rows and self.split != "train":
            raise ConfigError(f"--val-rows {self.val_rows} holds out rows of the train split; "
                              f"drop it for the {self.split!r} split")

    def for_test(self) -> DataConfig:
        """The whole test split of the same dataset (what every model is evaluated on)."""
        return dataclasses.replace(self, split="test", limit=None, val_rows=0)


@dataclasses.dataclass(frozen=True)
class TeacherTrainConfig:
    """Training of the paper's teacher: dropout, input jitter, max-norm constraint."""

    data: DataConfig = DataConfig()
    arch: str = "mlp"  # or "cnn" (hidden = (c1, c2, fc)); models.ModelSpec
    hidden: tuple[int, ...] = (1200, 1200)
    dropout: float = 0.3
    input_dropout: float = 0.0
    jitter: int = 2
    max_norm: float = 3.5
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_common(self.epochs, self.batch_size, self.lr)
        for name in ("dropout", "input_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.jitter < 0:
            raise ConfigError(f"jitter must be >= 0 pixels, got {self.jitter}")
        if self.max_norm < 0:
            raise ConfigError(f"max_norm must be >= 0 (0 disables it), got {self.max_norm}")
        check_arch(self.arch)


@dataclasses.dataclass(frozen=True)
class StudentTrainConfig:
    """Training of a student from a logit store (or from hard labels only when store is None)."""

    data: DataConfig = DataConfig()
    store: str | None = None
    arch: str = "mlp"  # or "cnn" (hidden = (c1, c2, fc)); models.ModelSpec
    hidden: tuple[int, ...] = (800, 800)
    temperature: float = 20.0
    alpha: float = 0.9
    clip_grad: float = 5.0
    tail: str = "rest"  # sparse top-k stores only: "rest" bucket or "renormalise" (sparse.py)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0
    threads: int | None = None
    combine: str | None = None  # ensemble stores: arithmetic|geometric (None: the store's default)
    loader: str = "auto"  # auto: stream the store when its logits exceed 1 GiB, else load it
    loader_workers: int = 0  # DataLoader worker processes of the streaming loader
    mixup: float = 0.0  # Beta(a, a) mixup of inputs and stored targets; 0: off
    loss: str = "kl"  # the soft term: "kl" at T, or "mse" of logits (read.distill.LOSSES)

    def __post_init__(self) -> None:
        _check_common(self.epochs, self.batch_size, self.lr)
        if self.loss not in ("kl", "mse"):
            raise ConfigError(f"loss must be 'kl' (KL at T) or 'mse' (mean squared error of "
                              f"the logits), got {self.loss!r}")
        if self.loader not in ("auto", "memory", "stream"):
            raise ConfigError(f"loader must be 'auto', 'memory' or 'stream', got {self.loader!r}")
        if self.loader_workers < 0:
            raise ConfigError(f"loader_workers must be >= 0, got {self.loader_workers}")
        check_arch(self.arch)
        if self.mixup < 0:
            raise ConfigError(f"mixup must be >= 0 (0 disables; e.g. 0.2), got {self.mixup}")
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        if self.combine is not None and self.combine not in COMBINE_RULES:
            raise ConfigError(f"unknown combination rule {self.combine!r}; allowed: "
                              f"{list(COMBINE_RULES)}")
        if self.clip_grad < 0:
            raise ConfigError(f"clip_grad must be >= 0 (0 disables), got {self.clip_grad}")
        if self.tail not in ("rest", "renormalise"):
            raise ConfigError(f"tail must be 'rest' or 'renormalise', got {self.tail!r}")


@dataclasses.dataclass(frozen=True)
class LogitsConfig:
    """Stage 1: run a teacher over a dataset split and write a logit store."""

    data: DataConfig = DataConfig()
    teacher: str = "runs/fashion-mnist/teacher.pt"
    store: str = "runs/fashion-mnist/teacher-logits.zarr"
    batch_size: int = 1024
    chunk_rows: int | None = None
    compressor: str | None = None  # None: the store kind's default (dense none, sparse zstd)
    overwrite: bool = False
    device: str = "auto"
    # resume an interrupted run, break a dead writer's lease, shard rows (None: auto)
    resume: bool = False
    break_lock: bool = False
    shard_rows: int | None = None
    # sparse stores (docs/FORMAT.md "Sparse stores"): at most one of topk / sample
    topk: int | None = None
    sample: int | None = None
    temperatures: tuple[float, ...] = (1.0,)
    sample_seed: int = 0
    sample_temperature: float = 1.0
    channels_last: bool = False  # teacher weights and 4-D inputs in channels_last layout
    compile: bool = False  # torch.compile the teacher (worth it for long runs on a GPU)
    # V augmented views per sample (docs/FORMAT.md "Augmented views"); None: no views
    views: int | None = None
    augment: str = "shift=2"
    view_seed: int = 0
    mix: str | None = None  # mixed views, 'KIND[,ALPHA[,PROB]]' (augment/mix.py parse_mix)

    def __post_init__(self) -> None:
        if self.views is not None:
            check_views(self.views)
        check_mix(self.mix, self.views)
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.chunk_rows is not None and self.chunk_rows <= 0:
            raise ConfigError(f"chunk_rows must be positive, got {self.chunk_rows}")
        if self.shard_rows is not None and self.shard_rows < 0:
            raise ConfigError(f"shard_rows must be >= 0 (0: no sharding), got {self.shard_rows}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues an existing store and --overwrite deletes it: "
                              "pass only one of them")
        if self.topk is not None and self.sample is not None:
            raise ConfigError(f"pass --topk or --sample, not both (got topk={self.topk}, "
                              f"sample={self.sample})")
        for name in ("topk", "sample"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name} must be a positive number of classes, got {value}")
        for t in (*self.temperatures, self.sample_temperature):
            check_temperature(t)


ARCHS = ("mlp", "cnn")  # models.build: MLP, or a small CNN (hidden = (c1, c2, fc))


def check_arch(arch: str) -> None:
    """Raise ConfigError unless arch is a known model architecture."""
    if arch not in ARCHS:
        raise ConfigError(f"arch must be one of {list(ARCHS)}, got {arch!r}")


def parse_widths(text: str) -> tuple[int, ...] | None:
    """'800,800' -> (800, 800); None unless every width is a positive integer."""
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        return None
    return widths if widths and min(widths) > 0 else None


def check_mix(mix: str | None, views: int | None) -> None:
    """Raise ConfigError unless mix is None, or a valid --mix given with --views."""
    if mix is None:
        return
    if views is None:
        raise ConfigError(f"--mix {mix!r} mixes stored views: pass --views V too")
    from softtargets.augment.mix import parse_mix
    parse_mix(mix)


def check_views(views: int) -> None:
    """Raise ConfigError unless views (augmented views per sample) is positive."""
    if views <= 0:
        raise ConfigError(f"--views must be a positive number of views per sample, got {views}")


def check_temperature(temperature: float) -> None:
    """Raise ConfigError unless temperature is finite and > 0."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature T must be finite and > 0, got {temperature}; the paper "
                          "uses T in [1, 20]")


def check_alpha(alpha: float) -> None:
    """Raise ConfigError unless alpha is in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"alpha (weight of the soft-target term) must be in [0, 1], got {alpha}; "
            "1 = soft targets only, 0 = hard labels only"
        )


def _check_common(epochs: int, batch_size: int, lr: float) -> None:
    if epochs <= 0:
        raise ConfigError(f"epochs must be positive, got {epochs}")
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")


# --- ensembles, MC dropout and user teachers in stage 1 ----------------------------------------
COMBINE_RULES = ("arithmetic", "geometric")


@dataclasses.dataclass(frozen=True)
class EnsembleLogitsConfig:
    """Stage 1 for several teachers (an ensemble), MC-dropout passes or a user's teacher.

    teachers: files (softtargets checkpoints, TorchScript, .pt2, or state dicts with `factory`).
    mc_dropout: K > 0 runs each teacher K times with train-mode dropout (seeded masks).
    combine + combined_only: write only the combined target (rule, and T for arithmetic).
    """

    data: DataConfig = DataConfig()
    teachers: tuple[str, ...] = ("runs/fashion-mnist/teacher.pt",)
    store: str = "runs/fashion-mnist/teacher-logits.zarr"
    factory: str | None = None
    transform: str | None = None
    mc_dropout: int = 0
    mc_seed: int = 0
    combine: str | None = None
    combined_only: bool = False
    temperature: float | None = None
    batch_size: int = 1024
    chunk_rows: int | None = None
    compressor: str | None = None  # None: the store kind's default (dense none, sparse zstd)
    overwrite: bool = False
    device: str = "auto"
    # resume an interrupted run, break a dead writer's lease, shard rows (None: auto)
    resume: bool = False
    break_lock: bool = False
    shard_rows: int | None = None
    # V augmented views per sample for every member (member_view_logits); None: no views
    views: int | None = None
    augment: str = "shift=2"
    view_seed: int = 0
    mix: str | None = None  # mixed views, 'KIND[,ALPHA[,PROB]]' (augment/mix.py parse_mix)

    def __post_init__(self) -> None:
        if self.views is not None:
            check_views(self.views)
        check_mix(self.mix, self.views)
        if self.views is not None and self.combined_only:
            raise ConfigError("--views keeps every member's view logits; it cannot be combined "
                              "with --store-combined-only: drop one of them")
        if not self.teachers:
            raise ConfigError("at least one --teacher is needed")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.chunk_rows is not None and self.chunk_rows <= 0:
            raise ConfigError(f"chunk_rows must be positive, got {self.chunk_rows}")
        if self.shard_rows is not None and self.shard_rows < 0:
            raise ConfigError(f"shard_rows must be >= 0 (0: no sharding), got {self.shard_rows}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues an existing store and --overwrite deletes it: "
                              "pass only one of them")
        if self.mc_dropout < 0:
            raise ConfigError(f"mc_dropout must be >= 0 passes (0 = off), got {self.mc_dropout}")
        if self.combine is not None and self.combine not in COMBINE_RULES:
            raise ConfigError(f"unknown combination rule {self.combine!r}; allowed: "
                              f"{list(COMBINE_RULES)}")
        if self.combined_only and self.combine is None:
            raise ConfigError("--store-combined-only needs --combine arithmetic|geometric")
        if self.combined_only and self.combine == "arithmetic" and self.temperature is None:
            raise ConfigError("--store-combined-only --combine arithmetic needs -T: the "
                              "arithmetic mean of softmax(z/T) depends on T (geometric does not)")
        if self.temperature is not None:
            check_temperature(self.temperature)
