"""Views experiment: same student and budget, four ways to give it targets under augmentation.

(a) clean inputs + stored targets, (b) augmented inputs + clean-input targets (inconsistent),
(c) stored views replayed (consistent), (d) online teacher on the augmented inputs (reference).
All four train through softtargets.recipes.hinton2015.train.fit (same SGD, schedule, clipping, batches, seed);
(a) and (c) are exactly `softtargets student` on a plain and on a views store. Prints a markdown
table of test errors and wall times (stage 1 time counted where it is paid).

    python scripts/views_experiment.py --teacher runs/fashion-mnist/teacher.pt [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from softtargets.config import DataConfig, LogitsConfig, StudentTrainConfig
from softtargets.datasets.idx_files import load_split
from softtargets.recipes.hinton2015.models import ModelSpec, build, load_checkpoint
from softtargets.write.idx_teacher import write_teacher_logits
from softtargets.recipes.hinton2015.student_data import EpochBatches
from softtargets.recipes.hinton2015.train import FitOptions, fit, student_loss, train_student
from softtargets.read.view_loader import ViewData
from softtargets.augment.views import apply_views, draw_params, parse_spec


class FreshAugmentData:
    """(b)/(d): a fresh augmentation per sample per epoch, never seen by the stage-1 teacher;
    targets are the stored clean-input logits (b) or the teacher run online on the input (d)."""

    def __init__(self, data: ViewData, *, augment: str, teacher: torch.nn.Module | None) -> None:
        self.data, self.spec, self.teacher = data, parse_spec(augment), teacher

    def __len__(self) -> int:
        return len(self.data)

    def num_batches(self, batch_size: int) -> int:
        return self.data.num_batches(batch_size)

    def batches(self, *, batch_size: int, epoch: int,
                seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(self), generator=g).numpy()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            p = draw_params(self.spec, seed=10_000 + epoch, sample_ids=idx, views=2)[:, 1]
            x = apply_views(self.data.images[idx], p, spec=self.spec)  # (B, D)
            if self.teacher is None:  # (b): targets of the clean input (view 0)
                t = torch.from_numpy(self.data.view_logits[idx, 0].astype(np.float32))
            else:  # (d): the teacher on this very input, every step
                with torch.no_grad():
                    t = self.teacher(x)
            yield x, self.data.labels[idx], t


def run_fit(data, cfg: StudentTrainConfig, test) -> tuple[int, float]:
    """The student loop of train_student on `data`; (test errors, seconds)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build(ModelSpec(hidden=cfg.hidden))
    opts = FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                      momentum=cfg.momentum, seed=cfg.seed, clip_grad=cfg.clip_grad)
    batches = EpochBatches(data, batch_size=cfg.batch_size, seed=cfg.seed,
                           temperature=cfg.temperature)
    history = fit(model, batches, test, student_loss(cfg), opts, desc="student",
                  progress=False)
    return history[-1]["test_errors"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/fashion-mnist/teacher.pt")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--augment", default="shift=2,rotate=10,scale=1.1,flip=1")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("-T", "--temperature", type=float, default=4.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    limit, epochs, hidden = (5000, 3, (300, 300)) if args.quick else (None, 10, (800, 800))
    epochs = args.epochs or epochs
    data_cfg = DataConfig(dataset="fashion-mnist", split="train", data_dir=args.data_dir,
                          limit=limit)
    test = load_split(data_cfg.for_test())
    teacher = load_checkpoint(args.teacher).model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        stores, stage1 = {}, {}
        for name, views in (("plain", None), ("views", args.views)):
            stores[name] = str(Path(tmp) / f"{name}.zarr")
            t0 = time.perf_counter()
            write_teacher_logits(LogitsConfig(data=data_cfg, teacher=args.teacher,
                                              store=stores[name], device="cpu", views=views,
                                              augment=args.augment), progress=False)
            stage1[name] = time.perf_counter() - t0
        cfg = StudentTrainConfig(data=data_cfg, hidden=hidden, epochs=epochs, lr=args.lr,
                                 temperature=args.temperature, alpha=args.alpha)
        rows = []
        for mode, store in (("a", "plain"), ("c", "views")):  # the library's own stage 2
            m = train_student(dataclasses.replace(cfg, store=stores[store]),
                              out_dir=str(Path(tmp) / mode), progress=False)
            rows.append((mode, m["test_errors"], m["seconds"], stage1[store]))
        views = ViewData(load_split(data_cfg), stores["views"])
        for mode, online in (("b", None), ("d", teacher)):
            errors, seconds = run_fit(FreshAugmentData(views, augment=args.augment,
                                                       teacher=online), cfg, test)
            rows.append((mode, errors, seconds, stage1["plain"] if mode == "b" else 0.0))
    what = {"a": "clean inputs + stored targets",
            "b": "augmented inputs + clean-input targets (inconsistent)",
            "c": f"stored views replayed (V={args.views}, consistent)",
            "d": "online teacher on augmented inputs (reference)"}
    print(f"teacher {args.teacher}; train rows {limit or 60000}, student {hidden}, {epochs} "
          f"epochs, lr {args.lr}, T={args.temperature:g}, alpha={args.alpha}, augment "
          f"'{args.augment}', torch threads {torch.get_num_threads()}")
    print("| run | targets | test errors / 10000 | student s | stage 1 s | total s |")
    print("|---|---|---:|---:|---:|---:|")
    for mode, errors, seconds, s1 in sorted(rows):
        print(f"| ({mode}) | {what[mode]} | {errors} | {seconds:.1f} | {s1:.1f} | "
              f"{seconds + s1:.1f} |")


if __name__ == "__main__":
    main()
