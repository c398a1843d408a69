"""The LM recipe's commands (lm-corpus, lm-teacher, lm-teacher-logits, lm-student,
lm-experiment): flags turned into calls of softtargets.recipes.lm; no logic of their own."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click

from softtargets.errors import ConfigError


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value is not None:
        if value < 1:
            raise click.BadParameter(f"must be >= 1, got {value}")
        import torch
        torch.set_num_threads(value)


# one thread is often faster on a busy shared machine than two contending ones
threads = click.option("--threads", type=int, default=None, expose_value=False,
                       callback=_set_threads, help="torch intra-op threads (default: torch's).")


def _model(fn: Callable) -> Callable:
    """--layers/--heads/--width, default: the recipe's teacher or student (None here)."""
    for opt in (click.option("--width", type=int, default=None, help="Embedding width."),
                click.option("--heads", type=int, default=None, help="Attention heads."),
                click.option("--layers", type=int, default=None, help="Transformer blocks.")):
        fn = opt(fn)
    return fn


def _train(fn: Callable) -> Callable:
    for opt in (click.option("--checkpoint-every", type=int, default=25, show_default=True,
                             help="Save the training state every N steps (a killed run "
                                  "resumes from it)."),
                click.option("--seed", type=int, default=0, show_default=True),
                click.option("--lr", type=float, default=2e-3, show_default=True),
                click.option("--batch-size", type=int, default=16, show_default=True,
                             help="Sequences per step."),
                click.option("--steps", type=int, default=400, show_default=True),
                threads):
        fn = opt(fn)
    return fn


def _sized(base: Any, layers: int | None, heads: int | None, width: int | None,
           **more: Any) -> Any:
    from softtargets.recipes.lm.model import GPTConfig
    given = {"n_layer": layers, "n_head": heads, "n_embd": width, **more}
    return GPTConfig(**{**base.to_json(), **{k: v for k, v in given.items() if v is not None}})


def _echo(what: str, result: dict[str, Any], seconds: float) -> None:
    click.echo(f"{what} ({seconds:.1f} s): {json.dumps(result)}")


@click.command("lm-corpus")
@click.option("--out", default="runs/lm/corpus", show_default=True)
@click.option("--source", "sources", multiple=True,
              help="Text file or folder (repeatable); default: this Python's standard library.")
@click.option("--suffix", default=".py", show_default=True, help="Files of a folder read.")
@click.option("--vocab-size", type=int, default=2048, show_default=True)
@click.option("--tokenizer", default=None, help="A tokenizer.json to use instead of training.")
@click.option("--val-fraction", type=float, default=0.05, show_default=True,
              help="Share of whole files held out for validation.")
@click.option("--max-bytes", type=int, default=None, help="Read at most this much text.")
@click.option("--overwrite", is_flag=True, help="Rebuild an existing corpus.")
def lm_corpus_cmd(out: str, sources: tuple[str, ...], suffix: str, vocab_size: int,
                  tokenizer: str | None, val_fraction: float, max_bytes: int | None,
                  overwrite: bool) -> None:
    """Split text by whole files, train a byte-level BPE, write token files."""
    from softtargets.recipes.lm.corpus import CorpusConfig, build_corpus
    t0 = time.perf_counter()
    c = build_corpus(out, config=CorpusConfig(sources=sources, suffix=suffix,
                                              val_fraction=val_fraction, vocab_size=vocab_size,
                                              tokenizer=tokenizer, max_bytes=max_bytes),
                     overwrite=overwrite)
    _echo(f"lm-corpus {out}", {"files": c.files, "tokens": c.tokens,
                               "vocab_size": c.identity.vocab_size}, time.perf_counter() - t0)


@click.command("lm-teacher")
@click.option("--corpus", default="runs/lm/corpus", show_default=True)
@click.option("--out", default="runs/lm/teacher.pt", show_default=True)
@_train
@click.option("--seq-len", type=int, default=128, show_default=True)
@_model
def lm_teacher_cmd(corpus: str, out: str, steps: int, batch_size: int, lr: float, seed: int,
                   checkpoint_every: int, seq_len: int, layers: int | None, heads: int | None,
                   width: int | None) -> None:
    """Train the GPT teacher on the corpus (resumes a saved state of the same settings)."""
    from softtargets.recipes.lm.pipeline import TEACHER, lm_teacher
    from softtargets.recipes.lm.train import LMTrainConfig
    t0 = time.perf_counter()
    model = _sized(TEACHER, layers, heads, width, block_size=max(seq_len, TEACHER.block_size))
    m = lm_teacher(corpus, out, model=model, config=LMTrainConfig(
        steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed,
        checkpoint_every=checkpoint_every))
    _echo(f"lm-teacher {out}", m, time.perf_counter() - t0)


@click.command("lm-teacher-logits")
@click.option("--corpus", default="runs/lm/corpus", show_default=True)
@click.option("--teacher", default="runs/lm/teacher.pt", show_default=True)
@click.option("--store", required=True)
@click.option("--kind", type=click.Choice(["dense", "topk", "sampled"]), default="topk",
              show_default=True)
@click.option("--k", type=int, default=None, help="Classes kept (topk) or drawn (sampled).")
@click.option("--seq-len", type=int, default=64, show_default=True)
@click.option("--sequences", type=int, default=None,
              help="The first N training sequences (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="sampled: draw seed.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--resume", is_flag=True)
@threads
def lm_teacher_logits_cmd(corpus: str, teacher: str, store: str, kind: str, k: int | None,
                          seq_len: int, sequences: int | None, seed: int, batch_size: int,
                          overwrite: bool, resume: bool) -> None:
    """Stage 1: the teacher's targets for every token position of the training sequences."""
    from softtargets.recipes.lm.logits import bytes_per_token
    from softtargets.recipes.lm.pipeline import lm_teacher_logits
    t0 = time.perf_counter()
    meta = lm_teacher_logits(corpus, teacher, store, kind=kind, k=k, seq_len=seq_len,
                             sequences=sequences, seed=seed, batch_size=batch_size,
                             overwrite=overwrite, resume=resume)
    seconds = time.perf_counter() - t0
    _echo(f"lm-teacher-logits {store}", {"kind": meta.kind, "tokens": meta.n,
                                         "tokens_per_s": meta.n / seconds,
                                         **bytes_per_token(store)}, seconds)


@click.command("lm-student")
@click.option("--corpus", default="runs/lm/corpus", show_default=True)
@click.option("--out", default="runs/lm/student.pt", show_default=True)
@click.option("--store", default=None,
              help="The per-token store to distill from; without it, hard labels only.")
@_train
@click.option("--seq-len", type=int, default=64, show_default=True,
              help="Without --store: tokens per sequence (with one: the store's).")
@click.option("--sequences", type=int, default=None,
              help="Without --store: the first N training sequences (with one: the store's).")
@click.option("--temperature", "-T", type=float, default=1.0, show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True,
              help="Weight of the soft term; 1 - alpha on the next-token loss.")
@click.option("--tail", type=click.Choice(["rest", "renormalise"]), default="rest",
              show_default=True, help="top-k stores: the tail bucket, or renormalised top-k.")
@_model
def lm_student_cmd(corpus: str, out: str, store: str | None, steps: int, batch_size: int,
                   lr: float, seed: int, checkpoint_every: int, seq_len: int,
                   sequences: int | None, temperature: float, alpha: float, tail: str,
                   layers: int | None, heads: int | None, width: int | None) -> None:
    """Stage 2: a smaller GPT from the streamed store (or hard labels), equal steps."""
    from softtargets.recipes.lm.pipeline import STUDENT, lm_student
    from softtargets.recipes.lm.train import DistillConfig, LMTrainConfig
    if store is not None and sequences is not None:
        raise ConfigError("--sequences applies without --store; a store's sequences are its own")
    t0 = time.perf_counter()
    m = lm_student(corpus, out, store=store, model=_sized(STUDENT, layers, heads, width),
                   config=LMTrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len,
                                        lr=lr, seed=seed, checkpoint_every=checkpoint_every),
                   distill=DistillConfig(temperature=temperature, alpha=alpha, tail=tail),
                   sequences=sequences)
    _echo(f"lm-student {out}", m, time.perf_counter() - t0)


@click.command("lm-experiment")
@click.option("--corpus", default="runs/lm/corpus", show_default=True)
@click.option("--teacher", default="runs/lm/teacher.pt", show_default=True)
@click.option("--out", default="runs/lm/experiment", show_default=True)
@click.option("--arms", default=None, help="Comma-separated, e.g. hard,dense,topk32.")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--steps", type=int, default=200, show_default=True)
@click.option("--sequences", type=int, default=1024, show_default=True)
@threads
def lm_experiment_cmd(corpus: str, teacher: str, out: str, arms: str | None, seeds: str,
                      steps: int, sequences: int) -> None:
    """Hard-label vs dense/top-k/sampled students at equal steps (resumes)."""
    from softtargets.recipes.lm.experiment import ARMS, ExperimentConfig, run_experiment
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise ConfigError(f"--seeds must be integers separated by commas, got {seeds!r}") \
            from None
    cfg = ExperimentConfig(arms=tuple(arms.split(",")) if arms else tuple(ARMS),
                           seeds=seed_list, steps=steps, sequences=sequences)
    run_experiment(corpus, teacher, out, config=cfg)
    click.echo(open(f"{out}/results.md").read(), nl=False)


LM_COMMANDS = (lm_corpus_cmd, lm_teacher_cmd, lm_teacher_logits_cmd, lm_student_cmd,
               lm_experiment_cmd)
