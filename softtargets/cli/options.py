"""Option groups shared by the commands (click decorators) and the parsers of their values."""

from __future__ import annotations

from collections.abc import Callable

import click

from softtargets.datasets import idx_files as data_mod
from softtargets.config import ARCHS, DEFAULT_DATA_DIR, StudentTrainConfig, parse_widths


def data_options(fn: Callable) -> Callable:
    """--dataset, --data-dir, --limit, --val-rows, shared by every command that reads a dataset."""
    fn = click.option("--val-rows", type=int, default=0, show_default=True, help="Hold out the "
                      "last N train rows for validation; train on the rows before them.")(fn)
    fn = click.option("--limit", type=int, default=None,
                      help="Use only the first N rows of the split (small runs, tests).")(fn)
    fn = click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True,
                      help="Folder holding <dataset>/ with the IDX files (only the default falls "
                           "back to /usr/share/datasets/<dataset>).")(fn)
    fn = click.option("--dataset", default="fashion-mnist", show_default=True,
                      type=click.Choice(sorted(data_mod.DATASETS)),
                      help="An IDX dataset (teacher-logits and student: an alias of --data "
                           "for IDX names).")(fn)
    return fn


def hidden_option(default: str) -> Callable:
    return click.option("--hidden", default=default, show_default=True,
                        help="Hidden layer widths, comma separated.")


def parse_hidden(text: str) -> tuple[int, ...]:
    widths = parse_widths(text)
    if widths is None:
        raise click.BadParameter(f"--hidden needs comma-separated positive integers, got {text!r}")
    return widths


def parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers (e.g. 1,4,20), got {text!r}")


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
threads_option = click.option("--threads", type=int, default=None,
                              help="torch intra-op threads (default: torch's choice).")


def ensemble_options(fn: Callable) -> Callable:
    """teacher-logits: ensembles, MC dropout and user teachers of the IDX path."""
    for option in reversed([
        click.option("--ensemble", "ensemble_spec", default=None,
                     help="JSON spec {\"teachers\": [...], \"factory\", \"transform\", "
                          "\"mc_dropout\", \"mc_seed\"} (teacher paths relative to it)."),
        click.option("--factory", default=None,
                     help="module:function building the teacher module; --teacher is then a "
                          "state dict."),
        click.option("--transform", default=None,
                     help="module:function applied to each input batch before the teacher "
                          "(IDX data: (B, H*W) float32 in [0, 1])."),
        click.option("--mc-dropout", type=int, default=0, show_default=True,
                     help="Run each teacher K times with train-mode dropout (seeded masks)."),
        click.option("--mc-seed", type=int, default=0, show_default=True),
        click.option("--combine", default=None,
                     help="arithmetic|geometric: rule recorded as the store's default, or the "
                          "one written with --store-combined-only."),
        click.option("--store-combined-only", "combined_only", is_flag=True,
                     help="Keep only the combined target (no member logits)."),
        click.option("--temperature", "-T", type=float, default=None,
                     help="T of an arithmetic --store-combined-only target."),
    ]):
        fn = option(fn)
    return fn


def student_options(fn: Callable) -> Callable:
    """The built-in student's model and training flags, shared by student and baseline."""
    for option in reversed([
        click.option("--arch", default="mlp", show_default=True,
                     type=click.Choice(ARCHS), help="Student architecture (cnn: "
                     "--hidden C1,C2,FC)."),
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
