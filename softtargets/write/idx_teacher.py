"""Stage 1 from the command line: run a softtargets teacher checkpoint over an IDX split and
write its logits (dense, top-k or sampled; with views) through the one write session.

The forward pass and its overlap with input preparation and writes are in softtargets.write.forward
(re-exported here).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from softtargets.config import LogitsConfig
from softtargets.datasets.idx_files import Split, check_not_trained_on_validation, load_split
from softtargets.write.distributed import Ranks, ranks_from_env
from softtargets.errors import CheckpointError, ConfigError
from softtargets.recipes.hinton2015.models import Checkpoint, load_checkpoint
from softtargets.progress import bar as progress_bar
from softtargets.format.store import StoreMeta
from softtargets.write.forward import (WRITE_QUEUE, WriteUnit, as_input,  # noqa: F401 re-exported
                                       autocast, forward, fp32_accumulation, infer,
                                       input_batches, prepare_model, resolve_device,
                                       write_chunks)
from softtargets.write.session import RowArray, WriteSession
from softtargets.write.targets import targets_of_config


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
    if cfg.views is not None:  # augmented views: dense units of three arrays
        return write_views(cfg, split=split, model=model, ranks=ranks,
                           teacher=teacher_identity(ckpt, device), device=device,
                           progress=progress)
    session = WriteSession(cfg, n=len(split), class_names=split.class_names,
                           dataset=split.identity(), teacher=teacher_identity(ckpt, device),
                           ranks=ranks, device_type=device.type, targets=targets_of_config(cfg))
    with session:
        rows_todo = sum(session.writer.unit_slice(i).stop - session.writer.unit_slice(i).start
                        for i in session.todo)
        bar = progress_bar(total=rows_todo, desc="teacher-logits", unit="row", enabled=progress)
        # whole chunks, or whole shards when sharded; forward pass overlapped with I/O; top-k
        # and sampled units are converted from the dense values by the session's writer
        if session.todo:  # nothing to do (and no writer) when resuming a complete store
            write_chunks(session.writer.unit_slice, session.write, model, split, session.todo,
                         batch_size=cfg.batch_size, device=device,
                         channels_last=cfg.channels_last, on_rows=bar.update)
        bar.close()
    return session.meta


# --- augmented views ----------------------------------------------------------------------------

def write_views(cfg: LogitsConfig, *, split: Split, model: torch.nn.Module, ranks: Ranks,
                teacher: dict[str, Any], device: torch.device,
                progress: bool = True) -> StoreMeta:
    """Dense store plus view_logits (N, V, C) float16 and view_params (N, V, P) float32; `logits`
    holds view 0. Written in a WriteSession, so sharding, --resume and torchrun ranks work as for
    plain stores (each rank writes whole units of all three arrays)."""
    from softtargets.augment import views as vw
    from softtargets.augment.mix import parse_mix
    from softtargets.augment.source import ViewInputs, Views
    from softtargets.datasets.idx import IDXDataset
    if cfg.topk is not None or cfg.sample is not None:
        raise ConfigError("--views stores are dense: drop --topk/--sample or --views")
    source = ViewInputs(IDXDataset.from_split(split), Views(
        count=int(cfg.views or 0), augment=vw.parse_spec(cfg.augment), seed=cfg.view_seed,
        mix=parse_mix(cfg.mix)), flat=True)  # (R*V, H*W)
    views = source.views  # mixed views: partners among the split's sample ids
    v, c = views.count, len(split.class_names)
    arrays = (RowArray(vw.VIEW_LOGITS, (v, c), "float16", ("row", "view", "class")),
              RowArray(vw.VIEW_PARAMS, (v, views.num_params), "float32",
                       ("row", "view", "param")))  # NaN: a user augmentation is off
    session = WriteSession(cfg, n=len(split), class_names=split.class_names,
                           dataset=split.identity(), teacher=teacher, ranks=ranks,
                           device_type=device.type, arrays=arrays, extra={"views": views.info()})
    with session:
        bar = progress_bar(total=len(session.todo), desc="teacher-logits", unit="unit",
                           enabled=progress)
        for index in session.todo:
            sl = session.writer.unit_slice(index)
            ids = np.arange(sl.start, sl.stop)
            logits = infer(model, source.inputs(sl), batch_size=cfg.batch_size,
                           device=device).reshape(-1, v, c)
            session.write(index, sample_ids=ids, logits=logits[:, 0],  # v1 logits: view 0
                          rows={vw.VIEW_LOGITS: logits, vw.VIEW_PARAMS: views.params(ids)})
            bar.update()
        bar.close()
    return session.meta


def run(cfg: LogitsConfig, *, progress: bool = True) -> tuple[StoreMeta, float]:
    """write_teacher_logits plus its wall time in seconds."""
    t0 = time.perf_counter()
    meta = write_teacher_logits(cfg, progress=progress)
    return meta, time.perf_counter() - t0
