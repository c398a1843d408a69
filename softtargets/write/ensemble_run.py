"""Stage 1 for ensembles, MC-dropout passes and user teachers (docs/FORMAT.md, "Ensembles").

Members run one at a time, so peak memory is one teacher, not M. Each member's raw float16 logits
go to `member_logits` (M, N, C) with chunks (1, R, C): a member writes whole chunks of its own
(zarr loses data when two writers share a chunk, and an (M, R, C) chunk would need all M teachers
in memory at once or M read-modify-writes). A reader gets row chunk i of all members with M reads
of ~2 MiB each, near raw codec speed. The v1 `logits` array then receives the mean of the stored
member logits, which is the geometric-mean target at every T for readers that only know v1.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softtargets.format import ensemble
from softtargets.augment import views as vw
from softtargets.augment.mix import parse_mix
from softtargets.augment.source import ViewInputs, Views
from softtargets.datasets.idx import IDXDataset
from softtargets.config import DataConfig, EnsembleLogitsConfig
from softtargets.datasets.idx_files import Split, check_not_trained_on_validation, load_split
from softtargets.format.destination import delete_array
from softtargets.write.distributed import Ranks, ranks_from_env
from softtargets.format.ensemble import MEMBER_LOGITS
from softtargets.errors import CheckpointError, ConfigError
from softtargets.progress import bar as progress_bar
from softtargets.format.schema import COMBINED_ONLY_VERSION
from softtargets.format.store import StoreMeta
from softtargets.write.teachers import LoadedTeacher, load_teacher
from softtargets.write.forward import resolve_device, write_chunks
from softtargets.write.options import session_chunk_rows
from softtargets.write.passes import CheckedTeacher, check_finite, require_mc_dropout, seeder
from softtargets.write.session import RowArray, WriteSession
from softtargets.write.targets import Dense


@dataclasses.dataclass(frozen=True)
class Member:
    """One column of the ensemble: teacher file `teacher` (index in cfg.teachers), MC pass or None."""

    index: int
    teacher: int
    mc_pass: int | None


def plan_members(cfg: EnsembleLogitsConfig) -> list[Member]:
    """Teachers in the given order, each repeated K times under --mc-dropout K."""
    passes: list[int | None] = list(range(cfg.mc_dropout)) if cfg.mc_dropout else [None]
    pairs = [(t, k) for t in range(len(cfg.teachers)) for k in passes]
    return [Member(index=i, teacher=t, mc_pass=k) for i, (t, k) in enumerate(pairs)]


SPEC_KEYS = ("teachers", "factory", "transform", "mc_dropout", "mc_seed")


def load_ensemble_spec(path: str) -> dict[str, Any]:
    """An ensemble spec file: JSON {"teachers": [...], "factory", "transform", "mc_dropout",
    "mc_seed"}; relative teacher paths are relative to the spec file."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read ensemble spec {path!r}: {e}") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("teachers"), list) or \
            not spec["teachers"]:
        raise ConfigError(f"ensemble spec {path!r} must be a JSON object with a non-empty list "
                          f"\"teachers\"; allowed keys: {list(SPEC_KEYS)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"ensemble spec {path!r}: unknown keys {unknown}; allowed: "
                          f"{list(SPEC_KEYS)}")
    base = Path(path).parent
    spec["teachers"] = tuple(str(base / t) if not Path(t).is_absolute() else t
                             for t in spec["teachers"])
    return spec


def _load(cfg: EnsembleLogitsConfig, t: int) -> LoadedTeacher:
    name = f"member teacher {t + 1} ({cfg.teachers[t]})" if len(cfg.teachers) > 1 \
        else cfg.teachers[t]
    return load_teacher(cfg.teachers[t], factory=cfg.factory, transform=cfg.transform, name=name)


@torch.inference_mode()
def _probe(teacher: LoadedTeacher, split: Split) -> int:
    """Number of classes the teacher outputs, from a forward pass on two rows."""
    x = torch.from_numpy(split.inputs(slice(0, 2)))
    try:
        if teacher.transform is not None:
            x = teacher.transform(x)
        out = teacher.model(x)
    except Exception as e:  # a user's model: shape errors, static batch sizes, ...
        raise CheckpointError(f"teacher {teacher.name!r} failed on a batch of 2 inputs "
                              f"{tuple(x.shape)}: {e}; check --transform (inputs are (B, H*W) "
                              "float32 in [0, 1]) and export with a dynamic batch "
                              "dimension") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(x):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckpointError(f"teacher {teacher.name!r} returned {got} for a batch of {len(x)}; "
                              "a teacher must return logits of shape (batch, C)")
    return int(out.shape[1])


def check_members(cfg: EnsembleLogitsConfig, split: Split) -> list[dict[str, Any]]:
    """Load each teacher in turn (one in memory) and refuse disagreeing classes before any work;
    the identity of each teacher."""
    seen: list[tuple[str, int, tuple[str, ...] | None]] = []
    identities: list[dict[str, Any]] = []
    for t in range(len(cfg.teachers)):
        teacher = _load(cfg, t)
        check_not_trained_on_validation(teacher.identity.get("trained_on"), split, teacher.name)
        c, names = _probe(teacher, split), teacher.class_names
        for other, c0, names0 in seen:
            if c != c0 or (names and names0 and names != names0):
                raise CheckpointError(
                    f"ensemble members disagree: {teacher.name!r} predicts {c} classes "
                    f"{list(names) if names else '(names not recorded)'} but {other!r} predicts "
                    f"{c0} {list(names0) if names0 else '(names not recorded)'}; all members "
                    "must be trained on the same classes in the same order")
        seen.append((teacher.name, c, names))
        identities.append(dict(teacher.identity))
        del teacher
        gc.collect()
    name, c, names = seen[0]
    if c != len(split.class_names):
        raise CheckpointError(f"teacher {name!r} predicts {c} classes but dataset {split.name} has "
                              f"{len(split.class_names)}; use a teacher trained on this dataset")
    if names and tuple(names) != tuple(split.class_names):
        raise CheckpointError(f"teacher {name!r} was trained on classes {list(names)}, dataset "
                              f"{split.name} has {list(split.class_names)}")
    return identities


def _summary_identity(members: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """The v1 `teacher` key of an ensemble store: a digest over the member checkpoints."""
    return {**ensemble.summary_identity(members), "torch": str(torch.__version__),
            "device": str(device),
            "precision": "fp16-autocast" if device.type == "cuda" else "fp32"}


def _extra(cfg: EnsembleLogitsConfig, members: list[dict[str, Any]], *, n: int, c: int,
           rows: int) -> dict[str, Any]:
    if cfg.combined_only:
        t = cfg.temperature if cfg.combine == "arithmetic" else None
        what = ("T * log(mean_m softmax(z_m / T))" if t is not None else "mean_m z_m")
        return {ensemble.COMBINED_KEY: {"rule": cfg.combine, "temperature": t, "logits": what,
                                        "members": members}}
    return {ensemble.ENSEMBLE_KEY: ensemble.ensemble_info(
        members, n=n, num_classes=c, chunk_rows=rows, default_rule=cfg.combine or "arithmetic")}


def write_ensemble_logits(cfg: EnsembleLogitsConfig, *, progress: bool = True) -> StoreMeta:
    """Write the store through one WriteSession: each member in turn writes its chunks of
    `member_logits` (and `member_view_logits`) of this rank's units, then each unit gets the
    combined `logits`; finalized last. --resume keeps every verified unit and member chunk."""
    split = load_split(cfg.data)
    identities = check_members(cfg, split)
    ranks = ranks_from_env()  # torchrun: each rank writes whole units of every member
    device = resolve_device(cfg.device)
    if ranks.world > 1 and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    plan = plan_members(cfg)
    if len(plan) == 1 and not cfg.mc_dropout and cfg.views is None:
        return _write_single(cfg, split, identities[0], ranks, device, progress=progress)
    members = [{"member": m.index, **identities[m.teacher], "mc_pass": m.mc_pass,
                "mc_seed": cfg.mc_seed if m.mc_pass is not None else None} for m in plan]
    layout = MemberLayout.of(cfg, split, members, device)
    session = WriteSession(cfg, n=len(split), class_names=split.class_names,
                           dataset=split.identity(), teacher=layout.teacher, ranks=ranks,
                           device_type=device.type, arrays=layout.arrays, extra=layout.extra,
                           version=layout.version,
                           before_finalize=(lambda: delete_array(cfg.store, MEMBER_LOGITS))
                           if cfg.combined_only else None)  # scratch: keep the combined target
    with session:
        if session.todo:
            _run_members(cfg, plan, split, session, device, layout, progress=progress)
            _write_combined(cfg, session, layout, progress=progress)
    return session.meta


def _write_single(cfg: EnsembleLogitsConfig, split: Split, identity: dict[str, Any],
                  ranks: Ranks, device: torch.device, *, progress: bool) -> StoreMeta:
    """One plain (user) teacher: a v1 store, written as teacher.py writes a checkpoint's."""
    teacher = {**identity, "device": str(device),
               "precision": "fp16-autocast" if device.type == "cuda" else "fp32"}
    session = WriteSession(cfg, n=len(split), class_names=split.class_names,
                           dataset=split.identity(), teacher=teacher, ranks=ranks,
                           device_type=device.type)
    with session:
        if session.todo:
            loaded = _load(cfg, 0)
            model = _checked(loaded, loaded.name, len(split.class_names), device)
            writer = session.writer

            def write(index: int, *, sample_ids: np.ndarray, logits: np.ndarray) -> None:
                check_finite(logits, name=loaded.name, first_row=writer.unit_slice(index).start)
                session.write(index, sample_ids=sample_ids, logits=logits)

            bar = progress_bar(total=_rows(writer, session.todo), desc="teacher-logits",
                               unit="row", enabled=progress)
            write_chunks(writer.unit_slice, write, model, split, session.todo,
                         batch_size=cfg.batch_size, device=device, on_rows=bar.update)
            bar.close()
    return session.meta


def _checked(teacher: LoadedTeacher, name: str, num_classes: int,
             device: torch.device) -> CheckedTeacher:
    if isinstance(teacher.model, torch.nn.Module):
        teacher.model.to(device)
    return CheckedTeacher(teacher.model, teacher.transform, name=name, num_classes=num_classes)


def _rows(writer: Any, units: list[int]) -> int:
    return sum(writer.unit_slice(i).stop - writer.unit_slice(i).start for i in units)


@dataclasses.dataclass(frozen=True)
class MemberLayout:
    """The store's teacher key, per-member and view arrays, attributes and format version."""

    teacher: dict[str, Any]
    arrays: tuple[RowArray, ...]
    extra: dict[str, Any]
    version: int | None
    views: Views | None = None  # with --views

    @classmethod
    def of(cls, cfg: EnsembleLogitsConfig, split: Split, members: list[dict[str, Any]],
           device: torch.device) -> MemberLayout:
        n, c, m = len(split), len(split.class_names), len(members)
        rows = session_chunk_rows(Dense(), cfg.chunk_rows, n=n, num_classes=c, per_sample=1)
        arrays = [RowArray(MEMBER_LOGITS, (c,), "float16", ("member", "row", "class"),
                           members=m, per_member=True)]
        extra = _extra(cfg, members, n=n, c=c, rows=rows)
        views = None
        if cfg.views is not None:
            views = Views(count=int(cfg.views), augment=vw.parse_spec(cfg.augment),
                          seed=cfg.view_seed, mix=parse_mix(cfg.mix))
            views = views.for_dataset(IDXDataset.from_split(split))  # mixed: partners' pool
            arrays += [RowArray(vw.MEMBER_VIEW_LOGITS, (views.count, c), "float16",
                                ("member", "row", "view", "class"), members=m, per_member=True),
                       RowArray(vw.VIEW_PARAMS, (views.count, views.num_params), "float32",
                                ("row", "view", "param"))]  # NaN: a user augmentation is off
            extra["views"] = views.info()
        arithmetic_only = cfg.combined_only and cfg.combine == "arithmetic"
        return cls(teacher=_summary_identity(members, device), arrays=tuple(arrays),
                   extra=extra, version=COMBINED_ONLY_VERSION if arithmetic_only else None,
                   views=views)


def _run_members(cfg: EnsembleLogitsConfig, plan: list[Member], split: Split,
                 session: WriteSession, device: torch.device, layout: MemberLayout, *,
                 progress: bool) -> None:
    """Each member's chunks of this rank's units (those not kept by a resume); one teacher in
    memory at a time, inputs prepared ahead and chunks written behind the forward pass."""
    writer = session.writer
    chunks = [i for u in session.todo for i in writer.unit_chunks(u)]
    views = layout.views
    source = split if views is None else ViewInputs(IDXDataset.from_split(split), views,
                                                    flat=True)  # (R*V, H*W) per R rows
    names = [MEMBER_LOGITS] + ([vw.MEMBER_VIEW_LOGITS] if views is not None else [])
    bar = progress_bar(total=_rows(writer, session.todo) * len(plan), desc="teacher-logits",
                       unit="row", enabled=progress)
    for t in range(len(cfg.teachers)):
        todo = {m.index: [i for i in chunks if not all(
            session.member_done(a, m.index, writer.chunk_slice(i)) for a in names)]
            for m in plan if m.teacher == t}
        bar.update(sum(_rows_of(writer, chunks) - _rows_of(writer, c) for c in todo.values()))
        if not any(todo.values()):
            continue  # every chunk of this teacher's members was kept
        teacher = _load(cfg, t)
        if cfg.mc_dropout:
            require_mc_dropout(teacher.model, what=repr(teacher.name), passes=cfg.mc_dropout)
        for member in (m for m in plan if m.teacher == t):
            name = teacher.name if member.mc_pass is None else \
                f"{teacher.name} MC pass {member.mc_pass + 1}"
            model = _checked(teacher, f"ensemble member {member.index + 1}: {name}",
                             len(split.class_names), device)
            write_chunks(writer.chunk_slice, _member_writer(session, member.index, model.name,
                                                            views is not None, int(cfg.views or 0)),
                         model, source, todo[member.index],
                         batch_size=max(1, cfg.batch_size // int(cfg.views or 1)),
                         device=device, on_rows=bar.update,
                         before_unit=seeder(cfg.mc_seed, member.mc_pass))
        del teacher, model
        gc.collect()  # free this teacher before the next is loaded: peak memory is one teacher
    bar.close()


def _rows_of(writer: Any, chunks: list[int]) -> int:
    return sum(writer.chunk_slice(i).stop - writer.chunk_slice(i).start for i in chunks)


def _member_writer(session: WriteSession, member: int, name: str, views: bool,
                   v: int) -> Callable[..., None]:
    """write_chunks' write of one member's chunk: (R, C), or (R*V, C) with views (then
    member_view_logits, and view 0 in member_logits, which is written last)."""
    def write(index: int, *, sample_ids: np.ndarray, logits: np.ndarray) -> None:
        sl = session.writer.chunk_slice(index)
        check_finite(logits, name=name, first_row=sl.start)
        if views:
            z = logits.reshape(sl.stop - sl.start, v, -1)  # (R, V, C)
            session.write_member(vw.MEMBER_VIEW_LOGITS, member, sl, z)
            logits = z[:, 0]
        session.write_member(MEMBER_LOGITS, member, sl, logits)
    return write


def _write_combined(cfg: EnsembleLogitsConfig, session: WriteSession, layout: MemberLayout, *,
                    progress: bool) -> None:
    """The v1 `logits` of each unit from the stored members (and its view parameters)."""
    writer = session.writer
    members = writer.group[MEMBER_LOGITS]
    bar = progress_bar(total=_rows(writer, session.todo), desc="combine", unit="row",
                       enabled=progress)
    for index in session.todo:
        sl = writer.unit_slice(index)
        z = np.asarray(members[:, sl]).astype(np.float64)  # (M, rows, C)
        if cfg.combined_only and cfg.combine == "arithmetic":
            out = cfg.temperature * ensemble.combine_log_probs(z, rule="arithmetic",
                                                               temperature=cfg.temperature)
        else:
            out = z.mean(axis=0)  # (rows, C): geometric-mean target at every T
        rows = {}
        if layout.views is not None:
            rows[vw.VIEW_PARAMS] = layout.views.params(np.arange(sl.start, sl.stop))
        session.write(index, logits=out, rows=rows)
        bar.update(sl.stop - sl.start)
    bar.close()


def run(cfg: EnsembleLogitsConfig, *, progress: bool = True) -> tuple[StoreMeta, float]:
    """write_ensemble_logits plus its wall time in seconds."""
    t0 = time.perf_counter()
    meta = write_ensemble_logits(cfg, progress=progress)
    return meta, time.perf_counter() - t0


def ensemble_config(data: DataConfig, teachers: tuple[str, ...], common: dict[str, Any], *,
                    ensemble_spec: str | None, factory: str | None, transform: str | None,
                    mc_dropout: int, mc_seed: int, combine: str | None, combined_only: bool,
                    temperature: float | None) -> EnsembleLogitsConfig | None:
    """The stage-1 flags as an EnsembleLogitsConfig, or None for the plain one-checkpoint path."""
    from softtargets.write.teachers import detect_kind
    spec: dict[str, Any] = {}
    if ensemble_spec:
        spec = load_ensemble_spec(ensemble_spec)
    names = tuple(spec.pop("teachers", ())) + teachers or (f"runs/{data.dataset}/teacher.pt",)
    plain = (len(names) == 1 and not (factory or transform or mc_dropout or combine
                                      or combined_only or spec)
             and (not Path(names[0]).is_file() or detect_kind(names[0], None) == "softtargets"))
    if plain:
        return None
    opts = {"factory": factory, "transform": transform, "mc_dropout": mc_dropout,
            "mc_seed": mc_seed}
    opts.update({k: v for k, v in spec.items() if opts.get(k) in (None, 0)})
    return EnsembleLogitsConfig(data=data, teachers=names, combine=combine,
                                combined_only=combined_only, temperature=temperature,
                                **opts, **common)
