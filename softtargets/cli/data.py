"""The command line's --data SPEC and user factories: what a flag names, as a dataset or module.

SPEC is one of
    an IDX name          fashion-mnist, mnist, kmnist (today's --dataset values)
    imagefolder:PATH     PATH/<class>/*.png|jpg (softtargets.datasets.ImageFolder)
    cifar10:PATH         CIFAR-10 in its python format (cifar100:PATH for CIFAR-100)
    tokens:PATH          a flat uint16/uint32 token file, with --seq-len (TokenSequences)
    module:factory       a zero-argument callable returning a softtargets dataset, or any
                         map-style dataset (then --num-classes is needed)
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from collections.abc import Callable
from typing import Any

import click

from softtargets.datasets import idx_files as data_mod
from softtargets.config import DEFAULT_DATA_DIR
from softtargets.errors import ConfigError

SCHEMES = ("imagefolder", "cifar10", "cifar100", "tokens")
ALLOWED = ("an IDX name (" + ", ".join(sorted(data_mod.DATASETS)) + "), imagefolder:PATH, "
           "cifar10:PATH, cifar100:PATH, tokens:PATH or module:factory")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """The flags that shape a non-IDX dataset."""

    split: str = "train"
    data_dir: str = DEFAULT_DATA_DIR
    limit: int | None = None
    seq_len: int | None = None
    token_dtype: str = "uint16"
    vocab_size: int | None = None
    num_classes: int | None = None


SPEC_HELP = ("What to read: an IDX name (as --dataset), imagefolder:PATH (PATH/<class>/*.png|"
             "jpg), cifar10:PATH, cifar100:PATH, tokens:PATH (with --seq-len) or module:factory "
             "(a zero-argument callable returning a dataset). Default: --dataset.")


def spec_options(fn: Callable) -> Callable:
    """--data SPEC and the flags that shape a non-IDX dataset."""
    for option in reversed([
        click.option("--data", "data_spec", default=None, metavar="SPEC", help=SPEC_HELP),
        click.option("--seq-len", type=int, default=None,
                     help="tokens:PATH: tokens per sequence (a row per position is stored)."),
        click.option("--token-dtype", default="uint16", show_default=True,
                     type=click.Choice(["uint16", "uint32"]), help="tokens:PATH: token dtype."),
        click.option("--vocab-size", type=int, default=None,
                     help="tokens:PATH: classes (default: the largest token + 1, a full pass)."),
        click.option("--num-classes", type=int, default=None,
                     help="module:factory returning a plain map-style dataset: its classes."),
    ]):
        fn = option(fn)
    return fn


def pop_spec(kw: dict[str, Any], *, split: str, data_dir: str,
             limit: int | None) -> tuple[str | None, DataOptions]:
    """(--data, the DataOptions) taken out of a command's keyword arguments."""
    options = DataOptions(split=split, data_dir=data_dir, limit=limit, seq_len=kw.pop("seq_len"),
                          token_dtype=kw.pop("token_dtype"), vocab_size=kw.pop("vocab_size"),
                          num_classes=kw.pop("num_classes"))
    return kw.pop("data_spec"), options


def is_idx(spec: str) -> bool:
    """Whether SPEC names one of the IDX datasets (the built-in path of every command)."""
    return spec in data_mod.DATASETS


def resolve_spec(data: str | None, dataset: str) -> str:
    """The SPEC a command works on: --data, else --dataset (its IDX alias)."""
    if data is None:
        return dataset
    if dataset != "fashion-mnist" and data != dataset:
        raise ConfigError(f"--data {data!r} and --dataset {dataset!r} disagree; --dataset is an "
                          "alias of --data for IDX names, pass only one")
    return data


def load_data(spec: str, options: DataOptions) -> Any:
    """The softtargets dataset SPEC names."""
    if is_idx(spec):
        from softtargets.datasets import IDXDataset
        return IDXDataset(spec, split=options.split, data_dir=options.data_dir,
                          limit=options.limit)
    if options.limit is not None:
        raise ConfigError(f"--limit applies to the IDX datasets, not --data {spec!r}; drop it "
                          "(or give a smaller dataset)")
    scheme, sep, rest = spec.partition(":")
    if scheme in SCHEMES:
        if not rest:
            raise ConfigError(f"--data {spec!r} names no path; use {scheme}:PATH")
        return _scheme_data(scheme, Path(rest), options)
    if sep and rest and _MODULE.match(scheme) and _MODULE.match(rest):
        return _factory_data(spec, options)
    raise ConfigError(f"--data {spec!r} is not a dataset softtargets knows; use {ALLOWED}")


def _scheme_data(scheme: str, path: Path, options: DataOptions) -> Any:
    from softtargets import datasets
    if not path.exists():
        raise ConfigError(f"--data {scheme}:{path}: {path} does not exist; give the "
                          f"{'token file' if scheme == 'tokens' else 'folder'} of your data")
    if scheme == "imagefolder":
        return datasets.ImageFolder(path, split=options.split)
    if scheme == "tokens":
        if options.seq_len is None:
            raise ConfigError(f"--data tokens:{path} needs --seq-len L (tokens per sequence)")
        return datasets.TokenSequences(path, seq_len=options.seq_len, dtype=options.token_dtype,
                                       vocab_size=options.vocab_size, split=options.split)
    data = datasets.CIFAR(path, train=options.split == "train")
    if data.variant != scheme:
        raise ConfigError(f"--data {scheme}:{path} holds {data.variant}; use "
                          f"{data.variant}:{path}")
    return data


def _factory_data(spec: str, options: DataOptions) -> Any:
    from softtargets.datasets import BaseDataset, MapDataset, wrap
    data = call_factory(spec, what="--data")
    if isinstance(data, BaseDataset):
        return data
    if not isinstance(data, MapDataset):
        raise ConfigError(f"--data {spec!r} returned {type(data).__name__}, not a dataset; "
                          "return a softtargets dataset or a map-style dataset (__len__, "
                          "__getitem__ -> (input, label))")
    if options.num_classes is None:
        raise ConfigError(f"--data {spec!r} returned a {type(data).__name__} without a class "
                          "count; pass --num-classes C (or return softtargets.datasets.wrap("
                          "ds, num_classes=C))")
    return wrap(data, num_classes=options.num_classes, name=spec, split=options.split)


def call_factory(ref: str, *, what: str) -> Any:
    """`module:factory()`: the object a user's zero-argument callable returns."""
    from softtargets.write.teachers import import_object
    make = import_object(ref, what=what)
    if not callable(make):
        raise ConfigError(f"{what} {ref!r} is a {type(make).__name__}, not a callable; name a "
                          "zero-argument function")
    try:
        return make()
    except TypeError as e:
        raise ConfigError(f"{what} {ref!r} cannot be called without arguments ({e}); name a "
                          "zero-argument function") from e


def make_module(ref: str, *, what: str, weights: str | None = None,
                weights_flag: str = "") -> Any:
    """The nn.Module a user's `module:factory` builds, with the state dict `weights` loaded."""
    from torch import nn

    from softtargets.write.teachers import load_weights
    model = call_factory(ref, what=what)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} {ref!r} returned {type(model).__name__}, not a torch "
                          "nn.Module")
    if weights is not None:
        if not Path(weights).is_file():
            raise ConfigError(f"{weights_flag} {weights!r} not found; give the state dict saved "
                              "with torch.save(model.state_dict(), path)")
        load_weights(model, weights, ref, flag=weights_flag)
    return model


def held_out_split(train: Any, *, data_dir: str) -> Any | None:
    """The test split beside a train dataset where the data has one (IDX, CIFAR), else None."""
    from softtargets.datasets import CIFAR, IDXDataset
    if train.split != "train":
        return None
    if isinstance(train, CIFAR):
        return CIFAR(train.source, train=False)
    if isinstance(train, IDXDataset):
        return IDXDataset(train.name, split="test", data_dir=data_dir)
    return None
