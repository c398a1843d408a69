"""Stage 1: run a teacher over a dataset split and write its logits to a store.

The forward pass is the only thing on the critical path: input batches are prepared ahead of it
in a thread (pinned, copied non_blocking on CUDA) and finished chunks are cast, compressed and
written behind it by a background writer with a bounded queue (`write_chunks`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from softtargets.config import LogitsConfig, to_dict
from softtargets.data import Split, check_not_trained_on_validation, load_split
from softtargets.distributed import Ranks, ranks_from_env
from softtargets.errors import CheckpointError, ConfigError
from softtargets.models import Checkpoint, load_checkpoint
from softtargets.pipeline import BackgroundWorker, prefetch
from softtargets.progress import bar as progress_bar
from softtargets.session import RowArray, WriteSession
from softtargets.sparse_store import SparseSpec, SparseWriter, make_spec
from softtargets.store import StoreMeta

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


def infer(model: torch.nn.Module, inputs: np.ndarray, *, batch_size: int,
          device: torch.device) -> np.ndarray:
    """Logits (R, C) float32 of in-memory inputs (R, D) float32, batch by batch (no overlap)."""
    out = [forward(model, torch.from_numpy(inputs[i:i + batch_size]).to(device), device).cpu()
           for i in range(0, len(inputs), batch_size)]
    return torch.cat(out).numpy()


WriteUnit = Callable[..., None]  # (index, *, sample_ids (rows,), logits (rows, C)) -> None


def write_chunks(slice_of: Callable[[int], slice], write_unit: WriteUnit, model: torch.nn.Module,
                 split: Split, chunks: Iterable[int], *, batch_size: int, device: torch.device,
                 channels_last: bool = False, prefetch_batches: int = 2,
                 on_rows: Callable[[int], object] | None = None) -> None:
    """Compute and write the units `chunks` (rows `slice_of(i)`, any subset, any order).

    `write_unit` is a store writer's or write session's whole-unit write; nothing is finalized.
    Inputs are prepared `prefetch_batches` ahead in a thread; each finished unit goes to one
    background writer thread (cast to fp16 with range checks, compression, write). An error in
    either thread is raised here, and then the caller must not finalize the store.
    """
    spans = ((i, slice_of(i)) for i in chunks)
    batches = prefetch(input_batches(split, spans, batch_size=batch_size, device=device,
                                     channels_last=channels_last),
                       depth=prefetch_batches, name="teacher-inputs")

    def write(item: tuple[int, list[torch.Tensor]]) -> None:
        index, parts = item
        sl = slice_of(index)
        logits = torch.cat(parts).cpu().numpy()  # (rows, C) float32; waits for the GPU here
        write_unit(index, sample_ids=np.arange(sl.start, sl.stop), logits=logits)
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
    check_not_trained_on_validation(ckpt.dataset, split, f"teacher {cfg.teacher!r}")
    if ckpt.class_names and tuple(ckpt.class_names) != tuple(split.class_names):
        raise CheckpointError(f"teacher {cfg.teacher!r} was trained on classes "
                              f"{list(ckpt.class_names)}, dataset {split.name} has "
                              f"{list(split.class_names)}")
    ranks = ranks_from_env()  # torchrun: several writers, each a disjoint set of whole units
    device = resolve_device(cfg.device)
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    model = prepare_model(ckpt.model, device, channels_last=cfg.channels_last,
                          compile=cfg.compile)
    if cfg.views is not None:  # issue 7: augmented views, one writer
        return write_views(cfg, split=split, model=model, ranks=ranks,
                           teacher=teacher_identity(ckpt, device), device=device,
                           progress=progress)
    sparse = sparse_spec(cfg, num_classes=len(split.class_names))
    if sparse is not None:  # issue 6: top-k / sampled store, one writer
        return write_sparse(cfg, sparse, split=split, model=model, ranks=ranks,
                            teacher=teacher_identity(ckpt, device), device=device,
                            progress=progress)
    session = WriteSession(cfg, n=len(split), class_names=split.class_names,
                           dataset=split.identity(), teacher=teacher_identity(ckpt, device),
                           ranks=ranks, device_type=device.type)
    with session:
        rows_todo = sum(session.writer.unit_slice(i).stop - session.writer.unit_slice(i).start
                        for i in session.todo)
        bar = progress_bar(total=rows_todo, desc="teacher-logits", unit="row", enabled=progress)
        # whole chunks, or whole shards when sharded; forward pass overlapped with I/O
        if session.todo:  # nothing to do (and no writer) when resuming a complete store
            write_chunks(session.writer.unit_slice, session.write, model, split, session.todo,
                         batch_size=cfg.batch_size, device=device,
                         channels_last=cfg.channels_last, on_rows=bar.update)
        bar.close()
    return session.meta


# --- issue 6: sparse stores ------------------------------------------------------------------

def sparse_spec(cfg: LogitsConfig, *, num_classes: int) -> SparseSpec | None:
    """The sparse form asked for by --topk / --sample, or None for a dense store."""
    if cfg.topk is None and cfg.sample is None:
        return None
    kind, k = ("topk", cfg.topk) if cfg.topk is not None else ("sampled", cfg.sample)
    return make_spec(kind=kind, k=k, num_classes=num_classes, temperatures=cfg.temperatures,
                     seed=cfg.sample_seed, sample_temperature=cfg.sample_temperature)


def write_sparse(cfg: LogitsConfig, spec: SparseSpec, *, split: Split, model: torch.nn.Module,
                 ranks: Ranks, teacher: dict[str, Any], device: torch.device,
                 progress: bool) -> StoreMeta:
    """Stage 1 into a sparse store: each dense chunk is converted, then written; finalize last.

    Not yet available for sparse stores: --resume, sharding and several ranks (refused).
    """
    if cfg.resume or (cfg.shard_rows or 0) > 0 or ranks.world > 1:
        raise ConfigError("--topk/--sample stores are written by one process without --resume "
                          f"or --shard-rows (got resume={cfg.resume}, shard_rows={cfg.shard_rows}"
                          f", world size {ranks.world}); drop those options")
    writer = SparseWriter.create(
        cfg.store, spec=spec, n=len(split), class_names=split.class_names,
        dataset=split.identity(), teacher=teacher, config=to_dict(cfg),
        chunk_rows=cfg.chunk_rows, compressor=cfg.compressor, overwrite=cfg.overwrite)
    bar = progress_bar(total=len(split), desc="teacher-logits", unit="row", enabled=progress)
    write_chunks(writer.chunk_slice, writer.write_chunk, model, split, range(writer.num_chunks),
                 batch_size=cfg.batch_size, device=device, on_rows=bar.update)
    bar.close()
    return writer.finalize()


# --- issue 7: augmented views ------------------------------------------------------------------

def write_views(cfg: LogitsConfig, *, split: Split, model: torch.nn.Module, ranks: Ranks,
                teacher: dict[str, Any], device: torch.device,
                progress: bool = True) -> StoreMeta:
    """Dense store plus view_logits (N, V, C) float16 and view_params (N, V, P) float32; `logits`
    holds view 0. Written in a WriteSession, so sharding, --resume and torchrun ranks work as for
    plain stores (each rank writes whole units of all three arrays)."""
    from softtargets import views as vw
    if cfg.topk is not None or cfg.sample is not None:
        raise ConfigError("--views stores are dense: drop --topk/--sample or --views")
    spec = vw.parse_spec(cfg.augment)
    v, c = int(cfg.views or 0), len(split.class_names)
    arrays = (RowArray(vw.VIEW_LOGITS, (v, c), "float16", ("row", "view", "class")),
              RowArray(vw.VIEW_PARAMS, (v, len(spec.param_names)), "float32",
                       ("row", "view", "param"), all_finite=False))  # NaN: user aug. off
    session = WriteSession(cfg, n=len(split), class_names=split.class_names,
                           dataset=split.identity(), teacher=teacher, ranks=ranks,
                           device_type=device.type, arrays=arrays,
                           extra={"views": vw.views_info(spec, views=v, seed=cfg.view_seed)})
    with session:
        bar = progress_bar(total=len(session.todo), desc="teacher-logits", unit="unit",
                           enabled=progress)
        for index in session.todo:
            sl = session.writer.unit_slice(index)
            ids = np.arange(sl.start, sl.stop)
            params = vw.draw_params(spec, seed=cfg.view_seed, sample_ids=ids, views=v)  # (R,V,P)
            images = np.repeat(split.images[sl], v, axis=0)  # (R*V, H, W)
            x = vw.apply_views(images, params.reshape(-1, params.shape[-1]), spec=spec).numpy()
            logits = infer(model, x, batch_size=cfg.batch_size, device=device).reshape(-1, v, c)
            session.write(index, sample_ids=ids, logits=logits[:, 0],  # v1 logits: view 0
                          rows={vw.VIEW_LOGITS: logits, vw.VIEW_PARAMS: params})
            bar.update()
        bar.close()
    return session.meta


def run(cfg: LogitsConfig, *, progress: bool = True) -> tuple[StoreMeta, float]:
    """write_teacher_logits plus its wall time in seconds."""
    t0 = time.perf_counter()
    meta = write_teacher_logits(cfg, progress=progress)
    return meta, time.perf_counter() - t0
