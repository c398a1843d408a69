"""A Hugging Face `transformers` causal LM as a stage-1 teacher (optional extra `hf`).

    teacher = hf_teacher("models/my-lm", num_classes=data.num_classes)
    write_logits(teacher, data, "lm.zarr", targets=TopK(32))       # data: TokenSequences

The model is loaded from a local directory only (`local_files_only`: never the hub), in fp32
and eval mode; it maps token ids (B, L) to next-token logits (B, L, V), which go through the one
forward of stage 1 like any teacher's. A model whose logits have more columns than the data's
vocabulary (a vocabulary padded for speed, e.g. 152,064 vs 151,936) is refused unless
`drop_vocab_padding` drops the extra columns; the store's teacher provenance records it, with
the model class and a sha256 of its config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softtargets.errors import CheckpointError, ConfigError


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("a Hugging Face teacher needs the transformers package: pip install "
                          "'softtargets[hf]'") from None
    return transformers


def config_sha256(config: Any) -> str:
    """sha256 of the model config as sorted JSON, without the transformers version that
    saved it (the same model saved by two versions hashes the same)."""
    d = {k: v for k, v in config.to_dict().items() if k != "transformers_version"}
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class HFCausalLM(nn.Module):
    """Token ids (B, L) -> next-token logits (B, L, C) float32 of a transformers causal LM;
    C = the model's vocabulary less the dropped padding columns."""

    def __init__(self, model: nn.Module, *, path: str, keep: int | None) -> None:
        super().__init__()
        self.model = model
        self.path = path
        self.keep = keep  # columns kept (None: all)

    @property
    def vocab_size(self) -> int:
        """Logit columns of the model itself (before any padding is dropped)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=x.long(), use_cache=False).logits  # (B, L, V)
        return (logits if self.keep is None else logits[..., :self.keep]).float()

    def softtargets_identity(self) -> dict[str, Any]:
        """What the store records about this teacher (merged into write_logits' identity)."""
        cls = type(self.model)
        dropped = 0 if self.keep is None else self.vocab_size - self.keep
        return {"kind": "hf", "arch": f"hf {cls.__name__}",
                "hf_class": f"{cls.__module__}.{cls.__qualname__}",
                "hf_config_sha256": config_sha256(self.model.config), "checkpoint": self.path,
                "transformers": _transformers().__version__, "vocab_size": self.vocab_size,
                "vocab_padding_dropped": dropped}


def _load(path: str) -> nn.Module:
    transformers = _transformers()
    where = Path(path)
    if not (where / "config.json").is_file():
        raise CheckpointError(f"Hugging Face teacher {path!r} is not a model directory (no "
                              "config.json); pass a folder written by save_pretrained")
    log = transformers.utils.logging
    bars = log.is_progress_bar_enabled()
    log.disable_progress_bar()  # stage 1 prints its own progress; errors stay one line
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(where),
                                                                  local_files_only=True)
    except Exception as e:  # a user's files: missing weights, unknown architecture
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise CheckpointError(f"cannot load Hugging Face causal LM {path!r}: "
                              f"{type(e).__name__}: {first[:300]}") from e
    finally:
        if bars:
            log.enable_progress_bar()
    return model.float().eval()


def hf_teacher(path: str, *, num_classes: int | None = None,
               drop_vocab_padding: bool = False) -> HFCausalLM:
    """The causal LM saved in directory `path` as a teacher module (CPU, fp32, eval mode).

    `num_classes`: the data's vocabulary size; a model with more logit columns is refused in
    one line naming both, unless `drop_vocab_padding` drops the columns beyond it (recorded in
    the store's teacher provenance as `vocab_padding_dropped`); one with fewer is refused."""
    model = HFCausalLM(_load(str(path)), path=str(path), keep=None)
    V = model.vocab_size
    if num_classes is None:
        if drop_vocab_padding:
            raise ConfigError("drop_vocab_padding needs num_classes (the data's vocabulary "
                              "size): the columns beyond it are dropped")
        return model
    if V < num_classes:
        raise CheckpointError(f"Hugging Face teacher {path!r} has {V} logit columns but the "
                              f"data has {num_classes} token classes; the model cannot score "
                              "every token: use the data's tokenizer and model")
    if V > num_classes:
        if not drop_vocab_padding:
            raise CheckpointError(
                f"Hugging Face teacher {path!r} has {V} logit columns but the data has "
                f"{num_classes} token classes; if the {V - num_classes} extra columns are "
                "vocabulary padding (never real tokens), drop them with drop_vocab_padding=True "
                "(--drop-vocab-padding)")
        model.keep = num_classes
    return model
