"""Training: the paper's teacher on hard labels, and students from a logit store or hard labels."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from softtargets.atomic import write_json
from softtargets.config import DataConfig, StudentTrainConfig, TeacherTrainConfig, to_dict
from softtargets.datasets.idx import IDXDataset
from softtargets.datasets.idx_files import Split, load_split, load_validation
from softtargets.errors import CheckpointError
from softtargets.format import ensemble
from softtargets.format.sparse_store import open_any
from softtargets.read.loop import Batches, Checkpointer, Loop, LossFn
from softtargets.read.loss import distillation_loss
from softtargets.recipes.hinton2015.augment import random_shift
from softtargets.recipes.hinton2015.mixup import Mixup
from softtargets.recipes.hinton2015.models import (ModelSpec, apply_max_norm, build,
                                                   check_replaceable, save_checkpoint)
from softtargets.recipes.hinton2015.student_data import student_data


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


EVAL_BATCH = 256  # a CNN's activations for 2000 rows outgrow the CPU caches: 2x slower here


@torch.no_grad()
def split_logits(model: nn.Module, split: Split, *, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """The model's logits (N, C) float32 on the split's clean inputs, in eval mode."""
    model.eval()
    out = [model(torch.from_numpy(split.inputs(slice(s, s + batch_size)))).float().numpy()
           for s in range(0, len(split), batch_size)]
    return np.concatenate(out)


def evaluate(model: nn.Module, split: Split, *, batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Test errors (count out of len(split)), accuracy and per-class errors."""
    pred = split_logits(model, split, batch_size=batch_size).argmax(axis=1)
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


def scale_inputs(x: torch.Tensor, *, jitter: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 images (B, H, W), jittered by up to `jitter` pixels, as (B, H*W) float in [0, 1]
    (the scaling of data.to_inputs); views' rebuilt inputs, float (B, D) or (B, H, W) already
    scaled, only flattened."""
    if x.dtype != torch.uint8:
        return x.flatten(1)
    return random_shift(x, max_shift=jitter, generator=generator).flatten(1).float().div_(255.0)


def fit(model: nn.Module, data: Any, test: Split, loss_fn: LossFn, opts: FitOptions, *,
        desc: str, progress: bool = True, mixup: Mixup | None = None,
        checkpoint: Checkpointer | None = None, resume: bool = False) -> list[dict[str, Any]]:
    """SGD with momentum and a cosine learning rate over read.loop.Batches (or EpochBatches);
    jitter, mixup, max-norm as hooks; evaluates on `test` after every epoch. With `checkpoint`
    the state is saved as it goes, and `resume` goes on from it mid-epoch, to the same weights.
    """
    torch.manual_seed(opts.seed)  # dropout masks
    g = torch.Generator().manual_seed(opts.seed + 1)  # jitter
    optim = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim,
                                                       T_max=opts.epochs * data.num_batches())

    def prepare(x: Any, y: Any, target: Any, epoch: int, step: int) -> tuple[Any, Any, Any]:
        x = scale_inputs(x, jitter=opts.jitter, generator=g)
        return (x, y, target) if mixup is None else mixup(x, y, target, epoch=epoch, step=step)

    loop = Loop(model, optim, loss_fn, clip_grad=opts.clip_grad, scheduler=sched,
                generators={"jitter": g}, prepare=prepare,
                after_step=lambda m: apply_max_norm(m, opts.max_norm),
                evaluate=lambda m: evaluate(m, test), desc=desc, lr=opts.lr)
    return loop.run(data, opts.epochs, saver=checkpoint, resume=resume, progress=progress)


def student_loss(cfg: StudentTrainConfig) -> LossFn:
    """distillation_loss by the target's type; cross-entropy where there is no target (hard
    labels, also mixed ones (B, C))."""
    def loss(s: torch.Tensor, y: torch.Tensor, target: Any) -> torch.Tensor:
        if target is None:
            return F.cross_entropy(s, y)
        return distillation_loss(s, target, y, temperature=cfg.temperature, alpha=cfg.alpha,
                                 loss=cfg.loss)
    return loss


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
    data = Batches(IDXDataset.from_split(split), None, batch_size=cfg.batch_size, seed=cfg.seed)
    history = fit(model, data, test, lambda s, y, _t: F.cross_entropy(s, y), opts,
                  desc="teacher", progress=progress)
    metrics = {"role": "teacher", "model": spec.describe(), "train_rows": len(split),
               **history[-1], **validation_metrics(model, cfg.data),
               "seconds": time.perf_counter() - t0, "history": history,
               "config": to_dict(cfg)}
    sha = save_checkpoint(out, model=model, spec=spec, config=to_dict(cfg),
                          dataset=split.identity(), class_names=split.class_names, metrics=metrics)
    metrics["checkpoint"], metrics["checkpoint_sha256"] = out, sha
    write_json(Path(out).with_suffix(".json"), metrics)
    return metrics


def train_student(cfg: StudentTrainConfig, *, out_dir: str, rows: np.ndarray | None = None,
                  progress: bool = True, checkpoint_every: int | None = None,
                  resume: bool = False) -> dict[str, Any]:
    """Train a student from the store in cfg.store (distilled) or on hard labels (store None).

    checkpoint_every: save the training state to OUT/train-state.pt every this many steps and
    after each epoch (None: not at all); resume: go on from it, mid-epoch, to the same weights
    as an unbroken run."""
    _threads(cfg.threads)
    t0 = time.perf_counter()
    split = load_split(cfg.data)
    test = load_split(cfg.data.for_test())
    store = open_any(cfg.store) if cfg.store else None  # dense, or sparse
    data = student_data(split, store, cfg, rows=rows)
    mixup = None if cfg.mixup == 0 else Mixup(alpha=cfg.mixup, temperature=cfg.temperature,
                                              classes=len(split.class_names), seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    spec = ModelSpec(arch=cfg.arch, inputs=int(np.prod(split.images.shape[1:])),
                     hidden=cfg.hidden, classes=len(split.class_names))
    model = build(spec)
    role = "baseline" if store is None else "distilled"
    opts = FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                      momentum=cfg.momentum, seed=cfg.seed, clip_grad=cfg.clip_grad)
    out = Path(out_dir)
    saver = None
    if checkpoint_every is not None or resume:
        out.mkdir(parents=True, exist_ok=True)
        saver = Checkpointer(out / "train-state.pt", checkpoint_every or 100,
                             {"config": to_dict(cfg), "rows": None if rows is None else
                              np.asarray(rows).tolist()})
    history = fit(model, data, test, student_loss(cfg), opts, desc=role, progress=progress,
                  mixup=mixup, checkpoint=saver, resume=resume)
    source = None if store is None else {"store": store.url, "teacher": store.meta.teacher,
                                         "dataset": store.meta.dataset, "kind": store.meta.kind}
    if data.rule is not None:
        source["combine"] = {"rule": data.rule, "members": len(ensemble.members_of(store))}
    metrics = {"role": role, "model": spec.describe(), "train_rows": len(data), **history[-1],
               **validation_metrics(model, cfg.data), "seconds": time.perf_counter() - t0,
               "history": history, "config": to_dict(cfg),
               "source": source}
    save_checkpoint(out / "student.pt", model=model, spec=spec, config=to_dict(cfg),
                    dataset=split.identity(), class_names=split.class_names, metrics=metrics)
    write_json(out / "metrics.json", metrics)
    return metrics
