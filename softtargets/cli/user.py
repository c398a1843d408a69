"""The commands' path for the user's own data and models (--data SPEC that is not an IDX name,
--teacher-factory, --student-factory): flags turned into calls of the public API.

Stage 1 goes through softtargets.write.write_logits (the one write path), stage 2 through
DistillDataset / StreamingDistillDataset and distillation_loss (softtargets/read/fit.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from softtargets.cli.data import DataOptions, load_data, make_module
from softtargets.atomic import write_json
from softtargets.errors import ConfigError


def refuse_flags(given: dict[str, bool], *, where: str, fix: str) -> None:
    """One line naming the flags that do not apply on this path (`given`: flag -> set?);
    `fix` may say {it} (it or them)."""
    bad = [flag for flag, is_set in given.items() if is_set]
    if bad:
        one = len(bad) == 1
        raise ConfigError(f"{', '.join(bad)} {'does' if one else 'do'} not apply to {where}; "
                          + fix.format(it="it" if one else "them"))


def user_teacher(teachers: tuple[str, ...], factory: str | None, weights: str | None, *,
                 num_classes: int | None = None, drop_vocab_padding: bool = False) -> Any:
    """The nn.Module (or list of them: an ensemble) that --teacher-factory or --teacher name;
    `num_classes` (the data's) is checked by Hugging Face teachers (hf:DIR)."""
    from torch import nn

    from softtargets.write.teachers import load_teacher
    if weights is not None and factory is None:
        raise ConfigError("--teacher-weights is the state dict of a --teacher-factory module; "
                          "pass --teacher-factory module:factory too")
    if factory is not None:
        if teachers:
            raise ConfigError("pass --teacher-factory (with --teacher-weights) or --teacher "
                              "files, not both")
        return make_module(factory, what="--teacher-factory", weights=weights,
                           weights_flag="--teacher-weights")
    if not teachers:
        raise ConfigError("a --data dataset of your own needs a teacher: --teacher-factory "
                          "module:factory [--teacher-weights PATH] or --teacher FILE (a "
                          "softtargets checkpoint, TorchScript or torch.export file, or "
                          "hf:DIR)")
    if drop_vocab_padding and not any(t.startswith("hf:") for t in teachers):
        raise ConfigError("--drop-vocab-padding applies to Hugging Face teachers (--teacher "
                          "hf:DIR)")
    models = [load_teacher(t, expect_classes=num_classes if t.startswith("hf:") else None,
                           drop_vocab_padding=drop_vocab_padding and t.startswith("hf:")).model
              for t in teachers]
    for path, model in zip(teachers, models):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--teacher {path!r} is not a torch nn.Module; pass a softtargets "
                              "checkpoint, TorchScript or torch.export file")
    return models if len(models) > 1 else models[0]


def targets_of(topk: int | None, sample: int | None, temperatures: tuple[float, ...], *,
               sample_seed: int, sample_temperature: float) -> Any:
    """The write API's target spec for --topk / --sample (neither: dense)."""
    from softtargets.write import Dense, Sampled, TopK
    if topk is not None and sample is not None:
        raise ConfigError("--topk and --sample are two kinds of sparse store; pass one")
    if topk is not None:
        return TopK(topk, temperatures=temperatures)
    if sample is not None:
        return Sampled(sample, temperature=sample_temperature, seed=sample_seed,
                       temperatures=temperatures)
    return Dense()


def user_views(views: int | None, *, augment: str, view_seed: int,
               mix: str | None) -> dict[str, Any]:
    """write_logits' views= of --views/--augment/--view-seed/--mix ({} without --views)."""
    from softtargets.config import check_mix
    check_mix(mix, views)
    if views is None:
        return {}
    from softtargets.augment import views as vw
    from softtargets.augment.mix import parse_mix
    from softtargets.augment.source import Views
    from softtargets.config import check_views
    check_views(views)
    return {"views": Views(count=views, augment=vw.parse_spec(augment), seed=view_seed,
                           mix=parse_mix(mix))}


def teacher_logits(spec: str, options: DataOptions, *, store: str, teachers: tuple[str, ...],
                   teacher_factory: str | None, teacher_weights: str | None,
                   targets: Any, refused: dict[str, bool], progress: bool,
                   drop_vocab_padding: bool = False, **write: Any) -> tuple[Any, float, str, bool]:
    """Stage 1 of --data SPEC through write_logits; (metadata, seconds, store, resumed?).

    `refused`: flags of the IDX path (flag -> set?), refused in one line when set."""
    from softtargets.write.session import store_exists
    from softtargets.write import write_logits
    refuse_flags(refused, where=f"--data {spec} / --teacher-factory (written through "
                 "softtargets.write.write_logits)", fix="drop {it}, or use an IDX dataset with "
                 "a softtargets teacher checkpoint")
    dataset = load_data(spec, options)
    teacher = user_teacher(teachers, teacher_factory, teacher_weights,
                           num_classes=dataset.num_classes, drop_vocab_padding=drop_vocab_padding)
    store = store.replace("{dataset}", dataset.name)
    resumed = bool(write.get("resume")) and store_exists(store)  # else a new store
    t0 = time.perf_counter()
    meta = write_logits(teacher, dataset, store, targets=targets, progress=progress, **write)
    return meta, time.perf_counter() - t0, store, resumed


def train_user_student(factory: str, dataset: Any, store: str, out: str, *, test: Any,
                       cfg: Any, progress: bool, resume: bool = False,
                       checkpoint_every: int = 100) -> dict[str, Any]:
    """Train the module `factory` builds from `store` on `dataset`; write metrics.json and
    student.pt (its state dict and the factory's name) to `out`; the metrics. The training state
    is saved to OUT/train-state.pt as it goes; `resume` goes on from it."""
    import torch

    from softtargets.read.fit import fit_student
    from softtargets.torchfiles import save_atomic
    torch.manual_seed(cfg.seed)  # the student's initial weights follow --seed
    model = make_module(factory, what="--student-factory")
    where = Path(out)
    where.mkdir(parents=True, exist_ok=True)
    metrics = {"role": "student", "model": factory, "store": store,
               **fit_student(model, dataset, store, cfg, test=test, progress=progress,
                             checkpoint=str(where / "train-state.pt"),
                             checkpoint_every=checkpoint_every, resume=resume)}
    save_atomic({"state_dict": model.state_dict(), "factory": factory, "metrics": metrics},
                where / "student.pt")
    write_json(where / "metrics.json", metrics)
    return metrics


def student_line(m: dict[str, Any], *, epochs: int, temperature: float, alpha: float,
                 out: str) -> str:
    """The summary line of `student --student-factory`."""
    from softtargets.recipes.hinton2015 import report
    result = report.errors_text(m) if "test_errors" in m else \
        f"training loss {m['train_loss']:.4f} (no test split)"
    return (f"student: {m['model']} (T={temperature:g}, alpha={alpha:g}), {epochs} epochs on "
            f"{m['train_rows']} rows in {m['seconds']:.0f} s: {result} -> {out}")


def student_command(factory: str | None, options: DataOptions, *, store: str, out: str,
                    temperature: float, alpha: float, rule: str | None, tail: str, loader: str,
                    loader_workers: int, mixup: float, optimizer: str | None, dataset: str,
                    val_rows: int, epochs: int, batch_size: int, lr: float, clip_grad: float,
                    seed: int, threads: int | None, quiet: bool, resume: bool = False,
                    checkpoint_every: int = 100, loss: str = "kl", **_model: Any) -> None:
    """`student --student-factory` (or a non-IDX --data): the generic loop; prints one line.
    `_model`: the built-in student's --arch/--hidden, which a factory's model replaces."""
    import click

    from softtargets.cli.data import held_out_split
    from softtargets.read.fit import FitConfig
    if factory is None:
        raise ConfigError(f"the built-in students train on the IDX datasets; for --data "
                          f"{dataset!r} pass --student-factory module:factory")
    refuse_flags({"--val-rows": val_rows != 0, "--mixup": mixup != 0},
                 where="--student-factory students", fix="drop {it}")
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    data = load_data(dataset, options)
    store, out = (p.replace("{dataset}", data.name) for p in (store, out))
    cfg = FitConfig(temperature=temperature, alpha=alpha, epochs=epochs, lr=lr,
                    batch_size=batch_size, seed=seed, optimizer=optimizer or "sgd",
                    loader=loader, loader_workers=loader_workers, clip_grad=clip_grad,
                    rule=rule, tail=tail, loss=loss)
    test = held_out_split(data, data_dir=options.data_dir)
    m = train_user_student(factory, data, store, out, test=test, cfg=cfg, progress=not quiet,
                           resume=resume, checkpoint_every=checkpoint_every)
    click.echo(student_line(m, epochs=epochs, temperature=temperature, alpha=alpha, out=out))
