"""The GPU path, measured: stage 1 under fp16 autocast and stage 2 with a GPU student.

Run through scripts/gpu_check.sh where a CUDA device is lent (under 8 minutes on an H200);
`--device cpu --tiny` is the dry run the tests make in seconds. Random inputs, random weights,
nothing downloaded, no torchvision (teachers: scripts/gpu_models.py).

  1. stage 1, ResNet-50-sized CNN (25.6M parameters, 1,000 classes, uint8 224x224 images):
     write_logits end to end / the bare forward of the same model and batches on inputs
     already on the device (rows/s, goal >= 0.90), and max |stored fp16 logit - fp32 forward|
  2. stage 1, GPT of 124M parameters (vocab 50,257, 1,024 tokens a sequence), TopK(32) per
     position: the same ratio in tokens/s, and the stored top-32 values against fp32
  3. stage 2: a student epoch on the GPU with StreamingDistillDataset / with the targets
     preloaded (DistillDataset), same rows, model, batches and workers (goal <= 1.05)

Pairs are timed in interleaved rounds (bench_common.interleaved), medians and the median
per-round ratio reported. Results: <out>/results.json and <out>/results.md (one table in the
format of `make bench`; `python scripts/bench.py --gpu-results <out>/results.json` adds them
to its table), written after every section so a timeout keeps what was measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (Row, _paired_row, _row, interleaved, save_results,  # noqa: E402
                          table)  # (before torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from gpu_models import gpt, parameters, resnet50  # noqa: E402
from torch import nn  # noqa: E402

from softtargets import (DistillDataset, SofttargetsError, SoftTargets,  # noqa: E402
                         StreamingDistillDataset, TokenSequences, distillation_loss, from_tensors,
                         write_logits)
from softtargets.write import Dense, LogitWriter, TopK  # noqa: E402
from softtargets.write.forward import forward, resolve_device  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section runs on; `tiny` shrinks everything for the CPU dry run."""

    cnn_rows: int = 4096
    image: int = 224
    classes: int = 1000
    cnn_batch: int = 256
    seqs: int = 16
    seq_len: int = 1024
    gpt_batch: int = 8
    k: int = 32
    student_rows: int = 50_000
    student_batch: int = 512
    student_width: int = 64
    workers: int = min(8, max(1, (os.cpu_count() or 2) // 2))
    repeat: int = 3
    warmup: int = 1  # untimed rounds first (cuDNN autotuning, page cache, lazy init)

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(cnn_rows=64, image=32, classes=10, cnn_batch=16, seqs=4, seq_len=64,
                   gpt_batch=2, k=8, student_rows=256, student_batch=64, student_width=4, workers=0,
                   repeat=1, warmup=0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rate(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device,
              per_row: int = 1) -> Callable[[], float]:
    """The teacher alone: stage 1's forward (fp16 autocast on CUDA) over inputs already on the
    device, batch by batch, outputs discarded; rows (x per_row) per second."""
    def run() -> float:
        sync(device)
        t0 = time.perf_counter()
        for a in range(0, len(x), batch):
            forward(model, x[a:a + batch], device)
        sync(device)
        return len(x) * per_row / (time.perf_counter() - t0)
    return run


def e2e_rate(model: nn.Module, data: Any, url: Path, batch: int, device: torch.device,
             per_row: int = 1, **options: Any) -> Callable[[], float]:
    """write_logits into a fresh store: inputs from the dataset, forward, checks, writes."""
    def run() -> float:
        t0 = time.perf_counter()
        write_logits(model, data, str(url), batch_size=batch, device=str(device),
                     overwrite=True, **options)
        return len(data) * per_row / (time.perf_counter() - t0)
    return run


@torch.inference_mode()
def fp32_logits(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """The teacher's logits in fp32 (no autocast, fp32 matmuls), on the CPU."""
    matmul = torch.backends.cuda.matmul
    before, matmul.allow_tf32 = matmul.allow_tf32, False
    cudnn, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
    try:
        return torch.cat([model(x[a:a + batch]).float().cpu() for a in range(0, len(x), batch)])
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before, cudnn


def stage1_cnn(s: Sizes, device: torch.device, work: Path, info: dict[str, Any]) -> list[Row]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (s.cnn_rows, 3, s.image, s.image), dtype=np.uint8)
    data = from_tensors(images, rng.integers(0, s.classes, s.cnn_rows), num_classes=s.classes,
                        name="random-images")
    torch.manual_seed(0)
    model = resnet50(s.classes, tiny=s.image < 64).to(device).eval()
    x = torch.from_numpy(images).to(device)  # (N, 3, H, W) uint8
    url = work / "cnn.zarr"
    got = interleaved({"e2e": e2e_rate(model, data, url, s.cnn_batch, device),
                       "bare": bare_rate(model, x, s.cnn_batch, device)}, repeat=s.repeat,
                      warmup=s.warmup)
    stored = SoftTargets(str(url), temperature=1.0).batch(list(range(s.cnn_rows))).logits
    ref = fp32_logits(model, x, s.cnn_batch)  # (N, C)
    diff = (stored.float() - ref).abs().max().item()
    info["cnn"] = {"parameters": parameters(model), "rows": s.cnn_rows, "image": s.image,
                   "batch": s.cnn_batch, "e2e_rows_s": got["e2e"], "bare_rows_s": got["bare"],
                   "max_abs_diff_fp16_vs_fp32": diff,
                   "max_abs_fp32_logit": ref.abs().max().item()}
    name = f"ResNet-50-sized CNN {parameters(model) / 1e6:.1f}M, {s.cnn_rows:,} x {s.image}px"
    return [_paired_row(f"stage 1 write_logits / bare forward, {name}, {device.type} (rows/s)",
                        got["e2e"], got["bare"], ">= 0.90", lambda r: r >= 0.90),
            _row("  stored fp16 logits vs fp32 forward: max |diff| / max |logit|", diff,
                 info["cnn"]["max_abs_fp32_logit"], diff / max(info["cnn"]["max_abs_fp32_logit"],
                                                               1e-12), "(info)", None)]


def stage1_gpt(s: Sizes, device: torch.device, work: Path, info: dict[str, Any]) -> list[Row]:
    torch.manual_seed(0)
    model = gpt(tiny=s.seq_len < 256).to(device).eval()
    vocab = model.tok.num_embeddings
    tokens = np.random.default_rng(1).integers(0, vocab, s.seqs * s.seq_len + 1)
    path = work / "tokens.bin"
    tokens.astype("<u2").tofile(path)
    text = TokenSequences(path, seq_len=s.seq_len, vocab_size=vocab)
    x = torch.from_numpy(text.inputs(slice(0, len(text))).astype(np.int64)).to(device)  # (S, L)
    url = work / "gpt.zarr"
    got = interleaved({"e2e": e2e_rate(model, text, url, s.gpt_batch, device, s.seq_len,
                                       targets=TopK(s.k)),
                       "bare": bare_rate(model, x, s.gpt_batch, device, s.seq_len),
                       "bare1": bare_rate(model, x, 1, device, s.seq_len)}, repeat=s.repeat,
                      warmup=s.warmup)
    g = zarr.open_group(str(url), mode="r")
    ids = torch.from_numpy(g["topk_ids"][:].astype(np.int64))  # (S * L, K)
    vals = torch.from_numpy(g["topk_logits"][:].astype(np.float32))
    ref = fp32_logits(model, x, s.gpt_batch).reshape(-1, vocab)  # (S * L, V)
    diff = (vals - ref.gather(1, ids)).abs().max().item()
    info["gpt"] = {"parameters": parameters(model), "sequences": s.seqs, "seq_len": s.seq_len,
                   "vocab": vocab, "k": s.k, "batch": s.gpt_batch,
                   "chunk_rows": int(g.attrs["softtargets"]["chunk_rows"]),
                   "e2e_tokens_s": got["e2e"], "bare_tokens_s": got["bare"],
                   "bare_batch1_tokens_s": got["bare1"], "max_abs_diff_fp16_vs_fp32": diff,
                   "max_abs_fp32_logit": ref.abs().max().item()}
    name = f"GPT {parameters(model) / 1e6:.0f}M, {s.seqs} x {s.seq_len} tokens, top-{s.k}"
    return [_paired_row(f"stage 1 write_logits / bare forward, {name}, {device.type} "
                        "(tokens/s)", got["e2e"], got["bare"], ">= 0.90", lambda r: r >= 0.90),
            _paired_row(f"  bare forward batch 1 / batch {s.gpt_batch} sequences (tokens/s)",
                        got["bare1"], got["bare"], "(info)", None),
            _row("  stored top-k fp16 values vs fp32 forward: max |diff| / max |logit|", diff,
                 info["gpt"]["max_abs_fp32_logit"],
                 diff / max(info["gpt"]["max_abs_fp32_logit"], 1e-12), "(info)", None)]


class Student(nn.Module):
    """A small CNN student: uint8 (B, 3, 32, 32) -> (B, classes)."""

    def __init__(self, classes: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


def student_epoch(loader: Any, device: torch.device, s: Sizes) -> Callable[[], float]:
    """One epoch of the GPU student over `loader` (same init each time); rows/s."""
    def run() -> float:
        torch.manual_seed(0)
        model = Student(s.classes, s.student_width).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        rows = 0
        sync(device)
        t0 = time.perf_counter()
        for x, y, target in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = distillation_loss(model(x), target.to(device), y, temperature=4.0, alpha=0.9)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rows += len(y)
        sync(device)
        run.rows = rows  # type: ignore[attr-defined]  # checked by the caller
        return time.perf_counter() - t0
    return run


def stage2(s: Sizes, device: torch.device, work: Path, info: dict[str, Any]) -> list[Row]:
    rng = np.random.default_rng(2)
    n = s.student_rows
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    data = from_tensors(images, rng.integers(0, s.classes, n), num_classes=s.classes,
                        name="random-32px")
    url = str(work / "student.zarr")
    with LogitWriter(url, dataset=data, targets=Dense(), overwrite=True) as w:
        for a in range(0, n, 8192):
            ids = data.ids(slice(a, min(n, a + 8192)))
            w.append(ids, rng.normal(0, 3, (len(ids), s.classes)).astype(np.float32))
    pre = torch.utils.data.DataLoader(
        DistillDataset(data, SoftTargets(url, temperature=4.0)), batch_size=s.student_batch,
        shuffle=True, num_workers=s.workers, collate_fn=DistillDataset.collate,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
        persistent_workers=s.workers > 0)  # targets read once per worker, not every epoch
    stream = StreamingDistillDataset(data, url, temperature=4.0, batch_size=s.student_batch,
                                     seed=0).loader(num_workers=s.workers,
                                                    pin_memory=device.type == "cuda")
    runs = {"streamed": student_epoch(stream, device, s),
            "preloaded": student_epoch(pre, device, s)}
    got = interleaved(runs, repeat=s.repeat, warmup=s.warmup)
    seen = {name: run.rows for name, run in runs.items()}  # type: ignore[attr-defined]
    if set(seen.values()) != {n}:
        raise RuntimeError(f"student epochs saw {seen} rows, the store has {n}")
    info["stage2"] = {"rows": n, "batch": s.student_batch, "workers": s.workers,
                      "streamed_s": got["streamed"], "preloaded_s": got["preloaded"]}
    return [_paired_row(f"stage 2 student epoch streamed / preloaded ({n:,} rows x "
                        f"{s.classes} classes, {s.workers} workers, {device.type} student, s)",
                        got["streamed"], got["preloaded"], "<= 1.05", lambda r: r <= 1.05)]


SECTIONS = {"cnn": stage1_cnn, "gpt": stage1_gpt, "stage2": stage2}


def environment(device: torch.device) -> dict[str, Any]:
    env = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
           "device": str(device), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        env |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version()}
    return env


def write_results(out: Path, rows: list[Row], info: dict[str, Any]) -> str:
    env = info["environment"]
    text = (f"# GPU check, {env.get('gpu', env['device'])}, torch {env['torch']}, {env['cpus']} "
            f"CPUs, {env['date']}\n\n" + table(rows) + "\n")
    save_results(out, {"rows": rows, **info}, text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the dry run)")
    p.add_argument("--tiny", action="store_true", help="tiny models and data: seconds on a CPU")
    p.add_argument("--out", default="runs/gpu-check", help="results.json and results.md")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except SofttargetsError as e:  # e.g. cuda asked for on a machine without it
        print(f"Error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    sizes = Sizes.tiny() if args.tiny else Sizes()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    info: dict[str, Any] = {"environment": environment(device), "sizes": dataclasses.asdict(sizes),
                            "errors": {}, "seconds": {}}
    with tempfile.TemporaryDirectory(dir=out) as tmp:  # the stores: deleted at the end
        for name in args.only:
            t0 = time.perf_counter()
            try:
                rows += SECTIONS[name](sizes, device, Path(tmp), info)
            except Exception as e:  # keep the other sections' numbers; the error is recorded
                info["errors"][name] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            info["seconds"][name] = time.perf_counter() - t0
            write_results(out, rows, info)
            print(f"# {name}: {info['seconds'][name]:.0f} s", file=sys.stderr, flush=True)
    print(write_results(out, rows, info))
    return 1 if info["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
