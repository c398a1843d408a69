"""What stage 1 writes per row: target specs `Dense()`, `TopK(k)`, `Sampled(k)`. numpy only.

A spec is a frozen dataclass that round-trips through JSON (`to_json` / `targets_from_json`)
and knows how to create and reopen the store writer of its kind. Kinds are registered types
(`register`), so the write path asks the spec instead of branching on a kind name:

    targets = TopK(32, temperatures=(1.0, 4.0))
    targets_from_json(targets.to_json()) == targets        # True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from softtargets.format import sparse as sp
from softtargets.format.codecs import DENSE_COMPRESSOR
from softtargets.format.codecs import default_chunk_rows as dense_chunk_rows
from softtargets.errors import ConfigError
from softtargets.format.sparse_store import SPARSE_COMPRESSOR, SparseSpec, SparseWriter
from softtargets.format.sparse_store import default_chunk_rows as sparse_chunk_rows
from softtargets.format.sparse_store import make_spec
from softtargets.format.store import RowWriter, StoreWriter

_REGISTRY: dict[str, type[Targets]] = {}


def register(cls: type[Targets]) -> type[Targets]:
    """Make `cls` (a Targets subclass with a distinct `kind`) known to targets_from_json."""
    if cls.kind in _REGISTRY:
        raise ConfigError(f"target kind {cls.kind!r} is registered twice "
                          f"({_REGISTRY[cls.kind].__name__} and {cls.__name__})")
    _REGISTRY[cls.kind] = cls
    return cls


def registered_kinds() -> tuple[str, ...]:
    """The store kinds a target spec exists for, sorted."""
    return tuple(sorted(_REGISTRY))


def targets_class(kind: str) -> type[Targets]:
    """The spec class of store kind `kind`."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ConfigError(f"unknown target kind {kind!r}; registered kinds: "
                          f"{list(registered_kinds())}") from None


def targets_from_json(d: Any) -> Targets:
    """The spec `d` describes ({"kind": ..., fields}); refuses unknown kinds and keys."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ConfigError(f"a target spec is a JSON object with a 'kind', got {d!r}")
    cls = targets_class(d["kind"])
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields - {"kind"})
    if unknown:
        raise ConfigError(f"{cls.__name__} target spec: unknown keys {unknown}; allowed: "
                          f"{sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "kind"}
    return cls(**values)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def _temperature(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what} must be a finite number > 0, got {value!r}; e.g. 1.0 or 4.0")
    return float(value)


def _temperatures(values: Any, what: str, *also: float) -> tuple[float, ...]:
    """Sorted distinct temperatures including 1 (and `also`): the stored tail-mass columns."""
    if isinstance(values, (int, float)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{what} must be a sequence of temperatures such as (1.0, 4.0), got "
                          f"{values!r}")
    temps = [_temperature(t, what) for t in values]
    return sp.check_temperatures((*temps, *also))


class Targets:
    """Base of the target specs; subclasses are frozen dataclasses with a class-level `kind`."""

    kind: ClassVar[str]
    positions_allowed: ClassVar[bool] = True  # rows per sequence position (a `position` array)
    shardable: ClassVar[bool] = False  # whether the layout has shards (FORMAT.md)
    default_compressor: ClassVar[str]  # the store's `compressor` unless one is asked for
    # rows arrive already sparse (LogitWriter.append_topk), not as dense logits to convert
    precomputed: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:
        """{"kind": kind, field: value, ...} with tuples as lists."""
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v
                                      for k, v in d.items()}}

    def chunk_rows(self, n: int, num_classes: int) -> int:
        """Default rows per chunk (about 2 MiB of stored values)."""
        raise NotImplementedError

    def create_writer(self, url: str, *, n: int, class_names: tuple[str, ...],
                      dataset: dict[str, Any], teacher: dict[str, Any], config: dict[str, Any],
                      chunk_rows: int, compressor: str, overwrite: bool,
                      shard_rows: int | None, extra: dict[str, Any],
                      position: bool) -> RowWriter:
        """An empty, incomplete store of this kind at `url`."""
        raise NotImplementedError

    def open_writer(self, url: str) -> RowWriter:
        """An incomplete store of this kind reopened to add units."""
        raise NotImplementedError


@register
@dataclasses.dataclass(frozen=True)
class Dense(Targets):
    """Every class's raw logit, float16 (N, C): the v1 `logits` array."""

    kind: ClassVar[str] = "dense"
    positions_allowed: ClassVar[bool] = False  # the dense layout has no `position` array
    shardable: ClassVar[bool] = True
    default_compressor: ClassVar[str] = DENSE_COMPRESSOR

    def chunk_rows(self, n: int, num_classes: int) -> int:
        return dense_chunk_rows(n, num_classes)

    def create_writer(self, url: str, *, n: int, class_names: tuple[str, ...],
                      dataset: dict[str, Any], teacher: dict[str, Any], config: dict[str, Any],
                      chunk_rows: int, compressor: str, overwrite: bool,
                      shard_rows: int | None, extra: dict[str, Any],
                      position: bool) -> RowWriter:
        return StoreWriter.create(url, n=n, class_names=class_names, dataset=dataset,
                                  teacher=teacher, config=config, chunk_rows=chunk_rows,
                                  compressor=compressor, overwrite=overwrite,
                                  shard_rows=shard_rows, extra=extra)

    def open_writer(self, url: str) -> RowWriter:
        return StoreWriter.open(url)


class _Sparse(Targets):
    """Shared by the sparse kinds: the store is a sparse_store.SparseWriter of `sparse_spec`."""

    default_compressor: ClassVar[str] = SPARSE_COMPRESSOR

    def sparse_spec(self, num_classes: int, *, position: bool) -> SparseSpec:
        raise NotImplementedError

    def chunk_rows(self, n: int, num_classes: int) -> int:
        return sparse_chunk_rows(n, self.sparse_spec(num_classes, position=False).k, num_classes)

    def create_writer(self, url: str, *, n: int, class_names: tuple[str, ...],
                      dataset: dict[str, Any], teacher: dict[str, Any], config: dict[str, Any],
                      chunk_rows: int, compressor: str, overwrite: bool,
                      shard_rows: int | None, extra: dict[str, Any],
                      position: bool) -> RowWriter:
        return SparseWriter.create(url, spec=self.sparse_spec(len(class_names), position=position),
                                   n=n, class_names=class_names, dataset=dataset,
                                   teacher=teacher, config=config, chunk_rows=chunk_rows,
                                   compressor=compressor, overwrite=overwrite,
                                   shard_rows=shard_rows, extra=extra)

    def open_writer(self, url: str) -> RowWriter:
        return SparseWriter.open(url)


@register
@dataclasses.dataclass(frozen=True)
class TopK(_Sparse):
    """The k largest values per row, with the tail mass at each of `temperatures` (FORMAT.md,
    "Sparse stores"); k is capped at the class count."""

    kind: ClassVar[str] = "topk"
    k: int
    temperatures: tuple[float, ...] = dataclasses.field(default=(1.0,), kw_only=True)

    def __post_init__(self) -> None:
        _positive_int(self.k, "TopK: k (classes kept per row)")
        object.__setattr__(self, "temperatures",
                           _temperatures(self.temperatures, "TopK: temperatures"))

    def sparse_spec(self, num_classes: int, *, position: bool) -> SparseSpec:
        return make_spec(kind="topk", k=self.k, num_classes=num_classes,
                         temperatures=self.temperatures, position=position)


@register
@dataclasses.dataclass(frozen=True)
class Sampled(_Sparse):
    """k class ids drawn per row from softmax(z / temperature), seeded per row by (seed,
    sample id, position); unbiased at any stored temperature (FORMAT.md, "Sparse stores")."""

    kind: ClassVar[str] = "sampled"
    k: int
    temperature: float = dataclasses.field(default=1.0, kw_only=True)
    seed: int = dataclasses.field(default=0, kw_only=True)
    temperatures: tuple[float, ...] = dataclasses.field(default=(1.0,), kw_only=True)

    def __post_init__(self) -> None:
        _positive_int(self.k, "Sampled: k (draws per row)")
        object.__setattr__(self, "temperature",
                           _temperature(self.temperature, "Sampled: temperature"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"Sampled: seed must be an integer >= 0, got {self.seed!r}")
        object.__setattr__(self, "temperatures", _temperatures(
            self.temperatures, "Sampled: temperatures", self.temperature))

    def sparse_spec(self, num_classes: int, *, position: bool) -> SparseSpec:
        return make_spec(kind="sampled", k=self.k, num_classes=num_classes,
                         temperatures=self.temperatures, seed=self.seed,
                         sample_temperature=self.temperature, position=position)


@register
@dataclasses.dataclass(frozen=True)
class TopKLogProbs(_Sparse):
    """Top-k rows given precomputed: per row the k most likely classes and their normalised
    log-probabilities at T = 1 (an inference server's top-k logprobs), appended with
    `LogitWriter.append_topk`. A "topk" store with computed_from "log_probs": values are the
    log-probs, lse 0, tail 1 - their mass (clamped at 0). `mass_tolerance`: how far a row's
    top-k mass may exceed 1 (rounding) before it is refused."""

    kind: ClassVar[str] = "topk_logprobs"
    precomputed: ClassVar[bool] = True
    k: int
    mass_tolerance: float = dataclasses.field(default=1e-3, kw_only=True)

    def __post_init__(self) -> None:
        _positive_int(self.k, "TopKLogProbs: k (classes per row)")
        tol = self.mass_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ConfigError(f"TopKLogProbs: mass_tolerance must be a number in [0, 1), got "
                              f"{tol!r}; e.g. 1e-3")
        object.__setattr__(self, "mass_tolerance", float(tol))

    def sparse_spec(self, num_classes: int, *, position: bool) -> SparseSpec:
        if self.k > num_classes:
            raise ConfigError(f"TopKLogProbs: k={self.k} exceeds the {num_classes} classes")
        return make_spec(kind="topk", k=self.k, num_classes=num_classes, temperatures=(1.0,),
                         computed_from="log_probs", source="top-k log-probs (precomputed)",
                         position=position)


def check_targets(targets: Any) -> Targets:
    """`targets` if it is a registered target spec, else one line saying what to pass."""
    if not isinstance(targets, Targets) or type(targets).kind not in _REGISTRY:
        raise ConfigError(f"targets must be Dense(), TopK(k), Sampled(k) or TopKLogProbs(k) (a "
                          f"registered target spec), got {targets!r}")
    return targets


def targets_of_config(cfg: Any) -> Targets:
    """The spec stage 1's flags ask for: --topk K, --sample K, or dense."""
    if getattr(cfg, "topk", None) is not None:
        return TopK(cfg.topk, temperatures=cfg.temperatures)
    if getattr(cfg, "sample", None) is not None:
        return Sampled(cfg.sample, temperature=cfg.sample_temperature, seed=cfg.sample_seed,
                       temperatures=cfg.temperatures)
    return Dense()
