"""import_topk: a top-k store from an inference server's per-position top-k log-probs.

    meta = import_topk("records.jsonl", "teacher.zarr", dataset=TokenSequences(...))

The records (docs/LM.md, "Top-k records": a JSONL or .npz file, a mapping of arrays, or an
iterable of record dicts) are checked record by record and appended to a LogitWriter with
TopKLogProbs targets, so the store is written through the one write session: lease, digests,
input digests of the dataset, row checks, resume.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.datasets.base import BaseDataset
from softtargets.errors import AppendError, ConfigError, RecordError
from softtargets.format import records as rec
from softtargets.format.store import StoreMeta
from softtargets.write.targets import TopKLogProbs
from softtargets.write.writer import LogitWriter


def _temperature(given: float | None, header: rec.RecordsHeader | None, where: str) -> float:
    """The records' temperature: given, or the header's (they must agree); only 1 is stored."""
    stated = header.temperature if header is not None else None
    if given is None and stated is None:
        raise ConfigError(f"{where} have no header: pass temperature= (the temperature their "
                          "log-probs were computed at)")
    if given is not None and stated is not None and not np.isclose(given, stated):
        raise RecordError(f"{where} are log-probs at temperature {stated:g} (header) but "
                          f"temperature={given:g} was passed; pass the records' temperature")
    t = float(stated if given is None else given)
    if t != 1.0:
        raise RecordError(
            f"{where} are log-probs at temperature {t:g}: they give the teacher's distribution "
            "at that temperature only, but a top-k store holds the normaliser and tail at "
            "T = 1 (docs/FORMAT.md, 'Sparse stores'); record log-probs at temperature 1 (the "
            "raw logits' log-softmax, e.g. vLLM logprobs_mode='raw_logprobs')")
    return t


def _check_header(header: rec.RecordsHeader, dataset: BaseDataset, k: int, where: str) -> None:
    """The header's vocabulary, positions and k against the dataset and the records."""
    if header.vocab_size != dataset.num_classes:
        raise RecordError(f"{where} have vocab_size {header.vocab_size} but dataset "
                          f"{dataset.name} has {dataset.num_classes} token classes; records and "
                          "dataset must share the tokenizer (pass the dataset's vocab_size)")
    if header.positions != dataset.positions:
        raise RecordError(f"{where} have {header.positions} positions per record but dataset "
                          f"{dataset.name} has {dataset.positions} per sample (its seq_len)")
    if header.k != k:
        raise RecordError(f"{where}: header k is {header.k} but the records list {k} tokens "
                          "per position")


def _check_batch(batch: rec.RecordBatch, dataset: BaseDataset, writer: LogitWriter, *,
                 k: int, tolerance: float, where: str) -> None:
    """One line naming the record (and position) whose shape, values or inputs are wrong."""
    L = dataset.positions or 1
    last = batch.first + len(batch.sample_ids) - 1
    if batch.token_ids.shape[1:] != (L, k):
        raise RecordError(f"{where}: records {batch.first}..{last}: (positions, k) is "
                          f"{batch.token_ids.shape[1:]}, expected {(L, k)} (dataset "
                          f"{dataset.name}: {L} positions; k of the first record)")

    def name(b: int) -> str:
        return f"{where}: record {batch.first + b} (sample_id {batch.sample_ids[b]})"
    rec.check_topk(batch.token_ids, batch.logprobs, vocab_size=dataset.num_classes,
                   tolerance=tolerance, name=name, positions=dataset.positions is not None)
    if batch.input_ids is None:
        return
    try:
        rows = writer.source.dataset_rows_of(batch.sample_ids)
    except AppendError as e:
        raise RecordError(f"{where}: records {batch.first}..{last}: {e}") from None
    inputs = dataset.take(rows)[0].reshape(len(rows), L)
    bad = np.argwhere(inputs != batch.input_ids)
    if len(bad):
        b, p = map(int, bad[0])
        raise RecordError(f"{name(b)} position {p}: input token {batch.input_ids[b, p]} but "
                          f"dataset {dataset.name} has {inputs[b, p]} there; the records were "
                          "computed on other tokens (or other sample ids)")


def import_topk(records: Any, store: str, *, dataset: BaseDataset,
                temperature: float | None = None, mass_tolerance: float = rec.DEFAULT_TOLERANCE,
                teacher: dict[str, Any] | None = None, dataset_id: str | None = None,
                chunk_rows: int | None = None, compressor: str = "zstd",
                overwrite: bool = False, resume: bool = False,
                batch_records: int = rec.BATCH_RECORDS) -> StoreMeta:
    """Write a top-k store of `dataset` from top-k log-prob records; its metadata (complete).

    `records`: a .jsonl or .npz path, a mapping of arrays or an iterable of record dicts
    (docs/LM.md). `temperature`: the records' (default: their header's; only 1 is accepted).
    Every sample of `dataset` needs exactly one record; each is checked (ids in the
    vocabulary and distinct, log-probs finite, descending, top-k mass <= 1 + mass_tolerance,
    `input_ids` equal to the dataset's tokens when given). `teacher`: a dict recorded as the
    store's teacher, merged over the header's `source`.
    """
    if not isinstance(dataset, BaseDataset):
        raise ConfigError(f"dataset must be a softtargets dataset (e.g. TokenSequences), got "
                          f"{type(dataset).__name__}")
    if teacher is not None and not isinstance(teacher, dict):
        raise ConfigError(f"teacher must be a dict describing the records' model, got "
                          f"{teacher!r}")
    header, batches = rec.read_records(records, batch_records=batch_records)
    where = f"records {str(records)!r}" if isinstance(records, (str, Path)) else "records"
    _temperature(temperature, header, where)
    first = next(batches, None)
    if first is None:
        raise RecordError(f"{where}: no records; dataset {dataset.name} needs {len(dataset)}")
    k = first.token_ids.shape[-1]
    if header is not None:
        _check_header(header, dataset, k, where)
    identity = {"kind": "records", "arch": "top-k log-prob records", "temperature": 1.0,
                "source": (header.source if header is not None else None) or {},
                "records": str(records) if isinstance(records, (str, Path)) else None,
                **(teacher or {})}
    writer = LogitWriter(store, dataset=dataset, targets=TopKLogProbs(
        k, mass_tolerance=mass_tolerance), positions=dataset.positions is not None,
        teacher=identity, dataset_id=dataset_id, chunk_rows=chunk_rows, compressor=compressor,
        overwrite=overwrite, resume=resume)
    with writer:
        for batch in itertools.chain([first], batches):
            _check_batch(batch, dataset, writer, k=k, tolerance=mass_tolerance, where=where)
            token_ids, logprobs = batch.token_ids, batch.logprobs
            if dataset.positions is None:  # (B, 1, k) -> (B, k)
                token_ids, logprobs = token_ids[:, 0], logprobs[:, 0]
            try:
                writer.append_topk(batch.sample_ids, token_ids, logprobs)
            except AppendError as e:
                last = batch.first + len(batch.sample_ids) - 1
                raise RecordError(f"{where}: records {batch.first}..{last}: {e}") from None
    return writer.meta
