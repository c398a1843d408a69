"""Stage 1: run a teacher over a dataset split and write its logits to a store.

The forward pass is the only thing on the critical path: input batches are prepared ahead of it
in a thread (pinned, copied non_blocking on CUDA) and finished chunks are cast, compressed and
written behind it by a background writer with a bounded queue (`write_chunks`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from softtargets.config import LogitsConfig, to_dict
from softtargets.data import load_split
from softtargets.errors import CheckpointError, ConfigError
from softtargets.data import Split
from softtargets.models import Checkpoint, load_checkpoint
from softtargets.pipeline import BackgroundWorker, prefetch
from softtargets.store import StoreMeta, StoreWriter

WRITE_QUEUE = 2  # finished chunks waiting for the writer: bounds memory to a few chunks


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use 'cpu' or 'auto'")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA; fp32 on CPU (low precision there is ~400x slower than fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def fp32_accumulation(device: torch.device) -> Iterator[None]:
    """On CUDA, make fp16 matmuls accumulate in fp32 (cuBLAS may reduce in fp16 otherwise)."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_fp16_reduced_precision_reduction
    matmul.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_fp16_reduced_precision_reduction = before


def prepare_model(model: torch.nn.Module, device: torch.device, *, channels_last: bool = False,
                  compile: bool = False) -> torch.nn.Module:
    """The model on `device` in eval mode, optionally channels_last and torch.compile'd."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


def input_batches(split: Split, chunks: Iterable[tuple[int, slice]], *, batch_size: int,
                  device: torch.device, channels_last: bool = False,
                  ) -> Iterator[tuple[int, torch.Tensor, bool]]:
    """(chunk index, inputs (B, D) float32 on device, last batch of the chunk?) in order."""
    for index, sl in chunks:
        for start in range(sl.start, sl.stop, batch_size):
            stop = min(sl.stop, start + batch_size)
            x = torch.from_numpy(split.inputs(slice(start, stop)))  # (B, H*W) float32
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
            yield index, x, stop == sl.stop


@torch.inference_mode()
def forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits (B, C) float32 (fp16 autocast on CUDA, cast up before the store's fp16 cast)."""
    with autocast(device), fp32_accumulation(device):
        return model(x).float()


def write_chunks(writer: StoreWriter, model: torch.nn.Module, split: Split,
                 chunks: Iterable[int], *, batch_size: int, device: torch.device,
                 channels_last: bool = False, prefetch_batches: int = 2,
                 on_rows: Callable[[int], object] | None = None) -> None:
    """Compute and write the chunks `chunks` of `writer` (any subset, any order); no finalize.

    Inputs are prepared `prefetch_batches` ahead in a thread; each finished chunk goes to one
    background writer thread (cast to fp16 with range checks, compression, write). An error in
    either thread is raised here, and then the caller must not finalize the store.
    """
    spans = ((i, writer.chunk_slice(i)) for i in chunks)
    batches = prefetch(input_batches(split, spans, batch_size=batch_size, device=device,
                                     channels_last=channels_last),
                       depth=prefetch_batches, name="teacher-inputs")

    def write(item: tuple[int, list[torch.Tensor]]) -> None:
        index, parts = item
        sl = writer.chunk_slice(index)
        logits = torch.cat(parts).cpu().numpy()  # (rows, C) float32; waits for the GPU here
        writer.write_chunk(index, sample_ids=np.arange(sl.start, sl.stop), logits=logits)
        if on_rows is not None:
            on_rows(sl.stop - sl.start)

    background: BackgroundWorker = BackgroundWorker(write, depth=WRITE_QUEUE, name="writer")
    parts: list[torch.Tensor] = []
    try:
        for index, x, last in batches:
            parts.append(forward(model, x, device))  # (B, C) float32
            if last:
                background.submit((index, parts))
                parts = []
    except BaseException:
        background.abort()
        raise
    background.close()


def teacher_identity(ckpt: Checkpoint, device: torch.device) -> dict:
    """What the store records about the teacher that produced it."""
    return {"arch": ckpt.spec.describe(), "model": ckpt.spec.to_json(),
            "checkpoint": ckpt.path, "checkpoint_sha256": ckpt.sha256,
            "trained_on": ckpt.dataset, "torch": str(torch.__version__), "device": str(device),
            "precision": "fp16-autocast" if device.type == "cuda" else "fp32"}


def write_teacher_logits(cfg: LogitsConfig, *, progress: bool = True) -> StoreMeta:
    """Run stage 1 end to end. The store is marked complete only after every chunk is written."""
    split = load_split(cfg.data)
    ckpt = load_checkpoint(cfg.teacher, expect_classes=len(split.class_names))
    if ckpt.class_names and tuple(ckpt.class_names) != tuple(split.class_names):
        raise CheckpointError(f"teacher {cfg.teacher!r} was trained on classes "
                              f"{list(ckpt.class_names)}, dataset {split.name} has "
                              f"{list(split.class_names)}")
    device = resolve_device(cfg.device)
    model = prepare_model(ckpt.model, device, channels_last=cfg.channels_last,
                          compile=cfg.compile)
    writer = StoreWriter.create(
        cfg.store, n=len(split), class_names=split.class_names, dataset=split.identity(),
        teacher=teacher_identity(ckpt, device), config=to_dict(cfg), chunk_rows=cfg.chunk_rows,
        compressor=cfg.compressor, overwrite=cfg.overwrite)
    bar = tqdm(total=len(split), desc="teacher-logits", unit="row", disable=not progress)
    write_chunks(writer, model, split, range(writer.num_chunks), batch_size=cfg.batch_size,
                 device=device, channels_last=cfg.channels_last, on_rows=bar.update)
    bar.close()
    return writer.finalize()


def run(cfg: LogitsConfig, *, progress: bool = True) -> tuple[StoreMeta, float]:
    """write_teacher_logits plus its wall time in seconds."""
    t0 = time.perf_counter()
    meta = write_teacher_logits(cfg, progress=progress)
    return meta, time.perf_counter() - t0
