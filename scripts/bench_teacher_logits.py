"""Stage 1 benchmark: end-to-end teacher-logits throughput / bare teacher forward throughput.

End to end = store creation, input preparation from the uint8 split, forward, fp16 cast with
range checks, compression, chunk writes and finalize (`teacher.write_chunks`, the code the
`teacher-logits` command runs once the split and checkpoint are loaded). Bare = the same model,
batch size and threads on float32 inputs already in memory, outputs discarded. Both are timed
alternately in this run, best of --repeat. Teachers: the paper's MLP 784-1200-1200-10 and a small
CNN (conv32-conv64-fc128, about 4 MMAC per image), randomly initialised (speed does not depend
on the weights). On a CUDA device it also times the fp16-autocast forward against fp32.

    python scripts/bench_teacher_logits.py                  # Fashion-MNIST train, 60,000 rows
    python scripts/bench_teacher_logits.py --rows 20000 --cnn-rows 4000   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import Row, _row, table  # noqa: E402  (first: sets OMP_WAIT_POLICY before torch)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from softtargets.config import DataConfig  # noqa: E402
from softtargets.datasets.idx_files import Split, load_split  # noqa: E402
from softtargets.recipes.hinton2015.models import ModelSpec, build  # noqa: E402
from softtargets.format.store import StoreWriter  # noqa: E402
from softtargets.write.idx_teacher import autocast, prepare_model, resolve_device, write_chunks  # noqa: E402


class SmallCNN(nn.Module):
    """A heavier teacher: (B, 784) -> (B, 1, 28, 28) -> two conv+pool stages -> (B, 10)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(-1, 1, 28, 28))


@torch.inference_mode()
def bare_rows_per_s(model: nn.Module, inputs: torch.Tensor, *, batch_size: int,
                    device: torch.device, fp16: bool) -> float:
    """Forward over in-memory inputs (already on the device), outputs discarded; rows/s."""
    ctx = autocast(device) if fp16 else torch.autocast("cpu", enabled=False)
    _sync(device)
    t0 = time.perf_counter()
    with ctx:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size])
    _sync(device)
    return len(inputs) / (time.perf_counter() - t0)


def end_to_end_rows_per_s(model: nn.Module, split: Split, *, batch_size: int,
                          device: torch.device, root: Path) -> float:
    """write_chunks over the whole split into a fresh store, then finalize; rows/s."""
    url = str(root / "bench-teacher.zarr")
    t0 = time.perf_counter()
    writer = StoreWriter.create(url, n=len(split), class_names=split.class_names,
                                dataset=split.identity(), teacher={}, config={}, overwrite=True)
    write_chunks(writer.chunk_slice, writer.write_chunk, model, split, range(writer.num_chunks),
                 batch_size=batch_size,
                 device=device)
    writer.finalize()
    return len(split) / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows: list[Row] = []
    torch.manual_seed(0)
    teachers = [("MLP 784-1200-1200-10", build(ModelSpec(hidden=(1200, 1200))), args.rows),
                ("CNN conv32-conv64-fc128", SmallCNN(), args.cnn_rows)]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, model, n in teachers:
            split = load_split(DataConfig(dataset="fashion-mnist", limit=n))
            split.fingerprint  # computed once, as the CLI does before stage 1  # noqa: B018
            model = prepare_model(model, device)
            inputs = torch.from_numpy(split.inputs()).to(device)  # (n, 784) float32
            bare_rows_per_s(model, inputs[:args.batch_size * 2], batch_size=args.batch_size,
                            device=device, fp16=False)  # warm-up
            bare, e2e = [], []
            for _ in range(args.repeat):
                bare.append(bare_rows_per_s(model, inputs, batch_size=args.batch_size,
                                            device=device, fp16=False))
                e2e.append(end_to_end_rows_per_s(model, split, batch_size=args.batch_size,
                                                 device=device, root=Path(tmp)))
            rows.append(_row(f"teacher-logits end-to-end / bare forward, {name}, {n:,} rows, "
                             f"{device.type} (rows/s)", max(e2e), max(bare),
                             max(e2e) / max(bare), ">= 0.90", max(e2e) / max(bare) >= 0.90))
            if device.type == "cuda":
                half = bare_rows_per_s(model, inputs, batch_size=args.batch_size, device=device,
                                       fp16=True)
                rows.append(_row(f"  bare forward fp16 autocast / fp32, {name} (rows/s)", half,
                                 max(bare), half / max(bare), "(info)", None))
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=60_000, help="rows for the MLP teacher")
    p.add_argument("--cnn-rows", type=int, default=10_000, help="rows for the CNN teacher")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--repeat", type=int, default=2, help="alternating repeats, best taken")
    p.add_argument("--dir", default=None, help="parent of the temporary store")
    return p


def main() -> None:
    args = parser().parse_args()
    print(table(measure(args)))


if __name__ == "__main__":
    main()
