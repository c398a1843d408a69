"""A user's data and teacher for the write-API tests, built the same way in the test process,
in a killed subprocess and under torchrun (run as a script: `python write_helpers.py STORE
KIND [--resume]`)."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn

from softtargets import Mix, Views
from softtargets.datasets import from_tensors
from softtargets.write import Dense, Sampled, TopK, write_logits

N, CLASSES, CHUNK = 96, 1000, 8  # 12 units of 8 rows
KINDS = {"dense": Dense(), "topk": TopK(5, temperatures=(4.0,)),
         "sampled": Sampled(6, temperature=2.0, seed=3), "ensemble": Dense(), "views": Dense(),
         "mixed": Dense()}
VIEWS = Views(count=3, augment="shift=2,rotate=10,flip=1", seed=5)  # the "views" kind's
MIXED = Views(count=3, augment="shift=2,flip=1", seed=5,
              mix=Mix(kind="cutmix", alpha=1.0, prob=0.8))  # the "mixed" kind's


class TinyCNN(nn.Module):
    """A user's teacher: 3x32x32 RGB -> 1,000 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.head = nn.Linear(4 * 8 * 8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1)) * 4.0


def rgb_data(n: int = N, seed: int = 0):
    """Synthetic 3x32x32 float RGB images with int64 labels of 1,000 classes."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, CLASSES, n).astype(np.int64)
    return images, labels


def teacher(seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN()


def slowed(model: nn.Module, seconds: float) -> nn.Module:
    """The same teacher (class and weights), sleeping `seconds` before each batch: a torch
    forward pre-hook, so a test can kill a run mid-way."""
    if seconds:
        model.register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    return model


def write(store: str, kind: str, *, resume: bool = False, batch_size: int = 8,
          slow: float = 0.0):
    images, labels = rgb_data()
    data = from_tensors(images, labels, num_classes=CLASSES, name="rgb")
    teachers = [slowed(teacher(0), slow), teacher(1)] if kind == "ensemble" \
        else slowed(teacher(), slow)
    return write_logits(teachers, data, store, targets=KINDS[kind], batch_size=batch_size,
                        chunk_rows=CHUNK, device="cpu", resume=resume,
                        views={"views": VIEWS, "mixed": MIXED}.get(kind))


def main(argv: list[str]) -> None:
    """STORE KINDS [--resume] [--slow SECONDS]: write a store of each of the comma-separated
    KINDS (KIND in the store path is replaced by the kind), the teacher sleeping SECONDS before
    each batch."""
    torch.set_num_threads(1)
    slow = float(argv[argv.index("--slow") + 1]) if "--slow" in argv else 0.0
    for name in argv[1].split(","):
        write(argv[0].replace("KIND", name), name, resume="--resume" in argv, slow=slow)


if __name__ == "__main__":
    import write_helpers  # the teacher's class is write_helpers.TinyCNN, as in the tests

    write_helpers.main(sys.argv[1:])
