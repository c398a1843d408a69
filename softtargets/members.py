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
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from softtargets import ensemble
from softtargets.config import DataConfig, EnsembleLogitsConfig, to_dict
from softtargets.data import Split, check_not_trained_on_validation, load_split
from softtargets.destination import delete_array
from softtargets.errors import CheckpointError, ConfigError
from softtargets.progress import bar as progress_bar
from softtargets.schema import COMBINED_ONLY_VERSION
from softtargets import views as vw
from softtargets.store import (ATTR_KEY, StoreMeta, StoreWriter, add_row_array, compressor_codecs,
                               to_float16)
from softtargets.teacher import resolve_device
from softtargets.teachers import LoadedTeacher, enable_mc_dropout, load_teacher, run_teacher



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


def mc_seed(base: int, mc_pass: int, chunk: int) -> int:
    """Dropout-mask seed of (pass, chunk): independent of other chunks, so any chunk can be redone."""
    digest = hashlib.sha256(f"softtargets.mc/{base}/{mc_pass}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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


def check_members(cfg: EnsembleLogitsConfig, split: Split) -> None:
    """Load each teacher in turn (one in memory) and refuse disagreeing classes before any work."""
    seen: list[tuple[str, int, tuple[str, ...] | None]] = []
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
        del teacher
        gc.collect()
    name, c, names = seen[0]
    if c != len(split.class_names):
        raise CheckpointError(f"teacher {name!r} predicts {c} classes but dataset {split.name} has "
                              f"{len(split.class_names)}; use a teacher trained on this dataset")
    if names and tuple(names) != tuple(split.class_names):
        raise CheckpointError(f"teacher {name!r} was trained on classes {list(names)}, dataset "
                              f"{split.name} has {list(split.class_names)}")


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
    """Run every member one at a time, then write the combined `logits`; finalize last."""
    split = load_split(cfg.data)
    check_members(cfg, split)
    device = resolve_device(cfg.device)
    plan = plan_members(cfg)
    n, c = len(split), len(split.class_names)
    # one plain teacher: a v1 store (with views: an ensemble of one, keeping member_view_logits)
    single = len(plan) == 1 and not cfg.mc_dropout and cfg.views is None
    writer = StoreWriter.create(cfg.store, n=n, class_names=split.class_names,
                                dataset=split.identity(), teacher={}, config=to_dict(cfg),
                                chunk_rows=cfg.chunk_rows, compressor=cfg.compressor,
                                overwrite=cfg.overwrite)
    rows = writer.meta.chunk_rows
    bar = progress_bar(total=n * (len(plan) + (0 if single else 1)), desc="teacher-logits",
                       unit="row", enabled=progress)
    if single:
        teacher = _load(cfg, 0)
        identity = {**teacher.identity, "device": str(device),
                    "precision": "fp16-autocast" if device.type == "cuda" else "fp32"}
        _set_meta(writer, teacher=identity, extra={})
        for i in range(writer.num_chunks):
            sl = writer.chunk_slice(i)
            z = run_teacher(teacher, split.inputs(sl), batch_size=cfg.batch_size, device=device,
                            num_classes=c, first_row=sl.start)
            writer.write_chunk(i, sample_ids=np.arange(sl.start, sl.stop), logits=z)
            bar.update(sl.stop - sl.start)
        bar.close()
        return writer.finalize()
    members_arr = add_row_array(writer.group, ensemble.MEMBER_LOGITS, n=n, row_shape=(c,),
                                chunk_rows=rows, dtype="float16",
                                codecs=compressor_codecs(cfg.compressor),
                                fill_value=float("nan"),
                                dimension_names=("member", "row", "class"), members=len(plan))
    views = ViewWriter.create(cfg, writer, members=len(plan)) if cfg.views else None
    identities = _run_members(cfg, plan, split, writer, device, bar, views)
    extra = _extra(cfg, identities, n=n, c=c, rows=rows)
    if views is not None:
        extra["views"] = views.info
    _set_meta(writer, teacher=_summary_identity(identities, device), extra=extra,
              version=COMBINED_ONLY_VERSION if cfg.combined_only and cfg.combine == "arithmetic"
              else None)
    for i in range(writer.num_chunks):  # combination pass, one row chunk of all members at a time
        sl = writer.chunk_slice(i)
        z = np.asarray(members_arr[:, sl]).astype(np.float64)  # (M, rows, C)
        if cfg.combined_only and cfg.combine == "arithmetic":
            out = cfg.temperature * ensemble.combine_log_probs(z, rule="arithmetic",
                                                               temperature=cfg.temperature)
        else:
            out = z.mean(axis=0)  # (rows, C): geometric-mean target at every T
        writer.write_chunk(i, sample_ids=np.arange(sl.start, sl.stop), logits=out)
        bar.update(sl.stop - sl.start)
    bar.close()
    if cfg.combined_only:
        delete_array(cfg.store, ensemble.MEMBER_LOGITS)  # scratch: only the combined target is kept
    return writer.finalize()


def _run_members(cfg: EnsembleLogitsConfig, plan: list[Member], split: Split,
                 writer: StoreWriter, device: torch.device,
                 bar: tqdm, views: ViewWriter | None = None) -> list[dict[str, Any]]:
    """Write member_logits[m] for every member (and its views); one teacher at a time."""
    identities: list[dict[str, Any]] = []
    for t in range(len(cfg.teachers)):
        teacher = _load(cfg, t)
        if isinstance(teacher.model, torch.nn.Module):
            teacher.model.to(device)
        if cfg.mc_dropout and enable_mc_dropout(teacher.model) == 0:
            raise ConfigError(f"--mc-dropout {cfg.mc_dropout}: teacher {teacher.name!r} has no "
                              "dropout layers, so its passes would all be equal")
        for member in (m for m in plan if m.teacher == t):
            name = teacher.name if member.mc_pass is None else \
                f"{teacher.name} MC pass {member.mc_pass + 1}"
            run = dataclasses.replace(teacher, name=f"ensemble member {member.index + 1}: {name}")
            for i in range(writer.num_chunks):
                sl = writer.chunk_slice(i)
                if member.mc_pass is not None:
                    torch.manual_seed(mc_seed(cfg.mc_seed, member.mc_pass, i))
                m = member.index
                x = split.inputs(sl) if views is None else views.inputs(split, sl, member=m)
                z = run_teacher(run, x, batch_size=cfg.batch_size, device=device,  # (R[*V], C)
                                num_classes=len(split.class_names), first_row=sl.start)
                if views is not None:  # (R*V, C) -> member_view_logits; member_logits: view 0
                    z = views.write(m, sl, z)
                writer.digests.write(ensemble.MEMBER_LOGITS, sl,
                                     to_float16(z, first_row=sl.start), member=m)  # (rows, C)
                bar.update(sl.stop - sl.start)
            identities.append({"member": member.index, **teacher.identity,
                               "mc_pass": member.mc_pass,
                               "mc_seed": cfg.mc_seed if member.mc_pass is not None else None})
        del teacher, run
        gc.collect()  # free this teacher before the next is loaded: peak memory is one teacher
    return identities


class ViewWriter:
    """Augmented views of ensembles: every member's logits of V augmented views of each row, in
    member_view_logits (M, N, V, C) with chunks (1, R, V, C) (one member writes whole chunks), and
    the views' parameters in view_params (N, V, P), shared by all members."""

    def __init__(self, spec: Any, *, views: int, seed: int, digests: Any) -> None:
        self.spec, self.views, self.seed = spec, views, seed
        self.digests = digests  # the store writer's DigestWriter
        self.info = vw.views_info(spec, views=views, seed=seed)

    @classmethod
    def create(cls, cfg: EnsembleLogitsConfig, writer: StoreWriter, *, members: int) -> ViewWriter:
        spec, v = vw.parse_spec(cfg.augment), int(cfg.views or 0)
        n, c, rows = writer.meta.n, writer.meta.num_classes, writer.meta.chunk_rows
        codecs = compressor_codecs(cfg.compressor)  # codec objects are immutable: shared
        add_row_array(writer.group, vw.MEMBER_VIEW_LOGITS, n=n, row_shape=(v, c),
                      chunk_rows=rows, dtype="float16", codecs=codecs, fill_value=float("nan"),
                      dimension_names=("member", "row", "view", "class"), members=members)
        add_row_array(writer.group, vw.VIEW_PARAMS, n=n, row_shape=(v, len(spec.param_names)),
                      chunk_rows=rows, dtype="float32", codecs=codecs, fill_value=float("nan"),
                      dimension_names=("row", "view", "param"))
        return cls(spec, views=v, seed=cfg.view_seed, digests=writer.digests)

    def inputs(self, split: Split, sl: slice, *, member: int) -> np.ndarray:
        """The V views of rows `sl`, (R*V, D) float32, from parameters of (seed, id, view);
        the first member also stores those parameters (they are the same for every member)."""
        params = vw.draw_params(self.spec, seed=self.seed, sample_ids=np.arange(sl.start, sl.stop),
                                views=self.views)  # (R, V, P)
        if member == 0:
            self.digests.write(vw.VIEW_PARAMS, sl, params.astype(np.float32))
        images = np.repeat(split.images[sl], self.views, axis=0)  # (R*V, H, W)
        return vw.apply_views(images, params.reshape(-1, params.shape[-1]), spec=self.spec).numpy()

    def write(self, member: int, sl: slice, logits: np.ndarray) -> np.ndarray:
        """Store member `member`'s view logits (R*V, C) of rows `sl`; returns view 0's (R, C)."""
        z = logits.reshape(sl.stop - sl.start, self.views, -1)  # (R, V, C)
        half = to_float16(z.reshape(len(logits), -1), first_row=sl.start).reshape(z.shape)
        self.digests.write(vw.MEMBER_VIEW_LOGITS, sl, half, member=member)
        return z[:, 0]


def _set_meta(writer: StoreWriter, *, teacher: dict[str, Any], extra: dict[str, Any],
              version: int | None = None) -> None:
    """Record the teacher identity and ensemble keys; the store stays incomplete."""
    writer.meta = dataclasses.replace(writer.meta, teacher=teacher,
                                      extra={**writer.meta.extra, **extra},
                                      version=version or writer.meta.version)
    writer.group.attrs.update({ATTR_KEY: writer.meta.to_json()})


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
    from softtargets.teachers import detect_kind
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
