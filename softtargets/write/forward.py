"""The one forward pass of stage 1 and its overlap with input preparation and writes.

The forward pass is the only thing on the critical path: input batches are prepared ahead of it
in a thread (pinned, copied non_blocking on CUDA) and finished units are cast, compressed and
written behind it by a background writer with a bounded queue (`write_chunks`). On CUDA the
teacher runs under fp16 autocast with fp32 accumulation; on a CPU in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from softtargets.errors import ConfigError
from softtargets.pipeline import BackgroundWorker, prefetch

WRITE_QUEUE = 2  # finished chunks waiting for the writer: bounds memory to a few chunks


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use 'cpu' or "
                          "'auto'")
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


def as_input(x: np.ndarray) -> torch.Tensor:
    """A numpy batch as a tensor without a copy where possible (read-only arrays are copied:
    torch tensors are writable)."""
    x = np.asarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def input_batches(source: Any, chunks: Iterable[tuple[int, slice]], *, batch_size: int,
                  device: torch.device, channels_last: bool = False,
                  ) -> Iterator[tuple[int, torch.Tensor, bool]]:
    """(unit index, inputs (B, ...) on device, last batch of the unit?) in order; `source` is a
    Split or softtargets dataset (`inputs(rows)` returns a numpy batch)."""
    for index, sl in chunks:
        for start in range(sl.start, sl.stop, batch_size):
            stop = min(sl.stop, start + batch_size)
            x = as_input(source.inputs(slice(start, stop)))  # (B, ...) e.g. (B, H*W) float32
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if device.type == "cuda":
                x = x.pin_memory().to(device, non_blocking=True)
            yield index, x, stop == sl.stop


@torch.inference_mode()
def model_output(model: Any, x: torch.Tensor, device: torch.device) -> Any:
    """What `model(x)` returns, run the one way stage 1 runs a teacher: fp16 autocast with fp32
    accumulation on CUDA, fp32 on a CPU (callers check the output)."""
    with autocast(device), fp32_accumulation(device):
        return model(x)


def forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits (B, C) (or (B, L, C) per position) float32, cast up from the teacher's output
    before the store's checked fp16 cast."""
    return model_output(model, x, device).float()


def infer(model: torch.nn.Module, inputs: np.ndarray, *, batch_size: int,
          device: torch.device) -> np.ndarray:
    """Logits (R, C) float32 of in-memory inputs (R, D) float32, batch by batch (no overlap)."""
    out = [forward(model, torch.from_numpy(inputs[i:i + batch_size]).to(device), device).cpu()
           for i in range(0, len(inputs), batch_size)]
    return torch.cat(out).numpy()


WriteUnit = Callable[..., None]  # (index, *, sample_ids (rows,), logits (rows, C)) -> None


def write_chunks(slice_of: Callable[[int], slice], write_unit: WriteUnit, model: torch.nn.Module,
                 split: Any, chunks: Iterable[int], *, batch_size: int, device: torch.device,
                 channels_last: bool = False, prefetch_batches: int = 2,
                 on_rows: Callable[[int], object] | None = None,
                 before_unit: Callable[[int], object] | None = None) -> None:
    """Compute and write the units `chunks` (rows `slice_of(i)`, any subset, any order).

    `write_unit` is a store writer's or write session's whole-unit write; nothing is finalized.
    Inputs are prepared `prefetch_batches` ahead in a thread; each finished unit goes to one
    background writer thread (cast to fp16 with range checks, compression, write). An error in
    either thread is raised here, and then the caller must not finalize the store.
    `before_unit(i)` runs before unit i's first forward, in this thread (e.g. to seed
    MC-dropout masks per unit).
    """
    spans = ((i, slice_of(i)) for i in chunks)
    batches = prefetch(input_batches(split, spans, batch_size=batch_size, device=device,
                                     channels_last=channels_last),
                       depth=prefetch_batches, name="teacher-inputs")

    def write(item: tuple[int, list[torch.Tensor]]) -> None:
        index, parts = item
        sl = slice_of(index)
        logits = torch.cat(parts).cpu().numpy()  # (rows, [L,] C) float32; waits for the GPU
        write_unit(index, sample_ids=np.arange(sl.start, sl.stop), logits=logits)
        if on_rows is not None:
            on_rows(sl.stop - sl.start)

    background: BackgroundWorker = BackgroundWorker(write, depth=WRITE_QUEUE, name="writer")
    parts: list[torch.Tensor] = []
    try:
        for index, x, last in batches:
            if before_unit is not None and not parts:
                before_unit(index)
            parts.append(forward(model, x, device))  # (B, [L,] C) float32
            if last:
                background.submit((index, parts))
                parts = []
    except BaseException:
        background.abort()
        raise
    background.close()
