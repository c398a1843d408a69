"""`softtargets import-topk` / `export-topk`: top-k log-prob records <-> top-k stores, as thin
layers over softtargets.import_topk and softtargets.export_topk (docs/LM.md)."""

from __future__ import annotations

import time
from typing import Any

import click

from softtargets.cli.data import load_data, pop_spec, spec_options
from softtargets.config import DEFAULT_DATA_DIR
from softtargets.errors import ConfigError
from softtargets.format.records import DEFAULT_TOLERANCE


def _dataset(kw: dict[str, Any], split: str, *, required: bool) -> Any:
    """The dataset --data names (None when it is optional and not given)."""
    spec, options = pop_spec(kw, split=split, data_dir=DEFAULT_DATA_DIR, limit=None)
    if spec is None:
        if required:
            raise ConfigError("import-topk needs the records' data: --data tokens:PATH "
                              "--seq-len L --vocab-size V (or another --data SPEC)")
        return None
    return load_data(spec, options)


@click.command("import-topk")
@click.argument("records")
@spec_options
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--store", required=True, help="Where to write the top-k store.")
@click.option("--temperature", type=float, default=None,
              help="The records' temperature (default: their header's; only 1 is accepted).")
@click.option("--mass-tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="How far a position's top-k probabilities may sum above 1 (rounding).")
@click.option("--dataset-id", default=None, help="A name for this version of the data.")
@click.option("--chunk-rows", type=int, default=None,
              help="Rows per chunk (a multiple of the positions per sequence).")
@click.option("--compressor", default="zstd", show_default=True,
              type=click.Choice(["zstd", "blosc", "none"]))
@click.option("--overwrite", is_flag=True, help="Replace an existing store at --store.")
@click.option("--resume", is_flag=True, help="Continue an interrupted import.")
def import_topk_cmd(records: str, split: str, store: str, temperature: float | None,
                    mass_tolerance: float, dataset_id: str | None, chunk_rows: int | None,
                    compressor: str, overwrite: bool, resume: bool, **kw: Any) -> None:
    """Write a top-k store from per-position top-k log-prob records (.jsonl or .npz)."""
    from softtargets.write.imports import import_topk
    dataset = _dataset(kw, split, required=True)
    t0 = time.perf_counter()
    meta = import_topk(records, store, dataset=dataset, temperature=temperature,
                       mass_tolerance=mass_tolerance, dataset_id=dataset_id,
                       chunk_rows=chunk_rows, compressor=compressor, overwrite=overwrite,
                       resume=resume)
    click.echo(f"import-topk: {meta.n} rows (k={meta.extra['sparse']['k']}) of "
               f"{dataset.name} from {records} in {time.perf_counter() - t0:.1f} s -> {store}")


@click.command("export-topk")
@click.argument("store")
@click.argument("out")
@spec_options
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Log-probs at this temperature (one the store holds the tail mass at).")
@click.option("--overwrite", is_flag=True, help="Replace an existing records file at OUT.")
def export_topk_cmd(store: str, out: str, split: str, temperature: float, overwrite: bool,
                    **kw: Any) -> None:
    """Write a top-k store's rows as records to OUT (.jsonl or .npz); with --data, each record
    also gets its input tokens (input_ids) and the store is checked against the data."""
    from softtargets.tools.export import export_topk
    dataset = _dataset(kw, split, required=False)
    t0 = time.perf_counter()
    count = export_topk(store, out, temperature=temperature, dataset=dataset,
                        overwrite=overwrite)
    click.echo(f"export-topk: {count} records of {store} at T={temperature:g} in "
               f"{time.perf_counter() - t0:.1f} s -> {out}")
