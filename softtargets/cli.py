"""Command line: turns flags into config dataclasses and calls the library. No logic of its own."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from softtargets import data as data_mod
from softtargets import report
from softtargets.config import DataConfig, LogitsConfig, StudentTrainConfig, TeacherTrainConfig
from softtargets.errors import SofttargetsError


class Group(click.Group):
    """Turns package errors into a one-line `Error: ...` and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SofttargetsError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e


@click.group(cls=Group)
@click.version_option(package_name="softtargets")
def cli() -> None:
    """softtargets: offline soft targets for knowledge distillation."""


def data_options(fn: Callable) -> Callable:
    """--dataset, --data-dir, --limit, shared by every command that reads a dataset."""
    fn = click.option("--limit", type=int, default=None,
                      help="Use only the first N rows of the split (small runs, tests).")(fn)
    fn = click.option("--data-dir", default="data", show_default=True,
                      help="Where datasets are looked for (also /usr/share/datasets/...).")(fn)
    fn = click.option("--dataset", default="fashion-mnist", show_default=True,
                      type=click.Choice(sorted(data_mod.DATASETS)))(fn)
    return fn


def hidden_option(default: str) -> Callable:
    return click.option("--hidden", default=default, show_default=True,
                        help="Hidden layer widths, comma separated.")


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise click.BadParameter(f"--hidden must be comma-separated integers, got {text!r}")
    if not widths or min(widths) <= 0:
        raise click.BadParameter(f"--hidden needs positive widths, got {text!r}")
    return widths


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
threads_option = click.option("--threads", type=int, default=None,
                              help="torch intra-op threads (default: torch's choice).")


@cli.command("data")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              type=click.Choice(sorted(data_mod.DATASETS)))
@click.option("--data-dir", default="data", show_default=True)
@click.option("--download/--no-download", default=True, show_default=True,
              help="Download missing files from the dataset's canonical source (md5-checked).")
def data_cmd(dataset: str, data_dir: str, download: bool) -> None:
    """Find (or download) a dataset and print its split fingerprints."""
    t0 = time.perf_counter()
    where = data_mod.ensure_dataset(dataset, data_dir, download=download)
    prints = []
    for split in ("train", "test"):
        s = data_mod.load_split(DataConfig(dataset=dataset, split=split, data_dir=data_dir))
        prints.append(f"{split} {len(s)} rows {s.fingerprint[:19]}")
    click.echo(f"data: {dataset} in {where}: " + "; ".join(prints)
               + f" ({time.perf_counter() - t0:.1f} s)")


@cli.command("train-teacher")
@data_options
@hidden_option("1200,1200")
@click.option("--epochs", type=int, default=TeacherTrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=TeacherTrainConfig.batch_size, show_default=True)
@click.option("--lr", type=float, default=TeacherTrainConfig.lr, show_default=True)
@click.option("--dropout", type=float, default=TeacherTrainConfig.dropout, show_default=True)
@click.option("--input-dropout", type=float, default=TeacherTrainConfig.input_dropout,
              show_default=True)
@click.option("--jitter", type=int, default=TeacherTrainConfig.jitter, show_default=True,
              help="Random input shifts of up to this many pixels.")
@click.option("--max-norm", type=float, default=TeacherTrainConfig.max_norm, show_default=True,
              help="Max L2 norm of each unit's incoming weights (0 disables).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default="runs/{dataset}/teacher.pt", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint at --out.")
@threads_option
@quiet_option
def train_teacher_cmd(dataset: str, data_dir: str, limit: int | None, hidden: str, epochs: int,
                      batch_size: int, lr: float, dropout: float, input_dropout: float,
                      jitter: int, max_norm: float, seed: int, out: str, overwrite: bool,
                      threads: int | None, quiet: bool) -> None:
    """Train the paper's teacher (MLP 784-1200-1200-10, dropout, jitter, max-norm)."""
    from softtargets.train import train_teacher
    out = out.replace("{dataset}", dataset)
    cfg = TeacherTrainConfig(
        data=DataConfig(dataset=dataset, data_dir=data_dir, limit=limit),
        hidden=parse_hidden(hidden), dropout=dropout, input_dropout=input_dropout, jitter=jitter,
        max_norm=max_norm, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, threads=threads)
    m = train_teacher(cfg, out=out, overwrite=overwrite, progress=not quiet)
    click.echo(f"teacher: {m['model']}, {epochs} epochs on {m['train_rows']} rows in "
               f"{m['seconds']:.0f} s: {report.errors_text(m)} -> {out}")


@cli.command("teacher-logits")
@data_options
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--teacher", default="runs/{dataset}/teacher.pt", show_default=True,
              help="Teacher checkpoint written by train-teacher.")
@click.option("--store", default="runs/{dataset}/teacher-logits.zarr", show_default=True,
              help="Where to write the Zarr v3 logit store.")
@click.option("--batch-size", type=int, default=LogitsConfig.batch_size, show_default=True)
@click.option("--chunk-rows", type=int, default=None,
              help="Rows per chunk (default: about 2 MiB of float16 logits per chunk).")
@click.option("--compressor", default="zstd", show_default=True,
              type=click.Choice(["zstd", "blosc", "none"]))
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --store.")
@click.option("--channels-last", is_flag=True, help="channels_last layout (convolutional teachers).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the teacher.")
@threads_option
@quiet_option
def teacher_logits_cmd(dataset: str, data_dir: str, limit: int | None, split: str, teacher: str,
                       store: str, batch_size: int, chunk_rows: int | None, compressor: str,
                       device: str, overwrite: bool, channels_last: bool, compile_: bool,
                       threads: int | None, quiet: bool) -> None:
    """Stage 1: run the teacher over a split and write its raw logits to a store."""
    from softtargets import teacher as teacher_mod
    if threads is not None:
        import torch
        torch.set_num_threads(threads)
    teacher, store = teacher.replace("{dataset}", dataset), store.replace("{dataset}", dataset)
    cfg = LogitsConfig(data=DataConfig(dataset=dataset, split=split, data_dir=data_dir,
                                       limit=limit),
                       teacher=teacher, store=store, batch_size=batch_size, chunk_rows=chunk_rows,
                       compressor=compressor, overwrite=overwrite, device=device,
                       channels_last=channels_last, compile=compile_)
    meta, seconds = teacher_mod.run(cfg, progress=not quiet)
    size = report.store_size(store)
    click.echo(f"teacher-logits: {meta.n} x {meta.num_classes} float16 logits in {seconds:.1f} s "
               f"({meta.n / seconds:,.0f} rows/s), {size / 1e6:.2f} MB on disk -> {store}")


def student_options(fn: Callable) -> Callable:
    for option in reversed([
        hidden_option("800,800"),
        click.option("--epochs", type=int, default=StudentTrainConfig.epochs, show_default=True),
        click.option("--batch-size", type=int, default=StudentTrainConfig.batch_size,
                     show_default=True),
        click.option("--lr", type=float, default=StudentTrainConfig.lr, show_default=True),
        click.option("--clip-grad", type=float, default=StudentTrainConfig.clip_grad,
                     show_default=True, help="Max gradient norm (0 disables)."),
        click.option("--seed", type=int, default=0, show_default=True),
        threads_option, quiet_option,
    ]):
        fn = option(fn)
    return data_options(fn)


@cli.command("student")
@student_options
@click.option("--store", default="runs/{dataset}/teacher-logits.zarr", show_default=True)
@click.option("--temperature", "-T", type=float, default=StudentTrainConfig.temperature,
              show_default=True, help="Softmax temperature of the soft-target term.")
@click.option("--alpha", type=float, default=StudentTrainConfig.alpha, show_default=True,
              help="Weight of the soft-target term; 1 - alpha weighs the hard-label term.")
@click.option("--out", default="runs/{dataset}/student", show_default=True)
@click.option("--loader", default="auto", show_default=True,
              type=click.Choice(["auto", "memory", "stream"]),
              help="Load the store into memory, or stream it chunk by chunk (auto: stream above "
                   "1 GiB of logits).")
@click.option("--loader-workers", type=int, default=0, show_default=True,
              help="DataLoader worker processes of the streaming loader (0: threads in-process).")
def student_cmd(store: str, temperature: float, alpha: float, out: str, loader: str,
                loader_workers: int, **kw: Any) -> None:
    """Stage 2: train the student (784-800-800-10) from a logit store."""
    _train_student(out, store=store, temperature=temperature, alpha=alpha, loader=loader,
                   loader_workers=loader_workers, **kw)


@cli.command("baseline")
@student_options
@click.option("--out", default="runs/{dataset}/baseline", show_default=True)
def baseline_cmd(out: str, **kw: Any) -> None:
    """Train the same student on hard labels only (no teacher)."""
    _train_student(out, store=None, **kw)


def _train_student(out: str, *, dataset: str, data_dir: str, limit: int | None, hidden: str,
                   epochs: int, batch_size: int, lr: float, clip_grad: float, seed: int,
                   threads: int | None, quiet: bool, store: str | None, **loss: Any) -> None:
    from softtargets.train import train_student
    out = out.replace("{dataset}", dataset)
    store = None if store is None else store.replace("{dataset}", dataset)
    cfg = StudentTrainConfig(data=DataConfig(dataset=dataset, data_dir=data_dir, limit=limit),
                             store=store, hidden=parse_hidden(hidden), epochs=epochs,
                             batch_size=batch_size, lr=lr, clip_grad=clip_grad, seed=seed,
                             threads=threads, **loss)
    m = train_student(cfg, out_dir=out, progress=not quiet)
    how = f"T={cfg.temperature:g}, alpha={cfg.alpha:g}" if store else "hard labels"
    click.echo(f"{m['role']}: {m['model']} ({how}), {epochs} epochs on {m['train_rows']} rows in "
               f"{m['seconds']:.0f} s: {report.errors_text(m)} -> {out}")


@cli.command("summary")
@click.argument("run_dir", default="runs/fashion-mnist")
def summary_cmd(run_dir: str) -> None:
    """Teacher, baseline and distilled test errors side by side."""
    click.echo(report.summary_table(Path(run_dir)))


@cli.command("inspect")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the raw metadata as JSON.")
def inspect_cmd(store: str, as_json: bool) -> None:
    """Print a store's provenance and layout."""
    from softtargets.store import read_meta
    meta, _ = read_meta(store)
    if as_json:
        click.echo(json.dumps(meta.to_json(), indent=2))
    else:
        click.echo(report.describe_store(meta, store))


def main() -> None:
    cli(prog_name="softtargets")
