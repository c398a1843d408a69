"""write_logits: run a torch teacher (a live nn.Module) over any softtargets dataset into a store.

    meta = write_logits(teacher, data, "teacher.zarr", targets=TopK(32), batch_size=256)

The teacher runs through the one forward function of stage 1 (write/forward.py: fp16 autocast
with fp32 accumulation on CUDA, fp32 on a CPU) with inputs prepared ahead in a thread and units
written behind it (`write_chunks`), into a LogitWriter, whose write session gives every store
kind the lease, resume (bit-identical) and torchrun ranks. Inputs reach the teacher as
`torch.from_numpy(dataset.inputs(rows))`: the dataset's own dtype and shape.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from softtargets.augment.images import check_image_dataset
from softtargets.augment.source import ViewInputs, Views
from softtargets.datasets.base import BaseDataset
from softtargets.write.distributed import ranks_from_env
from softtargets.errors import CheckpointError, ConfigError
from softtargets.progress import bar as progress_bar
from softtargets.format.store import StoreMeta
from softtargets.write.forward import as_input, forward, prepare_model, resolve_device, write_chunks
from softtargets.write.passes import chunk_logits, require_mc_dropout
from softtargets.write.passes import mc_seed as mc_seed_of
from softtargets.write.targets import Dense, Targets
from softtargets.write.writer import LogitWriter


def module_identity(model: nn.Module, device: torch.device) -> dict[str, Any]:
    """What a store records about a live module: its class and a sha256 of its state dict
    (names, dtypes, shapes and bytes), so a resume with other weights is refused; a module
    with a `softtargets_identity()` method (e.g. hf_teacher's) adds its own keys."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    cls = type(model)
    own = getattr(model, "softtargets_identity", None)
    return {"kind": "module", "arch": f"{cls.__module__}.{cls.__qualname__}",
            "checkpoint": None, **(own() if callable(own) else {}),
            "checkpoint_sha256": "sha256:" + h.hexdigest(),
            "torch": str(torch.__version__), "device": str(device),
            "precision": "fp16-autocast" if device.type == "cuda" else "fp32"}


class Members(nn.Module):
    """An ensemble as one module: every member's logits of a batch, (B, M, C)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)


def _probe(model: nn.Module, dataset: BaseDataset, source: Any, device: torch.device,
           members: int | None) -> None:
    """Refuse a teacher whose output does not fit the dataset, before any store is made;
    `source` gives the teacher's inputs (the dataset, or its views)."""
    x = as_input(source.inputs(slice(0, min(2, len(dataset))))).to(device)
    try:
        out = forward(model, x, device)
    except Exception as e:  # a user's model: shape or dtype errors
        raise CheckpointError(f"teacher {type(model).__name__} failed on a batch of inputs "
                              f"{tuple(x.shape)} {x.dtype} from dataset {dataset.name}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    L, c = dataset.positions, dataset.num_classes
    want = (len(x), *((L,) if L else ()), *((members,) if members else ()), c)
    if tuple(out.shape) != want:
        axes = "batch, positions, " if L else "batch, members, " if members else "batch, "
        padded = tuple(out.shape[:-1]) == want[:-1] and out.shape[-1] > c
        hint = (f"; if the {out.shape[-1] - c} extra columns are vocabulary padding, drop them "
                f"(hf_teacher(path, num_classes={c}, drop_vocab_padding=True))") if padded else ""
        raise CheckpointError(f"teacher {type(model).__name__} returned logits "
                              f"{tuple(out.shape)} for a batch of {len(x)}, expected {want} "
                              f"({axes}the dataset's {c} classes){hint}")


def _teachers(teacher: Any) -> list[nn.Module]:
    """The teacher, or the members of an ensemble (a list), each an nn.Module."""
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not teachers:
        raise ConfigError("write_logits got an empty list of teachers; pass an nn.Module or a "
                          "list of them (an ensemble)")
    for i, t in enumerate(teachers):
        if not isinstance(t, nn.Module):
            which = f"teacher {i} of the ensemble" if isinstance(teacher, (list, tuple)) \
                else "teacher"
            raise ConfigError(f"{which} must be a torch nn.Module, got {type(t).__name__}")
    return teachers


def _check_call(dataset: Any, views: Any, mc_dropout: Any, batch_size: Any) -> int | None:
    if not isinstance(dataset, BaseDataset):
        raise ConfigError(f"dataset must be a softtargets dataset (softtargets.datasets), got "
                          f"{type(dataset).__name__}; wrap yours with softtargets.datasets."
                          "wrap(dataset, num_classes=C)")
    if views is not None:
        if not isinstance(views, Views):
            raise ConfigError(f"views must be softtargets.Views(count=V, augment=...), got "
                              f"{type(views).__name__}")
        check_image_dataset(dataset)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if mc_dropout is None:
        return None
    if isinstance(mc_dropout, bool) or not isinstance(mc_dropout, int) or mc_dropout < 1:
        raise ConfigError(f"mc_dropout must be a positive number of passes, got {mc_dropout!r}")
    return mc_dropout


def write_logits(teacher: Any, dataset: Any, store: str, *, targets: Targets = Dense(),
                 views: Views | None = None, mc_dropout: Any = None, mc_seed: int = 0,
                 batch_size: int = 256,
                 device: str = "auto", resume: bool = False, dataset_id: str | None = None,
                 chunk_rows: int | None = None, shard_rows: int | None = None,
                 overwrite: bool = False, compressor: str | None = None,
                 progress: bool = False) -> StoreMeta:
    """Run `teacher` over every row of `dataset` and write the store; its metadata (complete).

    A list of teachers is an ensemble: every member's raw logits go to `member_logits` and
    their mean to `logits` (docs/FORMAT.md, "Ensembles"); the targets must be Dense().
    mc_dropout=K runs each teacher K times with only its dropout layers in train mode, the
    masks of pass k over chunk i seeded by (mc_seed, k, i) as on the command line: members
    teacher x pass, in `member_logits` like an ensemble's.

    views=Views(count=V, augment=..., seed=...) (Dense targets; images (H, W) or (C, H, W),
    uint8 scaled by 1/255 or float): the teacher runs on V augmented views of every row,
    drawn per (seed, sample id, view); every view's logits and parameters are stored
    (`view_logits` or, for an ensemble, `member_view_logits`; `view_params`), view 0 as the
    row's logits. A forward batch then holds batch_size // V rows of V views each.

    A dataset of sequences (`dataset.positions` = L, e.g. TokenSequences) gets a row per
    position: the teacher returns (B, L, C) and `targets` must be TopK or Sampled. Under
    torchrun each rank computes and writes its own units. The teacher is moved to `device`
    and run in eval mode; its training flag is restored afterwards.
    """
    teachers = _teachers(teacher)
    passes = _check_call(dataset, views, mc_dropout, batch_size)
    ranks = ranks_from_env()
    dev = resolve_device(device)
    if ranks.world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", ranks.local_rank)
    ensemble = isinstance(teacher, (list, tuple)) or passes is not None
    members = len(teachers) * (passes or 1) if ensemble else None
    modes = [t.training for t in teachers]
    try:
        model = prepare_model(Members(teachers), dev) if ensemble else \
            prepare_model(teachers[0], dev)
        if views is not None:
            views = views.for_dataset(dataset)  # mixed views: partners among its sample ids
        source = dataset if views is None else ViewInputs(dataset, views)
        _probe(model, dataset, source, dev, len(teachers) if ensemble else None)
        identity = [module_identity(t, dev) for t in teachers]
        if passes is not None:  # members teacher x pass, as plan_members orders them
            identity = [{**i, "mc_pass": k, "mc_seed": mc_seed} for i in identity
                        for k in range(passes)]
            for i, t in enumerate(teachers):
                require_mc_dropout(t, what=f"{i} ({type(t).__name__})", passes=passes)
        writer = LogitWriter(store, dataset=dataset, targets=targets, chunk_rows=chunk_rows,
                             shard_rows=shard_rows, compressor=compressor, overwrite=overwrite,
                             resume=resume, teacher=identity if ensemble else identity[0],
                             positions=dataset.positions is not None, dataset_id=dataset_id,
                             members=members, views=views)
        v = views.count if views is not None else None
        batch = max(1, batch_size // (v or 1))  # rows per forward: their V views each
        with writer:
            if passes is None:
                _run(writer, model, dataset, source, views=v, batch_size=batch, device=dev,
                     progress=progress)
            else:
                _run_passes(writer, teachers, dataset, source, views=v, passes=passes,
                            seed=mc_seed, batch_size=batch, device=dev, progress=progress)
    finally:
        for t, mode in zip(teachers, modes):
            t.train(mode)
    return writer.meta


def _by_row(logits: np.ndarray, views: int | None, *, members: bool) -> np.ndarray:
    """Logits of R rows' V views each (R*V, [M,] C) as the writer takes them, (R, [M,] V,
    C); as given without views (None)."""
    if views is None:
        return logits
    z = logits.reshape(-1, views, *logits.shape[1:])  # (R, V, [M,] C)
    return z.transpose(0, 2, 1, 3) if members else z  # members before views, as stored


def _run(writer: LogitWriter, model: nn.Module, dataset: BaseDataset, source: Any, *,
         views: int | None, batch_size: int, device: torch.device, progress: bool) -> None:
    """This process's units: inputs read ahead, forward, rows appended behind (write_chunks)."""
    units = dict(writer.todo_units())  # unit index -> dataset rows
    members = writer.members is not None

    def append(index: int, *, sample_ids: np.ndarray, logits: np.ndarray) -> None:
        writer.append(dataset.ids(units[index]), _by_row(logits, views, members=members))

    bar = progress_bar(total=sum(r.stop - r.start for r in units.values()),
                       desc="teacher-logits", unit="row", enabled=progress)
    write_chunks(units.__getitem__, append, model, source, list(units), batch_size=batch_size,
                 device=device, on_rows=bar.update)
    bar.close()


def _run_passes(writer: LogitWriter, teachers: list[nn.Module], dataset: BaseDataset,
                source: Any, *, views: int | None, passes: int, seed: int, batch_size: int,
                device: torch.device, progress: bool) -> None:
    """This process's units of MC-dropout members: every (teacher, pass) over each chunk of a
    unit, seeded per (seed, pass, chunk), then the unit's (rows, M, C) appended."""
    chunk_rows = writer.session.writer.meta.chunk_rows
    todo = writer.todo_units()
    bar = progress_bar(total=sum(r.stop - r.start for _, r in todo), desc="teacher-logits",
                       unit="row", enabled=progress)
    for _, rows in todo:
        chunks = [slice(a, min(rows.stop, a + chunk_rows))
                  for a in range(rows.start, rows.stop, chunk_rows)]
        z = np.stack([np.concatenate([
            chunk_logits(t, source, c, batch_size=batch_size, device=device,
                         seed=mc_seed_of(seed, k, c.start // chunk_rows)) for c in chunks])
            for t in teachers for k in range(passes)], axis=1)  # (rows * V, M, C)
        writer.append(dataset.ids(rows), _by_row(z, views, members=True))
        bar.update(rows.stop - rows.start)
    bar.close()
