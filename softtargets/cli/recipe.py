"""The paper recipe's own commands: find the IDX data, train the paper's teacher."""

from __future__ import annotations

import time

import click

from softtargets.cli.options import data_options, hidden_option, parse_hidden, quiet_option, \
    threads_option
from softtargets.config import ARCHS, DEFAULT_DATA_DIR, DataConfig, TeacherTrainConfig
from softtargets.datasets import idx_files as data_mod
from softtargets.recipes.hinton2015 import report


@click.command("data")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              type=click.Choice(sorted(data_mod.DATASETS)))
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True)
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


@click.command("train-teacher")
@data_options
@click.option("--arch", default="mlp", show_default=True, type=click.Choice(ARCHS),
              help="mlp, or cnn: --hidden C1,C2,FC (two 5x5 conv blocks and a fc layer).")
@hidden_option("1200,1200")
@click.option("--epochs", type=int, default=TeacherTrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=TeacherTrainConfig.batch_size, show_default=True)
@click.option("--lr", type=float, default=TeacherTrainConfig.lr, show_default=True)
@click.option("--dropout", type=float, default=TeacherTrainConfig.dropout, show_default=True)
@click.option("--input-dropout", type=float, default=TeacherTrainConfig.input_dropout,
              show_default=True)
@click.option("--jitter", type=int, default=None,
              help="Random input shifts of up to this many pixels [default: 2, the paper's; "
                   "0 for fashion-mnist, where it was measured to hurt].")
@click.option("--max-norm", type=float, default=TeacherTrainConfig.max_norm, show_default=True,
              help="Max L2 norm of each unit's incoming weights (0 disables).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default="runs/{dataset}/teacher.pt", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint at --out.")
@threads_option
@quiet_option
def train_teacher_cmd(dataset: str, data_dir: str, limit: int | None, val_rows: int, arch: str,
                      hidden: str, epochs: int, batch_size: int, lr: float, dropout: float,
                      input_dropout: float, jitter: int | None, max_norm: float, seed: int,
                      out: str, overwrite: bool, threads: int | None, quiet: bool) -> None:
    """Train the paper's teacher on an IDX dataset (an MLP with dropout, jitter, max-norm)."""
    from softtargets.recipes.hinton2015.train import train_teacher
    out = out.replace("{dataset}", dataset)
    jitter = data_mod.spec(dataset).teacher_jitter if jitter is None else jitter
    cfg = TeacherTrainConfig(
        data=DataConfig(dataset=dataset, data_dir=data_dir, limit=limit, val_rows=val_rows),
        arch=arch, hidden=parse_hidden(hidden), dropout=dropout, input_dropout=input_dropout,
        jitter=jitter, max_norm=max_norm, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        threads=threads)
    m = train_teacher(cfg, out=out, overwrite=overwrite, progress=not quiet)
    click.echo(f"teacher: {m['model']}, {epochs} epochs on {m['train_rows']} rows in "
               f"{m['seconds']:.0f} s: {report.errors_text(m)} -> {out}")
