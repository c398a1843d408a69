"""Any user's teacher for stage 1: softtargets checkpoints, TorchScript, torch.export, factories.

A teacher source is a file plus an optional `module:factory` (then the file is a state dict) and
an optional `module:function` input transform. Kinds:

* `softtargets`  a checkpoint written by `softtargets train-teacher`
* `torchscript`  a file written by `torch.jit.save`
* `export`       a `.pt2` archive written by `torch.export.save`
* `factory`      `module:function` returning an nn.Module, plus a state-dict checkpoint
* `hf`           `hf:DIR`, a Hugging Face causal LM saved with save_pretrained (extra `hf`)

Every teacher receives the flattened inputs (B, H*W) float32 in [0, 1], or whatever the transform
makes of them (e.g. `x.view(-1, 1, 28, 28)` for a CNN), and must return logits (B, C).
"""

from __future__ import annotations

import dataclasses
import importlib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softtargets.errors import CheckpointError, ConfigError
from softtargets.recipes.hinton2015.models import load_checkpoint
from softtargets.torchfiles import file_sha256, safe_load

KINDS = ("softtargets", "torchscript", "export", "factory", "hf")
HF_PREFIX = "hf:"  # --teacher hf:DIR: a Hugging Face causal LM saved in DIR
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class LoadedTeacher:
    """A teacher ready to run: the module (eval mode), its transform and what identifies it."""

    name: str
    model: nn.Module | Callable[..., Any]
    transform: Transform | None
    class_names: tuple[str, ...] | None  # None when the file does not record them
    identity: dict[str, Any]


def import_object(ref: str, *, what: str) -> Any:
    """The object `module:attr` (e.g. `mypkg.nets:make_cnn`), with a clear error."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} must be 'module:name' (e.g. 'mypkg.nets:make_cnn'), got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{what} {ref!r}: cannot import module {module_name!r}: {e}; is it on "
                          "PYTHONPATH?") from e
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ConfigError(f"{what} {ref!r}: module {module_name!r} has no {attr!r}") from e


def detect_kind(path: str, factory: str | None) -> str:
    """Which loader a teacher file needs (see KINDS)."""
    if factory:
        return "factory"
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"teacher {path!r} not found; pass a softtargets checkpoint, a "
                              "TorchScript file, a torch.export .pt2 archive or a state dict "
                              "with --factory module:function")
    if p.suffix == ".pt2":
        return "export"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/archive_format") for n in names) and \
                any("/models/" in n for n in names):
            return "export"
    return "softtargets"


def load_teacher(path: str, *, factory: str | None = None, transform: str | None = None,
                 expect_classes: int | None = None, name: str | None = None,
                 drop_vocab_padding: bool = False) -> LoadedTeacher:
    """Load a teacher of any kind on the CPU in eval mode, with its identity for the store.
    `hf:DIR` is a Hugging Face causal LM saved in DIR (softtargets.write.hf_teacher)."""
    if path.startswith(HF_PREFIX):
        return _hf(path, factory=factory, transform=transform, expect_classes=expect_classes,
                   name=name, drop_vocab_padding=drop_vocab_padding)
    if drop_vocab_padding:
        raise ConfigError(f"--drop-vocab-padding applies to Hugging Face teachers "
                          f"({HF_PREFIX}DIR), not {path!r}")
    kind = detect_kind(path, factory)
    label = name or path
    class_names = None
    if kind == "softtargets":
        ckpt = load_checkpoint(path, expect_classes=expect_classes)
        model: Any = ckpt.model
        class_names = ckpt.class_names or None
        identity = {"arch": ckpt.spec.describe(), "model": ckpt.spec.to_json(),
                    "trained_on": ckpt.dataset}
    elif kind == "torchscript":
        model = _guard(lambda: torch.jit.load(path, map_location="cpu"), path, kind)
        identity = {"arch": f"torchscript {getattr(model, 'original_name', type(model).__name__)}"}
    elif kind == "export":
        program = _guard(lambda: torch.export.load(path), path, kind)
        model = program.module()
        identity = {"arch": "torch.export program"}
    else:
        model = _from_factory(path, factory or "")
        identity = {"arch": f"{factory} {type(model).__name__}", "factory": factory}
    if isinstance(model, nn.Module) and kind != "export":
        model.eval()  # export programs are traced in eval mode; .eval() is not supported on them
    hook = import_object(transform, what="--transform") if transform else None
    if hook is not None and not callable(hook):
        raise ConfigError(f"--transform {transform!r} is not callable")
    identity = {"kind": kind, **identity, "checkpoint": path, "checkpoint_sha256": file_sha256(path),
                "transform": transform, "torch": str(torch.__version__)}
    return LoadedTeacher(name=label, model=model, transform=hook, class_names=class_names,
                         identity=identity)


def _hf(path: str, *, factory: str | None, transform: str | None, expect_classes: int | None,
        name: str | None, drop_vocab_padding: bool) -> LoadedTeacher:
    """A Hugging Face causal LM (`hf:DIR`): token ids in, next-token logits out."""
    from softtargets.write.hf_teacher import hf_teacher
    if factory or transform:
        raise ConfigError(f"--teacher {path!r} is a Hugging Face model: drop --factory and "
                          "--transform")
    model = hf_teacher(path[len(HF_PREFIX):], num_classes=expect_classes,
                       drop_vocab_padding=drop_vocab_padding)
    return LoadedTeacher(name=name or path, model=model, transform=None, class_names=None,
                         identity=model.softtargets_identity())


def _guard(load: Callable[[], Any], path: str, kind: str) -> Any:
    try:
        return load()
    except Exception as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(f"cannot load {kind} teacher {path!r}: {type(e).__name__}: "
                              f"{first[:300]}") from e


def _from_factory(path: str, factory: str) -> nn.Module:
    """Build the module with `factory()` and load the state dict in `path` into it."""
    make = import_object(factory, what="--factory")
    model = make()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--factory {factory!r} returned {type(model).__name__}, not an "
                          "nn.Module")
    return load_weights(model, path, factory, flag="--teacher with --factory")


def load_weights(model: nn.Module, path: str, factory: str, *, flag: str) -> nn.Module:
    """Load the state dict in `path` (a plain one, or a checkpoint's "state_dict") into the
    module `factory` built; `flag` names the option that gave the file, for the message."""
    state = safe_load(path, fix=f"{flag} needs a state dict saved with "
                      "torch.save(model.state_dict(), path)")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # softtargets checkpoints and Lightning-style files
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"state dict {path!r} does not fit the module built by "
                              f"{factory!r}: {e}") from e
    return model


def enable_mc_dropout(model: Any) -> int:
    """Put only the dropout layers in train mode (BatchNorm etc. stay in eval); count them."""
    if not isinstance(model, nn.Module):
        raise ConfigError("--mc-dropout needs an nn.Module teacher (softtargets or --factory); "
                          "TorchScript and torch.export programs have fixed eval-mode graphs")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in layers:
        m.train()
    return len(layers)
