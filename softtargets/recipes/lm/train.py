"""The LM recipe's training loops: the teacher on random windows of the training tokens, the
student on the sequences of a per-token store (or their hard labels alone), both by steps.

Both save their whole state every `checkpoint_every` steps (read.loop.Checkpointer: model,
optimizer, torch RNG, where the data stands) to `<out>.state`, so a killed run resumes where it
was saved and ends bit-identical to an uninterrupted one; the state is removed once the model is
saved. Batches are functions of (seed, step) or of the store's seeded stream order (its
state_dict is saved with the state), never of unseeded randomness.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softtargets.config import check_alpha, check_temperature
from softtargets.datasets.tokens import TokenSequences
from softtargets.errors import ConfigError, TrainingDivergedError
from softtargets.read.loop import Batches, Checkpointer, StreamOptions
from softtargets.read import distillation_loss
from softtargets.recipes.lm.model import GPT, GPTConfig, save_model


@dataclasses.dataclass(frozen=True)
class LMTrainConfig:
    """Steps, batches and the AdamW schedule (linear warm-up, cosine decay to lr / 10)."""

    steps: int = 400
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    seed: int = 0
    checkpoint_every: int = 25
    eval_sequences: int = 256  # validation sequences scored at the end (0: all)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0 or self.warmup < 0 or self.eval_sequences < 0:
            raise ConfigError(f"lr must be > 0 and warmup, eval_sequences >= 0, got "
                              f"lr={self.lr}, warmup={self.warmup}, "
                              f"eval_sequences={self.eval_sequences}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """The student's targets: none (hard labels only) or a store read at `temperature`; the
    loss is alpha * T^2 * KL + (1 - alpha) * next-token CE (distillation_loss)."""

    store: str | None = None
    temperature: float = 1.0
    alpha: float = 0.5
    tail: str = "rest"

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        check_alpha(self.alpha)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate(step: int, cfg: LMTrainConfig) -> float:
    """The learning rate of `step` (0-based): linear warm-up, then cosine to lr / 10."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, done))))


def window_batch(tokens: np.ndarray, step: int, *, cfg: LMTrainConfig) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Inputs and next tokens (B, L) int64 of B windows drawn by (seed, step) from `tokens`."""
    L = cfg.seq_len
    if len(tokens) < L + 2:
        raise ConfigError(f"{len(tokens)} training tokens are too few for windows of {L}")
    starts = np.random.default_rng([cfg.seed, step]).integers(0, len(tokens) - L - 1,
                                                              cfg.batch_size)
    idx = starts[:, None] + np.arange(L + 1)  # (B, L + 1)
    w = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return w[:, :-1], w[:, 1:]


def _optimizer(model: GPT, cfg: LMTrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices; not norms or biases
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr,
                             betas=(0.9, 0.95))


def _step(model: GPT, optim: torch.optim.Optimizer, loss: torch.Tensor, step: int,
          cfg: LMTrainConfig) -> float:
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"LM training: loss became {loss.item()} at step "
                                    f"{step + 1} (lr {cfg.lr}); lower the learning rate")
    for group in optim.param_groups:
        group["lr"] = learning_rate(step, cfg)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    optim.step()
    return float(loss.item())


@torch.no_grad()
def evaluate(model: GPT, data: TokenSequences, *, sequences: int = 0,
             batch_size: int = 32) -> dict[str, float]:
    """Mean next-token cross-entropy (nats per token) and perplexity over the first
    `sequences` sequences of `data` (0: all)."""
    was = model.training
    model.eval()
    n = len(data) if not sequences else min(sequences, len(data))
    total, count = 0.0, 0
    for a in range(0, n, batch_size):
        x, y = data.read(slice(a, min(n, a + batch_size)))  # (B, L) each
        logits = model(torch.from_numpy(x.astype(np.int64)))  # (B, L, V)
        total += float(F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).flatten(),
                                       reduction="sum"))
        count += y.size
    model.train(was)
    loss = total / count
    return {"val_loss": loss, "val_ppl": math.exp(loss), "val_tokens": count}


def _checkpointer(out: Path, model: GPT, optim: torch.optim.Optimizer,
                  config: dict[str, Any], every: int) -> tuple[Checkpointer, dict[str, Any]]:
    """The run's Checkpointer and its saved position ({} when it starts afresh), the model,
    optimizer and torch RNG restored from the saved state."""
    out.parent.mkdir(parents=True, exist_ok=True)
    saver = Checkpointer(out.with_name(out.name + ".state"), every, config)
    state = saver.load()
    if state is None:
        return saver, {}
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return saver, state["position"]


def _save(saver: Checkpointer, model: GPT, optim: torch.optim.Optimizer,
          position: dict[str, Any]) -> None:
    saver.save({"model": model.state_dict(), "optimizer": optim.state_dict(),
                "rng": torch.get_rng_state(), "position": position})


def train_teacher(train: np.ndarray, out: str | Path, *, model: GPTConfig,
                  config: LMTrainConfig = LMTrainConfig(), val: TokenSequences | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a GPT of size `model` on random windows of the token array `train` (a memmap
    is fine), resuming a saved state of the same settings; save it to `out`. Returns the
    metrics (validation loss and perplexity on `val`, tokens per second)."""
    out = Path(out)
    torch.manual_seed(config.seed)
    gpt = GPT(model).train()
    optim = _optimizer(gpt, config)
    settings = {"model": model.to_json(), "train": config.to_json()}
    saver, position = _checkpointer(out, gpt, optim, settings, config.checkpoint_every)
    start = int(position.get("step", 0))
    t0, losses = time.perf_counter(), []
    for step in range(start, config.steps):
        x, y = window_batch(train, step, cfg=config)
        loss = F.cross_entropy(gpt(x).flatten(0, 1), y.flatten())
        losses.append(_step(gpt, optim, loss, step, config))
        if (step + 1) % config.checkpoint_every == 0:
            _save(saver, gpt, optim, {"step": step + 1})
    seconds = time.perf_counter() - t0
    metrics = _metrics(gpt, val, config, losses, seconds, config.steps - start)
    save_model(out, gpt, train=settings["train"], metrics=metrics, **(extra or {}))
    saver.path.unlink(missing_ok=True)  # finished: a rerun with other settings starts afresh
    return metrics


def _metrics(gpt: GPT, val: TokenSequences | None, cfg: LMTrainConfig, losses: list[float],
             seconds: float, steps: int) -> dict[str, Any]:
    tokens = steps * cfg.batch_size * cfg.seq_len
    m: dict[str, Any] = {"steps": cfg.steps, "params": gpt.num_params(),
                         "train_loss_last": float(np.mean(losses[-20:])) if losses else None,
                         "train_seconds": seconds,
                         "train_tokens_per_s": tokens / seconds if seconds else None}
    if val is not None:
        m.update(evaluate(gpt, val, sequences=cfg.eval_sequences))
    return m


def _hard_batches(data: TokenSequences, cfg: LMTrainConfig, epoch: int,
                  skip: int) -> Iterator[tuple[np.ndarray, np.ndarray, None]]:
    """The sequences of `data` in an order seeded by (seed, epoch), B at a time."""
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(data))
    for a in range(skip * cfg.batch_size, len(order), cfg.batch_size):
        yield (*data.take(order[a:a + cfg.batch_size]), None)


def _student_batches(data: TokenSequences, distill: DistillConfig, cfg: LMTrainConfig,
                     epoch: int, resume: dict[str, Any] | None,
                     ) -> Iterator[tuple[int, dict[str, Any], tuple[Any, ...]]]:
    """Epoch after epoch from `epoch` (after `resume`, a saved position of it): (epoch, the
    position after this batch, (x, y, target or None))."""
    if distill.store is None:  # hard labels: an order seeded by (seed, epoch)
        skip = int((resume or {}).get("delivered", 0))
        while True:
            for i, batch in enumerate(_hard_batches(data, cfg, epoch, skip), start=skip + 1):
                yield epoch, {"epoch": epoch, "delivered": i}, batch
            epoch, skip = epoch + 1, 0
    stream = Batches(data, distill.store, batch_size=cfg.batch_size, seed=cfg.seed,
                     temperature=distill.temperature, tail=distill.tail,
                     options=StreamOptions(loader="stream"))
    while True:
        for batch in stream.epoch(epoch, resume=resume):
            yield epoch, stream.state_dict(), batch
        epoch, resume = epoch + 1, None


def _long(a: Any) -> torch.Tensor:
    """Token ids of a batch (numpy or torch, uint16 as a token file stores them) as int64."""
    if isinstance(a, torch.Tensor):
        return a.long()
    return torch.from_numpy(np.asarray(a).astype(np.int64))


def train_student(data: TokenSequences, out: str | Path, *, model: GPTConfig,
                  config: LMTrainConfig = LMTrainConfig(),
                  distill: DistillConfig = DistillConfig(),
                  val: TokenSequences | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a GPT of size `model` for `config.steps` steps on the sequences of `data`: from
    the store `distill.store` (streamed; its tokenizer and rows must be `data`'s) with the
    distillation loss, or from the next tokens alone when there is no store. Resumes a saved
    state of the same settings; saves the student to `out`; returns the metrics."""
    out = Path(out)
    torch.manual_seed(config.seed)
    gpt = GPT(model).train()
    optim = _optimizer(gpt, config)
    settings = {"model": model.to_json(), "train": config.to_json(),
                "distill": distill.to_json()}
    saver, position = _checkpointer(out, gpt, optim, settings, config.checkpoint_every)
    epoch, skip = int(position.get("epoch", 0)), int(position.get("delivered", 0))
    per_epoch = math.ceil(len(data) / config.batch_size)
    start = epoch * per_epoch + skip
    t0, losses = time.perf_counter(), []
    batches = _student_batches(data, distill, config, epoch, position or None)
    for step in range(start, config.steps):
        epoch, done, (x, y, target) = next(batches)
        x, y = _long(x), _long(y)
        logits = gpt(x)  # (B, L, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) if target is None else \
            distillation_loss(logits, target, y, temperature=distill.temperature,
                              alpha=distill.alpha)
        losses.append(_step(gpt, optim, loss, step, config))
        if (step + 1) % config.checkpoint_every == 0:
            _save(saver, gpt, optim, done)
    seconds = time.perf_counter() - t0
    metrics = _metrics(gpt, val, config, losses, seconds, config.steps - start)
    save_model(out, gpt, train=settings["train"], distill=settings["distill"],
               metrics=metrics, **(extra or {}))
    saver.path.unlink(missing_ok=True)
    return metrics
