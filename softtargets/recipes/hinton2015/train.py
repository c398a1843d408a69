"""Training: the paper's teacher on hard labels, and students from a logit store or hard labels."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from softtargets.recipes.hinton2015.augment import random_shift
from softtargets.config import DataConfig, StudentTrainConfig, TeacherTrainConfig, to_dict
from softtargets.datasets.idx_files import Split, load_split, load_validation
from softtargets.format import ensemble
from softtargets.read.distill import (SparseTargets, distillation_loss,
                                 distillation_loss_from_log_probs, sparse_distillation_loss)
from softtargets.errors import CheckpointError, ConfigError, TrainingDivergedError
from softtargets.read.loader import DistillData, StreamingDistillData, StreamOptions, distill_data
from softtargets.recipes.hinton2015.mixup import MixupData
from softtargets.recipes.hinton2015.models import (ModelSpec, apply_max_norm, build, check_replaceable,
                                save_checkpoint)
from softtargets.format.sparse_store import open_any
from softtargets.format.store import LogitStore
from softtargets.progress import bar as progress_bar
from softtargets.read.view_loader import ViewData

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How one training run iterates; shared by teacher and student."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    seed: int
    jitter: int = 0
    max_norm: float = 0.0
    clip_grad: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = 2000) -> dict[str, Any]:
    """Test errors (count out of len(split)), accuracy and per-class errors."""
    model.eval()
    preds = []
    for start in range(0, len(split), batch_size):
        x = torch.from_numpy(split.inputs(slice(start, start + batch_size)))
        preds.append(model(x).argmax(dim=1).numpy())
    pred = np.concatenate(preds)
    wrong = pred != split.labels
    per_class = np.bincount(split.labels[wrong], minlength=len(split.class_names))
    return {"test_errors": int(wrong.sum()), "test_n": len(split),
            "test_accuracy": float(1.0 - wrong.mean()), "per_class_errors": per_class.tolist()}


def validation_metrics(model: nn.Module, data: DataConfig) -> dict[str, Any]:
    """Errors on the rows held out by data.val_rows (val_errors, val_n, val_accuracy), or {}."""
    val = load_validation(data)
    if val is None:
        return {}
    m = evaluate(model, val)
    return {"val_errors": m["test_errors"], "val_n": m["test_n"],
            "val_accuracy": m["test_accuracy"]}


def fit(model: nn.Module, data: Any, test: Split, loss_fn: LossFn,
        opts: FitOptions, *,
        desc: str, progress: bool = True) -> list[dict[str, Any]]:
    """SGD with momentum and a cosine learning rate; evaluates on `test` after every epoch.

    data: anything with `num_batches(batch_size)` and `batches(batch_size=, epoch=, seed=)`
    (loader.DistillData / StreamingDistillData, view_loader.ViewData, mixup.MixupData).
    """
    torch.manual_seed(opts.seed)  # dropout masks
    g = torch.Generator().manual_seed(opts.seed + 1)  # jitter
    optim = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum)
    steps_per_epoch = data.num_batches(opts.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=opts.epochs * steps_per_epoch)
    history = []
    bar = progress_bar(total=opts.epochs * steps_per_epoch, desc=desc, unit="step",
                       enabled=progress)
    for epoch in range(opts.epochs):
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        for images, labels, teacher in data.batches(batch_size=opts.batch_size, epoch=epoch,
                                                    seed=opts.seed):
            if images.dtype == torch.uint8:
                images = random_shift(images, max_shift=opts.jitter, generator=g)
                x = images.flatten(1).float().div_(255.0)  # same scaling as data.to_inputs
            else:  # ViewData yields the rebuilt augmented inputs (B, D) already
                x = images
            loss = loss_fn(model(x), labels, teacher)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, step "
                    f"{count // opts.batch_size + 1} (lr {opts.lr}); lower --lr")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if opts.clip_grad > 0:
                # logit matching at high T is a regression with unbounded gradients; SGD can blow up
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad)
            optim.step()
            sched.step()
            apply_max_norm(model, opts.max_norm)
            total += loss.item() * len(labels)
            count += len(labels)
            bar.update()
        row = {"epoch": epoch + 1, "train_loss": total / count,
               "seconds": time.perf_counter() - t0, **evaluate(model, test)}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", test_errors=row["test_errors"])
    bar.close()
    return history


def has_views(store: Any) -> bool:
    """A dense store written with --views (docs/FORMAT.md 'Augmented views')."""
    return isinstance(store, LogitStore) and "views" in store.meta.extra


def student_data(split: Split, store: Any, cfg: StudentTrainConfig, *,
                 rows: np.ndarray | None) -> tuple[Any, bool, str | None]:
    """Stage-2 data for `store` (None: hard labels): (data, whether its targets are log-probs at
    T rather than raw logits, the ensemble combination rule or None)."""
    if has_views(store):  # replay stored augmented views
        members = ensemble.is_ensemble(store)
        if cfg.combine is not None and not members:
            raise ConfigError(f"--combine {cfg.combine} applies to ensemble stores, but store "
                              f"{store.url!r} holds one teacher's views; drop --combine")
        size = store.meta.n * store.meta.extra["views"]["views"] * store.meta.num_classes * 2
        options = StreamOptions(loader=cfg.loader, workers=cfg.loader_workers)
        if not members and (cfg.loader == "stream" or (
                cfg.loader == "auto" and size > options.memory_limit_bytes)):
            return StreamingDistillData(split, store, rows=rows, options=options,
                                        replay=True), False, None
        data = ViewData(split, store.url, rows=rows, temperature=cfg.temperature,
                        rule=cfg.combine)
        return data, data.log_probs, data.rule if data.log_probs else None
    targets = ensemble_targets(store, cfg)  # combined log-probs of an ensemble, or None
    if targets is not None:
        return DistillData(split, targets, rows=rows, temperature=cfg.temperature), True, \
            targets.rule
    if isinstance(store, LogitStore):  # dense: in memory or streamed
        return distill_data(split, store, rows=rows, options=StreamOptions(
            loader=cfg.loader, workers=cfg.loader_workers)), False, None
    return DistillData(split, store, rows=rows, temperature=cfg.temperature,
                       tail=cfg.tail), False, None


def _threads(n: int | None) -> None:
    if n is not None:
        torch.set_num_threads(n)


def train_teacher(cfg: TeacherTrainConfig, *, out: str, overwrite: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Train the paper's teacher (dropout, jitter, max-norm); save checkpoint and metrics JSON."""
    if Path(out).exists() and not overwrite:
        raise CheckpointError(f"teacher checkpoint {out!r} already exists; pass --overwrite to "
                              "replace it or choose another --out")
    if Path(out).exists():
        check_replaceable(out)
    _threads(cfg.threads)
    t0 = time.perf_counter()
    split = load_split(cfg.data)
    test = load_split(cfg.data.for_test())
    torch.manual_seed(cfg.seed)
    spec = ModelSpec(arch=cfg.arch, inputs=int(np.prod(split.images.shape[1:])),
                     hidden=cfg.hidden, classes=len(split.class_names), dropout=cfg.dropout,
                     input_dropout=cfg.input_dropout)
    model = build(spec)
    opts = FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                      momentum=cfg.momentum, seed=cfg.seed, jitter=cfg.jitter,
                      max_norm=cfg.max_norm)
    history = fit(model, DistillData(split), test,
                  lambda s, y, _t: F.cross_entropy(s, y), opts, desc="teacher", progress=progress)
    metrics = {"role": "teacher", "model": spec.describe(), "train_rows": len(split),
               **history[-1], **validation_metrics(model, cfg.data),
               "seconds": time.perf_counter() - t0, "history": history,
               "config": to_dict(cfg)}
    sha = save_checkpoint(out, model=model, spec=spec, config=to_dict(cfg),
                          dataset=split.identity(), class_names=split.class_names, metrics=metrics)
    metrics["checkpoint"], metrics["checkpoint_sha256"] = out, sha
    _write_json(Path(out).with_suffix(".json"), metrics)
    return metrics


def train_student(cfg: StudentTrainConfig, *, out_dir: str, rows: np.ndarray | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Train a student from the store in cfg.store (distilled) or on hard labels (store None)."""
    _threads(cfg.threads)
    t0 = time.perf_counter()
    split = load_split(cfg.data)
    test = load_split(cfg.data.for_test())
    store = open_any(cfg.store) if cfg.store else None  # dense, or sparse
    data, log_probs, rule = student_data(split, store, cfg, rows=rows)
    if cfg.mixup > 0:  # targets mixed like the inputs, as log-probs at T
        data = MixupData(data, alpha=cfg.mixup, temperature=cfg.temperature,
                         log_probs=log_probs, classes=len(split.class_names))
        log_probs = store is not None
    torch.manual_seed(cfg.seed)
    spec = ModelSpec(arch=cfg.arch, inputs=int(np.prod(split.images.shape[1:])),
                     hidden=cfg.hidden, classes=len(split.class_names))
    model = build(spec)
    if store is None:
        def loss_fn(s: torch.Tensor, y: torch.Tensor, _t: torch.Tensor | None) -> torch.Tensor:
            return F.cross_entropy(s, y)
        role = "baseline"
    elif log_probs:  # teacher batches hold the target's log-probs at T (ensembles, mixup)
        def loss_fn(s: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
            return distillation_loss_from_log_probs(s, t, y, temperature=cfg.temperature,
                                                    alpha=cfg.alpha, loss=cfg.loss)
        role = "distilled"
    else:
        def loss_fn(s: torch.Tensor, y: torch.Tensor, t: Any) -> torch.Tensor:
            if isinstance(t, SparseTargets):  # top-k or sampled store: loss by its kind
                if cfg.loss != "kl":
                    raise ConfigError(f"--loss {cfg.loss} matches dense logits; store "
                                      f"{cfg.store!r} holds sparse targets: use --loss kl")
                return sparse_distillation_loss(s, t, y, temperature=cfg.temperature,
                                                alpha=cfg.alpha)
            return distillation_loss(s, t, y, temperature=cfg.temperature, alpha=cfg.alpha,
                                     loss=cfg.loss)
        role = "distilled"
    opts = FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                      momentum=cfg.momentum, seed=cfg.seed, clip_grad=cfg.clip_grad)
    history = fit(model, data, test, loss_fn, opts, desc=role, progress=progress)
    source = None if store is None else {"store": store.url, "teacher": store.meta.teacher,
                                         "dataset": store.meta.dataset, "kind": store.meta.kind}
    if rule is not None:
        source["combine"] = {"rule": rule, "members": len(ensemble.members_of(store))}
    metrics = {"role": role, "model": spec.describe(), "train_rows": len(data), **history[-1],
               **validation_metrics(model, cfg.data), "seconds": time.perf_counter() - t0,
               "history": history, "config": to_dict(cfg),
               "source": source}
    out = Path(out_dir)
    save_checkpoint(out / "student.pt", model=model, spec=spec, config=to_dict(cfg),
                    dataset=split.identity(), class_names=split.class_names, metrics=metrics)
    _write_json(out / "metrics.json", metrics)
    return metrics


def ensemble_targets(store: LogitStore | None,
                     cfg: StudentTrainConfig) -> ensemble.EnsembleTargets | None:
    """The combined-target view of an ensemble store; None for a one-teacher store."""
    if store is None or not ensemble.is_ensemble(store):
        if store is not None and cfg.combine is not None:
            raise ConfigError(f"--combine {cfg.combine} applies to ensemble stores, but store "
                              f"{store.url!r} holds one teacher's logits; drop --combine")
        return None
    return ensemble.open_targets(store, rule=cfg.combine, temperature=cfg.temperature)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
