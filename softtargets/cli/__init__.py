"""Command line: turns flags into config dataclasses and calls the library. No logic of its own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click

from softtargets.datasets import idx_files as data_mod
from softtargets.recipes.hinton2015 import report
from softtargets.cli.data import is_idx, pop_spec, resolve_spec, spec_options
from softtargets.cli.records import export_topk_cmd, import_topk_cmd
from softtargets.cli.recipe import data_cmd, train_teacher_cmd
from softtargets.cli.lm import LM_COMMANDS
from softtargets.cli.options import (data_options, ensemble_options, parse_floats, parse_hidden,
                                     quiet_option, student_options, threads_option)
from softtargets.config import DEFAULT_DATA_DIR, DataConfig, LogitsConfig, StudentTrainConfig
from softtargets.write.distributed import ranks_from_env
from softtargets.errors import ConfigError, SofttargetsError


class Group(click.Group):
    """Turns package errors into a one-line `Error: ...` and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SofttargetsError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e
        except Exception as e:  # a storage back end failing mid-run (s3://, gs://)
            from softtargets.format.remote import explain, is_storage_error
            if not is_storage_error(e):
                raise
            message = explain(None, e, action="access")
            raise click.ClickException(f"RemoteStoreError: {message}") from e


@click.group(cls=Group)
@click.version_option(package_name="softtargets")
def cli() -> None:
    """softtargets: offline soft targets for knowledge distillation.

    \b
    Stage 1: teacher-logits writes a teacher's logits to a checked Zarr store.
    Stage 2: student trains a student from it.
    \b
    --data SPEC (teacher-logits, student) names the data:
      fashion-mnist | mnist | kmnist   the IDX datasets (also --dataset)
      imagefolder:PATH                 PATH/<class>/*.png|jpg
      cifar10:PATH | cifar100:PATH     CIFAR in its python format
      tokens:PATH                      a flat uint16/uint32 token file (--seq-len L)
      module:factory                   your dataset (plain ones with --num-classes)
    Your own models: teacher-logits --teacher-factory module:factory [--teacher-weights
    PATH], student --student-factory module:factory. See README.

    Alignment: a store records its data's identity and a digest of each write unit's inputs
    and labels; student re-checks both for the units it reads and refuses a store computed on
    other data, naming the unit (docs/FORMAT.md "Chunk digests").

    From Python (docs/API.md): write_logits, LogitWriter, SoftTargets, DistillDataset,
    StreamingDistillDataset, distillation_loss, verify_store and store_info in `softtargets`.
    """


@cli.command("teacher-logits")
@data_options
@spec_options
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--teacher", "teachers", multiple=True,
              help="Teacher file; repeat for an ensemble. A softtargets checkpoint (default "
                   "runs/{dataset}/teacher.pt), TorchScript file, torch.export .pt2 archive, "
                   "a state dict with --factory, or hf:DIR (a Hugging Face causal LM).")
@click.option("--drop-vocab-padding", is_flag=True,
              help="hf:DIR teachers: drop logit columns beyond the data's vocabulary "
                   "(padding), recorded in the store's provenance.")
@click.option("--teacher-factory", default=None, metavar="MODULE:FACTORY",
              help="Your teacher: a zero-argument callable returning an nn.Module, run on the "
                   "inputs as the dataset gives them (through softtargets.write.write_logits).")
@click.option("--teacher-weights", default=None,
              help="--teacher-factory: a state dict loaded into the module it builds.")
@click.option("--store", default="runs/{dataset}/teacher-logits.zarr", show_default=True,
              help="Where to write the Zarr v3 logit store.")
@click.option("--batch-size", type=int, default=LogitsConfig.batch_size, show_default=True)
@click.option("--chunk-rows", type=int, default=None,
              help="Rows per chunk (default: about 2 MiB of float16 logits per chunk).")
@click.option("--compressor", default=None, type=click.Choice(["zstd", "blosc", "none"]),
              help="Compressor before crc32c (default: none for dense stores, zstd for sparse "
                   "ones; measured in docs/SCALE.md).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --store.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run: keep the chunks already written and verified.")
@click.option("--break-lock", is_flag=True,
              help="Take over the store's write lease even if its holder looks alive "
                   "(only when you know that writer is dead).")
@click.option("--shard-rows", type=int, default=None,
              help="Rows per shard object (a multiple of --chunk-rows; 0: no sharding; "
                   "default: automatic above 256 chunks).")
@ensemble_options
@click.option("--topk", type=int, default=None,
              help="Sparse store: keep the K largest logits per row, their lse and tail mass.")
@click.option("--sample", type=int, default=None,
              help="Sparse store: K class ids drawn from the teacher per row, with counts.")
@click.option("--temperatures", default="1", show_default=True,
              help="Sparse stores: temperatures whose tail mass is stored, comma separated.")
@click.option("--sample-seed", type=int, default=0, show_default=True,
              help="--sample: seed of the per-row draws.")
@click.option("--sample-temperature", type=float, default=1.0, show_default=True,
              help="--sample: draw from softmax(logits / this); use the student's T.")
@click.option("--views", type=int, default=None,
              help="Store V augmented views per sample (view_logits, view_params); "
                   "docs/FORMAT.md 'Augmented views'.")
@click.option("--augment", default="shift=2", show_default=True,
              help="--views: augmentation spec 'shift=2,rotate=10,scale=1.1,flip=0' or a JSON file.")
@click.option("--view-seed", type=int, default=0, show_default=True,
              help="--views: seed of the per-(sample, view) augmentation parameters.")
@click.option("--mix", default=None, metavar="KIND[,ALPHA[,PROB]]",
              help="--views: stored mixed views, e.g. mixup,1.0,0.5 (mixup|cutmix; lambda ~ "
                   "Beta(ALPHA, ALPHA), PROB of the views mixed); the teacher sees the mixed "
                   "input, partner and lambda are stored (docs/FORMAT.md 'Mixed views').")
@click.option("--channels-last", is_flag=True,
              help="channels_last layout (convolutional teachers).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the teacher.")
@threads_option
@quiet_option
def teacher_logits_cmd(dataset: str, data_dir: str, limit: int | None, val_rows: int, split: str,
                       teachers: tuple[str, ...], drop_vocab_padding: bool,
                       teacher_factory: str | None,
                       teacher_weights: str | None, store: str, batch_size: int,
                       chunk_rows: int | None, compressor: str, device: str, overwrite: bool,
                       resume: bool, break_lock: bool, shard_rows: int | None,
                       topk: int | None, sample: int | None, temperatures: str,
                       sample_seed: int, sample_temperature: float, channels_last: bool,
                       compile_: bool, views: int | None, augment: str, view_seed: int,
                       mix: str | None, threads: int | None, quiet: bool,
                       **ens: Any) -> None:
    """Stage 1: run the teacher(s) over a split and write their raw logits to a store.

    --data SPEC takes your own data (image folder, CIFAR, token file, module:factory) and
    --teacher-factory your own teacher. Under `torchrun --nproc_per_node N -m softtargets
    teacher-logits ...` the N processes write disjoint whole chunks/shards of one store.
    """
    from softtargets.write import idx_teacher as teacher_mod
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    data_spec, data_opts = pop_spec(ens, split=split, data_dir=data_dir, limit=limit)
    dataset = resolve_spec(data_spec, dataset)
    hf = any(t.startswith("hf:") for t in teachers)
    if not is_idx(dataset) or teacher_factory is not None or hf or drop_vocab_padding:
        from softtargets.cli.user import targets_of, user_views
        from softtargets.cli.user import teacher_logits as user_logits
        refused = {"--val-rows": val_rows != 0, "--break-lock": break_lock,
                   "--channels-last": channels_last, "--compile": compile_, "--mc-dropout": ens.pop("mc_dropout") != 0,
                   "--store-combined-only": ens.pop("combined_only"),
                   **{f"--{k.replace('_', '-')}": ens.pop(k) is not None for k in
                      ("ensemble_spec", "factory", "transform", "combine", "temperature")}}
        targets = targets_of(topk, sample, parse_floats(temperatures), sample_seed=sample_seed,
                             sample_temperature=sample_temperature)
        meta, seconds, store, resumed = user_logits(
            dataset, data_opts, store=store, teachers=teachers, teacher_factory=teacher_factory,
            teacher_weights=teacher_weights, targets=targets, refused=refused,
            progress=not quiet, batch_size=batch_size, chunk_rows=chunk_rows,
            compressor=compressor, device=device, overwrite=overwrite, resume=resume,
            shard_rows=shard_rows, drop_vocab_padding=drop_vocab_padding,
            **user_views(views, augment=augment, view_seed=view_seed, mix=mix))
        return _logits_summary(meta, seconds, store, k=topk or sample, resume=resume,
                               resumed=resumed)
    store = store.replace("{dataset}", dataset)
    teachers = tuple(t.replace("{dataset}", dataset) for t in teachers)
    data = DataConfig(dataset=dataset, split=split, data_dir=data_dir, limit=limit,
                      val_rows=val_rows)
    common = dict(store=store, batch_size=batch_size, chunk_rows=chunk_rows,
                  compressor=compressor, overwrite=overwrite, device=device)
    from softtargets.write.ensemble_run import ensemble_config
    ens_cfg = ensemble_config(data, teachers, common, **ens)
    sparse = dict(topk=topk, sample=sample, temperatures=parse_floats(temperatures),
                  sample_seed=sample_seed, sample_temperature=sample_temperature)
    if ens_cfg is not None and (topk is not None or sample is not None):
        raise ConfigError("--topk/--sample work with one softtargets teacher checkpoint; for an "
                          "ensemble, convert its combined log-probs with softtargets.format.sparse "
                          "(README, 'Sparse stores')")
    if views is not None and ens_cfg is not None:  # every member's views (members.py)
        ens_cfg = dataclasses.replace(ens_cfg, views=views, augment=augment, view_seed=view_seed,
                                      mix=mix)
    elif views is not None or mix is not None:
        sparse.update(views=views, augment=augment, view_seed=view_seed, mix=mix)
    if ens_cfg is None:
        cfg = LogitsConfig(data=data, teacher=teachers[0] if teachers else
                           f"runs/{dataset}/teacher.pt", resume=resume, break_lock=break_lock,
                           shard_rows=shard_rows, channels_last=channels_last,
                           compile=compile_, **common, **sparse)
        from softtargets.write.session import store_exists
        resumed = resume and store_exists(store)  # else --resume starts a new store
        meta, seconds = teacher_mod.run(cfg, progress=not quiet)
    else:
        from softtargets.write import ensemble_run as members
        from softtargets.write.session import store_exists
        ens_cfg = dataclasses.replace(ens_cfg, resume=resume, break_lock=break_lock,
                                      shard_rows=shard_rows)
        resumed = resume and store_exists(store)  # else --resume starts a new store
        meta, seconds = members.run(ens_cfg, progress=not quiet)
    _logits_summary(meta, seconds, store, k=topk or sample, resume=resume, resumed=resumed)


def _logits_summary(meta: Any, seconds: float, store: str, **how: Any) -> None:
    if ranks_from_env().is_main:  # torchrun: one summary line, from rank 0
        from softtargets.format.remote import store_size
        click.echo(report.logits_line(meta, seconds=seconds, size=store_size(store), store=store,
                                      **how))


@cli.command("student")
@student_options
@spec_options
@click.option("--student-factory", default=None, metavar="MODULE:FACTORY",
              help="Train your own student: a zero-argument callable returning an nn.Module, "
                   "given the inputs as the dataset gives them (any --data; default: the "
                   "built-in --arch student, IDX datasets only).")
@click.option("--optimizer", default=None, type=click.Choice(["sgd", "adam"]),
              help="--student-factory: SGD (momentum 0.9) or Adam [default: sgd].")
@click.option("--resume", is_flag=True,
              help="Go on from OUT/train-state.pt (saved every --checkpoint-every steps and "
                   "each epoch), mid-epoch, with the steps not taken yet: the same weights as "
                   "a run never stopped.")
@click.option("--checkpoint-every", type=int, default=100, show_default=True,
              help="Save the training state to OUT/train-state.pt every this many steps.")
@click.option("--store", default="runs/{dataset}/teacher-logits.zarr", show_default=True)
@click.option("--temperature", "-T", type=float, default=StudentTrainConfig.temperature,
              show_default=True, help="Softmax temperature of the soft-target term.")
@click.option("--alpha", type=float, default=StudentTrainConfig.alpha, show_default=True,
              help="Weight of the soft-target term; 1 - alpha weighs the hard-label term.")
@click.option("--loss", "loss_kind", default="kl", show_default=True,
              type=click.Choice(["kl", "mse"]),
              help="Soft term: KL at T, or mean squared error of the logits (dense stores).")
@click.option("--out", default="runs/{dataset}/student", show_default=True)
@click.option("--combine", default=None,
              help="Ensemble stores: arithmetic|geometric mean of the members at T "
                   "(default: the store's recorded rule).")
@click.option("--tail", default="rest", show_default=True,
              type=click.Choice(["rest", "renormalise"]),
              help="Top-k stores: keep the unlisted mass as one 'rest' bucket (needs its tail at "
                   "T stored) or renormalise over the kept classes (any T, ignores the tail).")
@click.option("--loader", default="auto", show_default=True,
              type=click.Choice(["auto", "memory", "stream"]),
              help="Dense stores: load into memory, or stream chunk by chunk (auto: stream above "
                   "1 GiB of logits).")
@click.option("--loader-workers", type=int, default=0, show_default=True,
              help="DataLoader worker processes of the streaming loader (0: threads in-process).")
@click.option("--mixup", type=float, default=0.0, show_default=True,
              help="Mixup with Beta(a, a) coefficients; the stored targets are mixed with the "
                   "same coefficient (0: off; e.g. 0.2).")
def student_cmd(store: str, temperature: float, alpha: float, loss_kind: str, out: str,
                combine: str | None, tail: str, loader: str, loader_workers: int, mixup: float,
                student_factory: str | None, optimizer: str | None, resume: bool,
                checkpoint_every: int, **kw: Any) -> None:
    """Stage 2: train a student from a logit store of any kind.

    The built-in students (--arch) train on the IDX datasets; --student-factory trains your own
    model on any --data through DistillDataset / StreamingDistillDataset.
    """
    data_spec, data_opts = pop_spec(kw, split="train", data_dir=kw["data_dir"],
                                    limit=kw["limit"])
    kw["dataset"] = resolve_spec(data_spec, kw["dataset"])
    if student_factory is not None or not is_idx(kw["dataset"]):
        from softtargets.cli.user import student_command
        return student_command(student_factory, data_opts, store=store, out=out,
                               temperature=temperature, alpha=alpha, rule=combine, tail=tail,
                               loader=loader, loader_workers=loader_workers, mixup=mixup,
                               optimizer=optimizer, resume=resume,
                               checkpoint_every=checkpoint_every, loss=loss_kind, **kw)
    if optimizer is not None:
        raise ConfigError("--optimizer applies to --student-factory students; the built-in "
                          "students use SGD with momentum (drop --optimizer)")
    _train_student(out, store=store, temperature=temperature, alpha=alpha, combine=combine,
                   tail=tail, loader=loader, loader_workers=loader_workers, mixup=mixup,
                   checkpoint_every=checkpoint_every, resume=resume, loss=loss_kind, **kw)


@cli.command("baseline")
@student_options
@click.option("--out", default="runs/{dataset}/baseline", show_default=True)
def baseline_cmd(out: str, **kw: Any) -> None:
    """Train the same student on hard labels only (no teacher)."""
    _train_student(out, store=None, **kw)


def _train_student(out: str, *, dataset: str, data_dir: str, limit: int | None, val_rows: int,
                   arch: str, hidden: str, epochs: int, batch_size: int, lr: float,
                   clip_grad: float, seed: int, threads: int | None, quiet: bool,
                   store: str | None, checkpoint_every: int | None = None,
                   resume: bool = False, **loss: Any) -> None:
    from softtargets.recipes.hinton2015.train import train_student
    out = out.replace("{dataset}", dataset)
    store = None if store is None else store.replace("{dataset}", dataset)
    data = DataConfig(dataset=dataset, data_dir=data_dir, limit=limit, val_rows=val_rows)
    cfg = StudentTrainConfig(data=data, store=store, arch=arch, hidden=parse_hidden(hidden),
                             epochs=epochs, batch_size=batch_size, lr=lr, clip_grad=clip_grad,
                             seed=seed, threads=threads, **loss)
    m = train_student(cfg, out_dir=out, progress=not quiet, checkpoint_every=checkpoint_every,
                      resume=resume)
    suffix = "" if cfg.loss == "kl" else f", loss {cfg.loss}"
    how = f"T={cfg.temperature:g}, alpha={cfg.alpha:g}{suffix}" if store else "hard labels"
    click.echo(f"{m['role']}: {m['model']} ({how}), {epochs} epochs on {m['train_rows']} rows in "
               f"{m['seconds']:.0f} s: {report.errors_text(m)} -> {out}")


@cli.command("summary")
@click.argument("run_dir", default="runs/fashion-mnist")
def summary_cmd(run_dir: str) -> None:
    """Teacher, baseline and distilled test errors side by side."""
    click.echo(report.summary_table(Path(run_dir)))


@cli.command("inspect")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True,
              help="Print the metadata plus a `storage` section as JSON.")
def inspect_cmd(store: str, as_json: bool) -> None:
    """Print a store's provenance and layout (metadata and listings only, no chunk data)."""
    from softtargets.tools import provenance
    info = provenance.store_info(store)
    click.echo(json.dumps(info, indent=2) if as_json else provenance.describe(info))


@cli.command("verify")
@click.argument("store")
@click.option("--dataset", default=None, type=click.Choice(sorted(data_mod.DATASETS)),
              help="Also check that the store was computed on this dataset (fingerprint "
                   "recomputed from the files).")
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True)
@click.option("--split", default=None, type=click.Choice(["train", "test"]),
              help="Split of --dataset (default: the store's).")
@click.option("--limit", type=int, default=None,
              help="Leading rows of --dataset (default: the store's limit).")
@click.option("--allow-subset", is_flag=True,
              help="Accept a store that holds only some of the dataset's rows.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(store: str, dataset: str | None, data_dir: str, split: str | None,
               limit: int | None, allow_subset: bool, as_json: bool) -> None:
    """Decode every chunk (crc32c), check ids cover the dataset once and values are finite.

    Exits 1 with the chunk and rows of every problem.
    """
    from softtargets.tools import verify
    from softtargets.errors import VerifyError
    from softtargets.format.store import read_meta
    identity = names = None
    if dataset is not None:
        meta, _ = read_meta(store)
        identity, names = verify.dataset_identity(meta, dataset=dataset, data_dir=data_dir,
                                                  split=split, limit=limit)
    rep = verify.verify_store(store, identity=identity, class_names=names,
                              allow_subset=allow_subset)
    click.echo(json.dumps(rep.to_json(), indent=2) if as_json else rep.text())
    if not rep.ok:
        raise VerifyError(rep.summary())


cli.add_command(data_cmd)
cli.add_command(train_teacher_cmd)
cli.add_command(import_topk_cmd)
cli.add_command(export_topk_cmd)
for _command in LM_COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="softtargets")
