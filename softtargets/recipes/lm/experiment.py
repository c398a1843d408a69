"""The LM experiment: students of equal steps from hard labels and from dense, top-k and sampled
stores of one teacher, scored on the held-out files; store bytes per token and stage-1/stage-2
speeds measured side by side in the same run.

Every finished step is saved (a store and its stage-1 timings, each student's metrics), so a
killed run resumes where it stopped: `run_experiment` skips what is already there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.atomic import write_json
from softtargets.errors import ConfigError
from softtargets.recipes.lm.corpus import open_corpus
from softtargets.recipes.lm.logits import (bare_forward_seconds, bytes_per_token, lm_targets,
                                           write_lm_logits)
from softtargets.recipes.lm.model import GPTConfig, load_model
from softtargets.recipes.lm.train import DistillConfig, LMTrainConfig, evaluate, train_student

# arm name -> (target kind, k); "hard" has no store
ARMS: dict[str, tuple[str | None, int | None]] = {
    "hard": (None, None), "dense": ("dense", None), "topk8": ("topk", 8),
    "topk32": ("topk", 32), "topk128": ("topk", 128), "sampled12": ("sampled", 12),
    "sampled32": ("sampled", 32)}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The arms, seeds, the student's data and steps, and its size."""

    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1, 2)
    seq_len: int = 64
    sequences: int = 1024  # training sequences of the stores (the student's data)
    steps: int = 200
    batch_size: int = 16
    lr: float = 2e-3
    alpha: float = 0.5
    temperature: float = 1.0
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 128
    eval_sequences: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms or not self.seeds:
            raise ConfigError(f"arms must be some of {list(ARMS)} and seeds non-empty, got "
                              f"arms {list(self.arms)}, seeds {list(self.seeds)}")

    def student(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.seq_len, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd)

    def train(self, seed: int) -> LMTrainConfig:
        return LMTrainConfig(steps=self.steps, batch_size=self.batch_size, seq_len=self.seq_len,
                             lr=self.lr, seed=seed, eval_sequences=self.eval_sequences,
                             checkpoint_every=max(1, self.steps // 4))


def _cached(path: Path, compute: Any) -> dict[str, Any]:
    """The JSON at `path`, or compute() saved there (a finished step of the experiment)."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    write_json(path, result, indent=1)
    return result


def _stage1(teacher: Path, data: Any, store: Path, kind: str, k: int | None,
            vocab: int) -> dict[str, Any]:
    """Write one store; its seconds and bytes beside a bare forward pass over the same data."""
    model, _ = load_model(teacher)
    t0 = time.perf_counter()
    write_lm_logits(teacher, data, store, targets=lm_targets(kind, vocab_size=vocab, k=k),
                    overwrite=True)
    seconds = time.perf_counter() - t0
    bare = bare_forward_seconds(model, data)
    tokens = len(data) * data.seq_len
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "bare_forward_tokens_per_s": tokens / bare, **bytes_per_token(store)}


def run_experiment(corpus: str | Path, teacher: str | Path, out: str | Path, *,
                   config: ExperimentConfig = ExperimentConfig()) -> dict[str, Any]:
    """Run (or resume) the experiment under `out`; returns the summary also written to
    `out`/results.json and `out`/results.md."""
    out, teacher = Path(out), Path(teacher)
    c = open_corpus(corpus)
    vocab = c.identity.vocab_size
    data = c.sequences("train", seq_len=config.seq_len, limit=config.sequences)
    val = c.sequences("val", seq_len=config.seq_len)
    teacher_val = _cached(out / "teacher-val.json", lambda: evaluate(
        load_model(teacher)[0], val, sequences=config.eval_sequences))
    stage1, runs = {}, {}
    for arm in config.arms:  # every store first: a run of other seeds can then go alongside
        kind, k = ARMS[arm]
        if kind:
            stage1[arm] = _cached(out / f"stage1-{arm}.json", lambda: _stage1(
                teacher, data, out / f"{arm}.zarr", kind, k, vocab))
    for seed in config.seeds:  # seed-major: a partial run has every arm at the first seeds
        for arm in config.arms:
            name, store = f"{arm}-s{seed}", (out / f"{arm}.zarr" if ARMS[arm][0] else None)
            distill = DistillConfig(store=str(store) if store else None,
                                    temperature=config.temperature, alpha=config.alpha)
            runs[name] = _cached(out / "students" / f"{name}.json", lambda: train_student(
                data, out / "students" / f"{name}.pt", model=config.student(vocab),
                config=config.train(seed), distill=distill, val=val))
    summary = summarize(config, teacher_val, stage1, runs)
    write_json(out / "results.json", summary, indent=1)
    (out / "results.md").write_text(results_table(summary))
    return summary


def summarize(config: ExperimentConfig, teacher_val: dict[str, Any],
              stage1: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """Per arm: mean and sd of the validation loss over seeds, perplexity, the share of dense's
    gain over hard labels it keeps, stage-2 tokens/s, and its store's stage-1 figures."""
    arms: dict[str, Any] = {}
    for arm in config.arms:
        losses = np.array([runs[f"{arm}-s{s}"]["val_loss"] for s in config.seeds])
        speed = np.array([runs[f"{arm}-s{s}"]["train_tokens_per_s"] for s in config.seeds])
        arms[arm] = {"val_loss": float(losses.mean()),
                     "val_loss_sd": float(losses.std(ddof=1)) if len(losses) > 1 else 0.0,
                     "val_ppl": math.exp(float(losses.mean())), "seeds": len(losses),
                     "train_tokens_per_s": float(speed.mean()), "stage1": stage1.get(arm)}
    hard, dense = arms.get("hard"), arms.get("dense")
    if hard and dense and hard["val_loss"] > dense["val_loss"]:
        gain = hard["val_loss"] - dense["val_loss"]
        for a in arms.values():
            a["dense_gain_kept"] = (hard["val_loss"] - a["val_loss"]) / gain
    config_json = {**dataclasses.asdict(config), "arms": list(config.arms),
                   "seeds": list(config.seeds)}
    return {"config": config_json, "teacher": teacher_val, "arms": arms}


def results_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    t = summary["teacher"]
    lines = [f"teacher: validation loss {t['val_loss']:.4f} nats/token, perplexity "
             f"{t['val_ppl']:.2f}", "",
             "| arm | val loss (mean ± sd) | perplexity | dense gain kept | bytes/token "
             "| stage 1 tok/s (bare forward) | stage 2 tok/s |", "|---|---|---|---|---|---|---|"]
    for arm, a in summary["arms"].items():
        s1, kept = a["stage1"], a.get("dense_gain_kept")
        size = f"{s1['bytes_per_token']:.1f}" if s1 else ""
        speed = (f"{s1['tokens_per_s']:.0f} ({s1['bare_forward_tokens_per_s']:.0f})"
                 if s1 else "")
        lines.append(f"| {arm} | {a['val_loss']:.4f} ± {a['val_loss_sd']:.4f} "
                     f"(n={a['seeds']}) | {a['val_ppl']:.2f} | "
                     f"{'' if kept is None else f'{100 * kept:.0f}%'} | {size} | {speed} | "
                     f"{a['train_tokens_per_s']:.0f} |")
    return "\n".join(lines) + "\n"
