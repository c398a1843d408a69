#!/usr/bin/env python3
"""Test errors of checkpoints and of their arithmetic-mean ensemble (and train errors with
--train): a quick check of whether an ensemble leaves a gap for distillation to close.

    python scripts/ensemble_errors.py runs/fashion-mnist/teachers/teacher-*.pt
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from softtargets.config import DataConfig
from softtargets.datasets.idx_files import load_split
from softtargets.recipes.hinton2015.models import load_checkpoint


def probabilities(path: str, inputs: torch.Tensor) -> np.ndarray:
    """softmax of the checkpoint's logits, (N, C), in batches of 5000 rows."""
    model = load_checkpoint(path).model.eval()
    with torch.no_grad():
        return torch.cat([torch.softmax(model(inputs[i:i + 5000]), 1)
                          for i in range(0, len(inputs), 5000)]).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--train", action="store_true", help="also count errors on the train split")
    args = p.parse_args()
    for split_name in ("test", "train") if args.train else ("test",):
        split = load_split(DataConfig(dataset=args.dataset, data_dir=args.data_dir,
                                      split=split_name))
        x = torch.from_numpy(split.inputs(slice(0, len(split))))
        probs = []
        for path in args.checkpoints:
            probs.append(probabilities(path, x))
            print(f"{split_name}: {path}: {(probs[-1].argmax(1) != split.labels).sum()} errors")
        if len(probs) > 1:
            wrong = np.mean(probs, axis=0).argmax(1) != split.labels
            print(f"{split_name}: ensemble of {len(probs)} (mean of probabilities): "
                  f"{wrong.sum()} errors of {len(split)}")


if __name__ == "__main__":
    main()
