"""Stage 1: run a teacher over a dataset split and write its logits to a store."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import numpy as np
import torch

from softtargets.config import LogitsConfig, to_dict
from softtargets.data import Split, load_split
from softtargets.distributed import Ranks, ranks_from_env
from softtargets.errors import CheckpointError, ConfigError
from softtargets.models import Checkpoint, load_checkpoint
from softtargets.session import WriteSession
from softtargets.sparse_store import SparseSpec, SparseWriter, make_spec
from softtargets.store import StoreMeta
from softtargets.progress import bar as progress_bar


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use 'cpu' or 'auto'")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    return torch.device(name)


@torch.inference_mode()
def infer(model: torch.nn.Module, inputs: np.ndarray, *, batch_size: int,
          device: torch.device) -> np.ndarray:
    """Logits (R, C) float32 of inputs (R, D) float32; fp16 autocast on CUDA, fp32 on CPU."""
    # Low precision on this kind of CPU is ~400x slower than fp32: autocast is a GPU path only.
    autocast = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda"
                else contextlib.nullcontext())
    out = []
    for start in range(0, len(inputs), batch_size):
        x = torch.from_numpy(inputs[start:start + batch_size]).to(device, non_blocking=True)
        with autocast:
            logits = model(x)
        out.append(logits.float().cpu().numpy())  # accumulate in fp32, cast to fp16 on write
    return np.concatenate(out)


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
    ranks = ranks_from_env()  # torchrun: several writers, each a disjoint set of whole units
    device = resolve_device(cfg.device)
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    model = ckpt.model.to(device).eval()
    if cfg.views is not None:  # issue 7: augmented views, one writer
        return write_views(cfg, split=split, model=model, ranks=ranks,
                           teacher=teacher_identity(ckpt, device), device=device)
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
        for index in session.todo:  # whole chunks, or whole shards when sharded
            sl = session.writer.unit_slice(index)
            logits = infer(model, split.inputs(sl), batch_size=cfg.batch_size,
                           device=device)  # (rows, C)
            session.write(index, sample_ids=np.arange(sl.start, sl.stop), logits=logits)
            bar.update(sl.stop - sl.start)
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
    for index in range(writer.num_chunks):
        sl = writer.chunk_slice(index)
        logits = infer(model, split.inputs(sl), batch_size=cfg.batch_size,
                       device=device)  # (rows, C)
        writer.write_chunk(index, sample_ids=np.arange(sl.start, sl.stop), logits=logits)
        bar.update(sl.stop - sl.start)
    bar.close()
    return writer.finalize()


# --- issue 7: augmented views ------------------------------------------------------------------

def write_views(cfg: LogitsConfig, *, split: Split, model: torch.nn.Module, ranks: Ranks,
                teacher: dict[str, Any], device: torch.device) -> StoreMeta:
    """Dense store plus view_logits (N, V, C) float16 and view_params (N, V, P) float32; `logits`
    holds view 0. Not yet available with --resume, sharding, several ranks or sparse forms."""
    from softtargets import views as vw
    from softtargets.store import StoreWriter, add_row_array, compressor_codecs, to_float16
    if (cfg.resume or (cfg.shard_rows or 0) > 0 or ranks.world > 1 or cfg.topk is not None
            or cfg.sample is not None):
        raise ConfigError("--views stores are dense and written by one process without --resume"
                          f", --shard-rows, --topk or --sample (got resume={cfg.resume}, "
                          f"shard_rows={cfg.shard_rows}, world size {ranks.world}); drop those")
    spec = vw.parse_spec(cfg.augment)
    v = int(cfg.views or 0)
    writer = StoreWriter.create(cfg.store, n=len(split), class_names=split.class_names,
                                dataset=split.identity(), teacher=teacher, config=to_dict(cfg),
                                chunk_rows=cfg.chunk_rows, compressor=cfg.compressor,
                                overwrite=cfg.overwrite)
    rows, c = writer.meta.chunk_rows, writer.meta.num_classes
    codecs = compressor_codecs(cfg.compressor)
    vl = add_row_array(writer.group, "view_logits", n=len(split), row_shape=(v, c),
                       chunk_rows=rows, dtype="float16", codecs=codecs, fill_value=float("nan"),
                       dimension_names=("row", "view", "class"))
    vp = add_row_array(writer.group, "view_params", n=len(split),
                       row_shape=(v, len(vw.PARAM_NAMES)), chunk_rows=rows, dtype="float32",
                       codecs=compressor_codecs(cfg.compressor), fill_value=float("nan"),
                       dimension_names=("row", "view", "param"))
    for index in range(writer.num_chunks):
        sl = writer.chunk_slice(index)
        ids = np.arange(sl.start, sl.stop)
        params = vw.draw_params(spec, seed=cfg.view_seed, sample_ids=ids, views=v)  # (R, V, P)
        images = np.repeat(split.images[sl], v, axis=0)  # (R*V, H, W)
        x = vw.apply_views(images, params.reshape(-1, params.shape[-1])).numpy()
        logits = infer(model, x, batch_size=cfg.batch_size, device=device).reshape(-1, v, c)
        vl[sl] = to_float16(logits.reshape(-1, c), first_row=sl.start).reshape(-1, v, c)
        vp[sl] = params
        writer.write_chunk(index, sample_ids=ids, logits=logits[:, 0])  # v1 logits: view 0
    writer.meta = dataclasses.replace(writer.meta, extra={**writer.meta.extra, "views": {
        "views": v, "seed": cfg.view_seed, "augment": spec.to_json(),
        "param_names": list(vw.PARAM_NAMES), "logits_is_view": 0}})
    return writer.finalize()


def run(cfg: LogitsConfig, *, progress: bool = True) -> tuple[StoreMeta, float]:
    """write_teacher_logits plus its wall time in seconds."""
    t0 = time.perf_counter()
    meta = write_teacher_logits(cfg, progress=progress)
    return meta, time.perf_counter() - t0
