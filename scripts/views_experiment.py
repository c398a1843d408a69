"""Issue 7 experiment: same student and budget, four ways to give it targets under augmentation.

(a) clean inputs + stored targets, (b) augmented inputs + clean-input targets (inconsistent),
(c) stored views replayed (consistent), (d) online teacher on the augmented inputs (reference).
Prints a markdown table of test errors and wall times (stage 1 time counted where it is paid).

    python scripts/views_experiment.py --teacher runs/fashion-mnist/teacher.pt [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from softtargets.config import DataConfig, LogitsConfig
from softtargets.data import load_split
from softtargets.distill import distillation_loss
from softtargets.models import ModelSpec, build, load_checkpoint
from softtargets.teacher import write_teacher_logits
from softtargets.train import evaluate
from softtargets.views import ViewData, apply_views, draw_params, parse_spec


def train(data: ViewData, mode: str, *, teacher: torch.nn.Module, spec_text: str, epochs: int,
          hidden: tuple[int, ...], seed: int, temperature: float, test) -> tuple[int, float]:
    """One student run in `mode` a/b/c/d; (test errors, seconds)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = build(ModelSpec(hidden=hidden))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    spec = parse_spec(spec_text)
    n = len(data)
    for epoch in range(epochs):
        model.train()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).numpy()
        chosen = data.draw_views(epoch=epoch, seed=seed)  # (N,) view per sample, used by (c)
        for start in range(0, n, 100):
            idx = order[start:start + 100]
            y = data.labels[idx]
            clean_p = np.tile(np.array([0, 0, 0, 1, 0], np.float32), (len(idx), 1))
            if mode == "a":  # clean inputs, clean (view 0) targets
                x, t = apply_views(data.images[idx], clean_p), data.view_logits[idx, 0]
            elif mode == "c":  # a stored view, replayed exactly, with its logits
                v = chosen[idx]
                x, t = apply_views(data.images[idx], data.view_params[idx, v]), \
                    data.view_logits[idx, v]
            else:  # fresh augmentation (never seen by the stage-1 teacher)
                p = draw_params(spec, seed=10_000 + epoch, sample_ids=idx, views=2)[:, 1]
                x = apply_views(data.images[idx], p)
                if mode == "b":
                    t = data.view_logits[idx, 0]  # targets of the clean input
                else:  # d: online teacher on the augmented input
                    with torch.no_grad():
                        t = teacher(x)
            t = torch.as_tensor(np.asarray(t, dtype=np.float32)) if not torch.is_tensor(t) else t
            loss = distillation_loss(model(x), t, y, temperature=temperature, alpha=0.9)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return evaluate(model, test)["test_errors"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/fashion-mnist/teacher.pt")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--augment", default="shift=2,rotate=10,scale=1.1,flip=1")
    ap.add_argument("--views", type=int, default=4)
    args = ap.parse_args()
    limit, epochs, hidden = (5000, 3, (300, 300)) if args.quick else (60000, 10, (800, 800))
    data_cfg = DataConfig(dataset="fashion-mnist", split="train", data_dir=args.data_dir,
                          limit=limit)
    test = load_split(dataclasses.replace(data_cfg, split="test", limit=None))
    teacher = load_checkpoint(args.teacher).model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "views.zarr")
        t0 = time.perf_counter()
        write_teacher_logits(LogitsConfig(data=data_cfg, teacher=args.teacher, store=store,
                                          device="cpu", views=args.views, augment=args.augment),
                             progress=False)
        stage1 = time.perf_counter() - t0
        data = ViewData(load_split(data_cfg), store)
        rows = []
        for mode, what in (("a", "clean inputs + stored targets"),
                           ("b", "augmented inputs + clean-input targets (inconsistent)"),
                           ("c", f"stored views replayed (V={args.views}, consistent)"),
                           ("d", "online teacher on augmented inputs (reference)")):
            errors, seconds = train(data, mode, teacher=teacher, spec_text=args.augment,
                                    epochs=epochs, hidden=hidden, seed=0, temperature=4.0,
                                    test=test)
            rows.append((mode, what, errors, seconds))
    print(f"train rows {limit}, student {hidden}, {epochs} epochs, T=4, alpha=0.9, "
          f"augment '{args.augment}', stage 1 with {args.views} views: {stage1:.1f} s")
    print("| run | targets | test errors / 10000 | student wall s |")
    print("|---|---|---|---|")
    for mode, what, errors, seconds in rows:
        print(f"| ({mode}) | {what} | {errors} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
