"""Patient and consistent offline distillation: one student run of one arm, on the public read
path, with validation and test errors after every epoch and resume from the last saved epoch.

Arms (ARMS): "hard" (labels only), "clean" (stored targets of the clean inputs: view 0 of a
views store), "views" (stored views replayed), "mixed" (stored mixed views replayed), "online"
(the teachers run on every fresh augmented and mixed batch: online.OnlineBatches). Every arm
takes the same number of student steps (epochs x batches of the transfer set) with SGD,
momentum and a cosine schedule. Stored arms stream through StreamingDistillDataset; the loss is
distillation_loss (`loss` "kl" at T or "mse" of logits).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softtargets.atomic import write_json
from softtargets.augment.mix import Mix
from softtargets.augment.views import parse_spec
from softtargets.config import DataConfig, check_alpha, check_temperature, to_dict
from softtargets.datasets.idx import IDXDataset
from softtargets.datasets.idx_files import Split, load_split, load_validation
from softtargets.errors import ConfigError, TrainingDivergedError
from softtargets.read import StreamingDistillDataset, distillation_loss
from softtargets.read.distill import check_loss
from softtargets.recipes.hinton2015.models import ModelSpec, build, load_checkpoint
from softtargets.recipes.hinton2015.online import OnlineBatches
from softtargets.recipes.hinton2015.train import evaluate
from softtargets.torchfiles import safe_load, save_atomic

ARMS = ("hard", "clean", "views", "mixed", "online")


@dataclasses.dataclass(frozen=True)
class ArmConfig:
    """One student run: `arm`, `store` (views or mixed-views store; "clean" reads its view 0,
    "hard" only its rows),
    the student ("arch:widths"), the loss (T, alpha, "kl" | "mse") and the schedule. `augment`
    and `mix_*` are the online arm's (stored arms replay their store's own)."""

    arm: str
    data: DataConfig
    student: str = "mlp:800,800"
    store: str | None = None
    teachers: tuple[str, ...] = ()  # online arm: checkpoints of the ensemble
    temperature: float = 4.0
    alpha: float = 1.0
    loss: str = "kl"
    rule: str = "arithmetic"
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 128
    clip_grad: float = 5.0
    seed: int = 0
    augment: str = "shift=2,flip=1"
    mix_kind: str | None = None  # online arm: "mixup" | "cutmix" (None: not mixed)
    mix_alpha: float = 1.0
    mix_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ConfigError(f"arm must be one of {list(ARMS)}, got {self.arm!r}")
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        check_loss(self.loss)
        if self.arm != "online" and not self.store:
            raise ConfigError(f"arm {self.arm!r} reads a views store (hard: its rows and "
                              "labels only): pass store=")
        if self.arm == "online" and not self.teachers:
            raise ConfigError("arm 'online' runs the teachers: pass teachers=(checkpoints)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs and batch_size must be >= 1 and lr > 0, got "
                              f"{self.epochs}, {self.batch_size}, {self.lr}")

    @property
    def mix(self) -> Mix | None:
        return None if self.mix_kind is None else Mix(kind=self.mix_kind, alpha=self.mix_alpha,
                                                       prob=self.mix_prob)


class Batches:
    """The arm's batches of an epoch (x (B, ...) float32, labels, target or None)."""

    def __init__(self, cfg: ArmConfig, dataset: IDXDataset) -> None:
        self.cfg, self.online = cfg, None
        if cfg.arm == "online":
            teachers = [load_checkpoint(p).model for p in cfg.teachers]
            self.online = OnlineBatches(dataset, teachers, augment=parse_spec(cfg.augment),
                                        mix=cfg.mix, temperature=cfg.temperature,
                                        rule=cfg.rule, batch_size=cfg.batch_size,
                                        seed=cfg.seed)
        else:
            view = "replay" if cfg.arm in ("views", "mixed") else None
            self.stream = StreamingDistillDataset(
                dataset, cfg.store, temperature=cfg.temperature, rule=cfg.rule, view=view,
                batch_size=cfg.batch_size, seed=cfg.seed)

    @property
    def teacher_seconds(self) -> float:
        return self.online.teacher_seconds if self.online is not None else 0.0

    def epoch(self, epoch: int) -> Iterable[tuple[torch.Tensor, Any, Any]]:
        if self.online is not None:
            yield from self.online.epoch(epoch)
            return
        self.stream.set_epoch(epoch)
        for x, y, target in self.stream:
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x  # clean: raw pixels
            yield x, y, (None if self.cfg.arm == "hard" else target)


def _loss(cfg: ArmConfig, s: torch.Tensor, y: torch.Tensor, target: Any) -> torch.Tensor:
    if target is None:
        return F.cross_entropy(s, y)
    return distillation_loss(s, target, y, temperature=cfg.temperature, alpha=cfg.alpha,
                             loss=cfg.loss)


def run_arm(cfg: ArmConfig, out: str | Path) -> dict[str, Any]:
    """Train (or reuse out/metrics.json); resumes from out/state.pt, saved after each epoch.
    Returns the metrics: history of val/test errors per epoch, stage-2 seconds split into
    teacher forwards and student steps."""
    out = Path(out)
    done = out / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    split = load_split(cfg.data)
    dataset = IDXDataset.from_split(split)
    val, test = load_validation(cfg.data), load_split(cfg.data.for_test())
    spec = student_spec(cfg.student, split)
    torch.manual_seed(cfg.seed)
    model = build(spec)
    optim = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    batches = Batches(cfg, dataset)
    steps = -(-len(dataset) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=cfg.epochs * steps)
    state = _load_state(out, cfg)
    if state is not None:
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
    history = state["history"] if state else []
    for epoch in range(len(history), cfg.epochs):
        history.append(_epoch(cfg, model, optim, sched, batches, epoch, val=val, test=test))
        _save_state(out, cfg, model, optim, sched, history)
    metrics = {"arm": cfg.arm, "model": spec.describe(), "config": to_dict(cfg),
               "train_rows": len(dataset), "steps": cfg.epochs * steps, "history": history,
               "stage2_seconds": sum(h["seconds"] for h in history),
               "teacher_seconds": sum(h["teacher_seconds"] for h in history),
               "stage2_cpu_seconds": sum(h.get("cpu_seconds", float("nan")) for h in history)}
    write_json(done, metrics)
    return metrics


def student_spec(student: str, split: Split) -> ModelSpec:
    """The student of 'arch:widths' (e.g. 'mlp:800,800') for the split's inputs and classes."""
    arch, _, widths = student.partition(":")
    return ModelSpec(arch=arch, inputs=int(np.prod(split.images.shape[1:])),
                     hidden=tuple(int(w) for w in widths.split(",")),
                     classes=len(split.class_names))


def load_run_state(run: str | Path, *, fix: str = "pass a patient run directory"
                   ) -> dict[str, Any]:
    """The state.pt of a run directory: its config, the student's weights as its last finished
    epoch left them, the optimizer's state and the history of its epochs."""
    return safe_load(Path(run) / "state.pt", fix=fix)


def load_student(state: dict[str, Any], split: Split) -> torch.nn.Module:
    """The student of a run's state (load_run_state) as its last finished epoch left it."""
    model = build(student_spec(state["config"]["student"], split))
    model.load_state_dict(state["model"])
    return model.eval()


def _epoch(cfg: ArmConfig, model: torch.nn.Module, optim: Any, sched: Any, batches: Batches,
           epoch: int, *, val: Any, test: Any) -> dict[str, Any]:
    """One epoch of student steps, then errors on the validation and test rows."""
    model.train()
    t0, teacher0, total, rows = time.perf_counter(), batches.teacher_seconds, 0.0, 0
    c0 = time.process_time()  # CPU seconds too: wall time swells when the cores are shared
    torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout masks, resumable per epoch
    for x, y, target in batches.epoch(epoch):
        loss = _loss(cfg, model(x.flatten(1)), y, target)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"{cfg.arm} student: loss became {loss.item()} in "
                                        f"epoch {epoch + 1} (lr {cfg.lr}); lower lr")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optim.step()
        sched.step()
        total, rows = total + loss.item() * len(x), rows + len(x)
    seconds = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "train_loss": total / max(rows, 1), "seconds": seconds,
           "cpu_seconds": time.process_time() - c0,
           "teacher_seconds": batches.teacher_seconds - teacher0,
           "test_errors": evaluate(model, test)["test_errors"]}
    if val is not None:
        row["val_errors"] = evaluate(model, val)["test_errors"]
    return row


def _load_state(out: Path, cfg: ArmConfig) -> dict[str, Any] | None:
    path = out / "state.pt"
    if not path.is_file():
        return None
    state = load_run_state(out, fix="move that run directory away to start the run afresh")
    if state.get("config") != to_dict(cfg):
        raise ConfigError(f"{path} was saved by another run configuration; pass another out "
                          "directory or delete that one")
    return state


def _save_state(out: Path, cfg: ArmConfig, model: torch.nn.Module, optim: Any, sched: Any,
                history: list[dict[str, Any]]) -> None:
    save_atomic({"config": to_dict(cfg), "model": model.state_dict(),
                 "optim": optim.state_dict(), "sched": sched.state_dict(), "history": history},
                out / "state.pt")
