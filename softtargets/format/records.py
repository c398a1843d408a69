"""Per-position top-k log-probability records, as inference servers return them. numpy only.

docs/LM.md ("Top-k records") is the normative description. A record is one sequence:

    sample_id  int            the dataset's sample id of the sequence
    token_ids  (L, k) ints    per position p: the k most likely next tokens
    logprobs   (L, k) floats  their log-probabilities at `temperature`, descending
    input_ids  (L,) ints      optional: the sequence's input tokens, checked against the data

Files are JSONL (a header line, then one line per record) or .npz (arrays (N, L, k) and the
header as JSON). Without positions (`positions` null) a record is one row: token_ids (k,).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from softtargets.errors import RecordError
from softtargets.format import sparse as sp
from softtargets.format.codecs import FP16_MAX

FORMAT = "softtargets.topk_records"
VERSION = 1
DEFAULT_TOLERANCE = 1e-3  # top-k mass may exceed 1 by this (fp32 servers, float16 rounding)
BATCH_RECORDS = 64  # records parsed, checked and appended at once
ARRAYS = ("sample_id", "token_ids", "logprobs")


@dataclasses.dataclass(frozen=True)
class RecordsHeader:
    """What every record of a file shares (the JSONL header line; the npz `header`)."""

    temperature: float
    k: int
    vocab_size: int
    positions: int | None  # L; None: one row per record (no position axis)
    records: int | None = None  # N, when the writer knew it
    source: dict[str, Any] | None = None  # informative: what the records came from

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: Any, *, where: str) -> RecordsHeader:
        """The header `d`, or one line naming the key that is wrong."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else d
            raise RecordError(f"{where}: the header's format is {got!r}, expected {FORMAT!r}; "
                              "the first line of a records file is its header (docs/LM.md)")
        if d.get("version") != VERSION:
            raise RecordError(f"{where}: records version {d.get('version')!r} is not "
                              f"{VERSION}; upgrade softtargets")
        for key, low in (("k", 1), ("vocab_size", 1)):
            if not _is_int(d.get(key)) or d[key] < low:
                raise RecordError(f"{where}: header {key} must be a positive integer, got "
                                  f"{d.get(key)!r}")
        if d.get("positions") is not None and (not _is_int(d["positions"]) or d["positions"] < 1):
            raise RecordError(f"{where}: header positions must be a positive integer or null, "
                              f"got {d['positions']!r}")
        t = d.get("temperature")
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0 \
                or not math.isfinite(t):
            raise RecordError(f"{where}: header temperature must be a number > 0, got {t!r}")
        return cls(temperature=float(t), k=d["k"], vocab_size=d["vocab_size"],
                   positions=d.get("positions"), records=d.get("records"),
                   source=d.get("source"))


@dataclasses.dataclass(frozen=True)
class RecordBatch:
    """Consecutive records; `first` is the index of the first in its input (for messages).

    sample_ids (B,) int64, token_ids (B, L, k) int64, logprobs (B, L, k) float64, input_ids
    (B, L) int64 or None; L = 1 for records without positions.
    """

    first: int
    sample_ids: np.ndarray
    token_ids: np.ndarray
    logprobs: np.ndarray
    input_ids: np.ndarray | None = None


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# -- checks ---------------------------------------------------------------------------------------

def _first(bad: np.ndarray) -> tuple[int, int, int] | None:
    """(record, position, entry) of the first True of a (B, L, k) or (B, L) mask."""
    hits = np.argwhere(bad)
    return None if not len(hits) else (*map(int, hits[0]), *(0,) * (3 - bad.ndim))[:3]


def check_topk(token_ids: np.ndarray, logprobs: np.ndarray, *, vocab_size: int,
               tolerance: float, name: Callable[[int], str], positions: bool) -> np.ndarray:
    """The float16 log-probs (B, L, k) of checked top-k rows; else one line naming the record
    (`name(b)`), the position and the value: ids outside [0, vocab_size) or repeated, log-probs
    NaN/Inf, beyond float16, not descending, or a top-k mass above 1 + tolerance."""
    def refuse(bad: np.ndarray, what: Callable[[int, int, int], str]) -> None:
        hit = _first(bad)
        if hit is not None:
            b, p, j = hit
            at = f" position {p}" if positions else ""
            raise RecordError(f"{name(b)}{at}: {what(b, p, j)}")

    refuse((token_ids < 0) | (token_ids >= vocab_size), lambda b, p, j: (
        f"token id {token_ids[b, p, j]} is outside [0, {vocab_size}) (the vocabulary); records "
        "and dataset must share the tokenizer"))
    order = np.sort(token_ids, axis=2)
    refuse(np.diff(order, axis=2) == 0, lambda b, p, j: (
        f"token id {order[b, p, j]} is listed twice; each position lists k distinct tokens"))
    refuse(~np.isfinite(logprobs), lambda b, p, j: (
        f"logprob {logprobs[b, p, j]} is not finite; drop the entry (use a smaller k)"))
    refuse(logprobs < -FP16_MAX, lambda b, p, j: (
        f"logprob {logprobs[b, p, j]:.6g} is below float16's range (-{FP16_MAX:g}); drop the "
        "entry (use a smaller k)"))
    refuse(np.diff(logprobs, axis=2) > 0, lambda b, p, j: (
        f"logprobs are not in descending order ({logprobs[b, p, j]:.6g} then "
        f"{logprobs[b, p, j + 1]:.6g}); list each position's tokens most likely first"))
    values = logprobs.astype(np.float16)
    mass = np.exp(values.astype(np.float64)).sum(axis=2)  # (B, L)
    refuse(mass > 1.0 + tolerance, lambda b, p, j: (
        f"top-k probabilities sum to {mass[b, p]:.6g} > 1 + tolerance {tolerance:g}: these are "
        "not normalised log-probabilities (log-softmax); are they logits?"))
    return values


def to_sparse_rows(token_ids: np.ndarray, values: np.ndarray) -> sp.SparseRows:
    """Top-k rows (R, k) of checked records: float16 log-probs `values` are the store's values,
    lse 0 (they are normalised), tail 1 - sum(exp(values)) clamped at 0 (one column, T = 1)."""
    mass = np.exp(values.astype(np.float64)).sum(axis=1)  # (R,)
    tail = np.maximum(0.0, 1.0 - mass)[:, None]  # (R, 1)
    return sp.SparseRows(ids=token_ids.astype(np.int64), logits=values.astype(np.float16),
                         lse=np.zeros(len(values), np.float32), tail=tail.astype(np.float32))


# -- reading --------------------------------------------------------------------------------------

def read_records(source: Any, *, batch_records: int = BATCH_RECORDS,
                 ) -> tuple[RecordsHeader | None, Iterator[RecordBatch]]:
    """(header or None, batches of records) of a .jsonl or .npz path, a mapping of arrays
    (`sample_id` (N,), `token_ids` and `logprobs` (N, L, k) or (N, k), optional `input_ids`), or
    an iterable of record dicts. Mappings and dicts have no header (None)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise RecordError(f"records file {str(path)!r} not found")
        if path.suffix == ".npz":
            header, arrays = _load_npz(path)
            return header, _array_batches(arrays, batch_records, header.positions is not None,
                                          where=str(path))
        if path.suffix == ".jsonl":
            return _jsonl(path, batch_records)
        raise RecordError(f"records file {str(path)!r} must end in .jsonl or .npz")
    if isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        missing = [k for k in ARRAYS if k not in arrays]
        if missing:
            raise RecordError(f"record arrays need {list(ARRAYS)} (and optionally input_ids); "
                              f"missing {missing}")
        positions = arrays["token_ids"].ndim == 3
        return None, _array_batches(arrays, batch_records, positions, where="record arrays")
    if isinstance(source, Iterable):
        return None, _dict_batches(iter(source), batch_records, where="record")
    raise RecordError(f"records must be a .jsonl/.npz path, a mapping of arrays or an iterable "
                      f"of record dicts, got {type(source).__name__}")


def _load_npz(path: Path) -> tuple[RecordsHeader, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # not a zip, damaged, or an object array
        raise RecordError(f"{path}: cannot read as .npz: {type(e).__name__}: {e}") from e
    if "header" not in arrays:
        raise RecordError(f"{path}: no 'header' array; a records .npz holds the header as JSON")
    header = RecordsHeader.from_json(_json(str(arrays.pop("header")), where=str(path)),
                                     where=str(path))
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise RecordError(f"{path}: missing arrays {missing}")
    return header, arrays


def _json(text: str, *, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: not JSON ({e})") from None


def _array_batches(arrays: dict[str, np.ndarray], size: int, positions: bool, *,
                   where: str) -> Iterator[RecordBatch]:
    ids = arrays["sample_id"]
    tok, lp = arrays["token_ids"], arrays["logprobs"]
    if not positions:  # (N, k) -> (N, 1, k)
        tok, lp = tok[:, None], lp[:, None]
    inputs = arrays.get("input_ids")
    if inputs is not None and not positions:
        inputs = inputs[:, None]
    n = len(ids)
    if ids.ndim != 1 or tok.ndim != 3 or tok.shape != lp.shape or len(tok) != n \
            or (inputs is not None and inputs.shape != tok.shape[:2]):
        raise RecordError(f"{where}: need sample_id (N,), token_ids and logprobs (N, L, k) "
                          f"{'' if positions else 'or (N, k) '}and input_ids (N, L), got "
                          f"{ids.shape}, {tok.shape}, {lp.shape}"
                          f"{'' if inputs is None else f', {inputs.shape}'}")
    for name, a in (("sample_id", ids), ("token_ids", tok), *((("input_ids", inputs),)
                                                                 if inputs is not None else ())):
        if a.dtype.kind not in "iu":
            raise RecordError(f"{where}: {name} must be integers, got dtype {a.dtype}")
    if lp.dtype.kind != "f":
        raise RecordError(f"{where}: logprobs must be floating point, got dtype {lp.dtype}")
    for a in range(0, n, size):
        sl = slice(a, min(n, a + size))
        yield RecordBatch(first=a, sample_ids=ids[sl].astype(np.int64),
                          token_ids=tok[sl].astype(np.int64), logprobs=lp[sl].astype(np.float64),
                          input_ids=None if inputs is None else inputs[sl].astype(np.int64))


def _jsonl(path: Path, size: int) -> tuple[RecordsHeader, Iterator[RecordBatch]]:
    f = path.open("r", encoding="utf-8")
    first = f.readline()
    header = RecordsHeader.from_json(_json(first, where=f"{path} line 1") if first.strip()
                                     else None, where=f"{path} line 1")

    def lines() -> Iterator[Any]:
        with f:
            for number, line in enumerate(f, start=2):
                if line.strip():
                    yield _json(line, where=f"{path} line {number}")
    return header, _dict_batches(lines(), size, where=f"{path} record")


def _dict_batches(records: Iterator[Any], size: int, *, where: str) -> Iterator[RecordBatch]:
    first, batch = 0, []
    for index, record in enumerate(records):
        batch.append(_record_arrays(record, f"{where} {index}"))
        if len(batch) == size:
            yield _stack(first, batch, where)
            first, batch = index + 1, []
    if batch:
        yield _stack(first, batch, where)


def _record_arrays(record: Any, where: str) -> tuple[Any, ...]:
    """(sample_id, token_ids, logprobs, input_ids or None) of one record dict."""
    if not isinstance(record, dict) or any(k not in record for k in ARRAYS):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise RecordError(f"{where}: a record is an object with {list(ARRAYS)} (and optionally "
                          f"input_ids), got {keys}")
    if not _is_int(record["sample_id"]):
        raise RecordError(f"{where}: sample_id must be an integer, got {record['sample_id']!r}")
    try:
        tok = np.asarray(record["token_ids"], dtype=np.int64)
        lp = np.asarray(record["logprobs"], dtype=np.float64)
        inp = None if record.get("input_ids") is None else \
            np.asarray(record["input_ids"], dtype=np.int64)
    except (ValueError, TypeError) as e:
        raise RecordError(f"{where} (sample_id {record['sample_id']}): token_ids, logprobs "
                          f"and input_ids must be (nested) lists of numbers of one shape: "
                          f"{e}") from None
    return int(record["sample_id"]), tok, lp, inp


def _stack(first: int, batch: list[tuple[Any, ...]], where: str) -> RecordBatch:
    shape = batch[0][1].shape
    for i, (sid, tok, lp, inp) in enumerate(batch):
        want_inputs = (shape[0],) if len(shape) == 2 else ()
        if tok.shape != shape or lp.shape != shape or tok.ndim not in (1, 2) \
                or (inp is not None and inp.shape != want_inputs):
            raise RecordError(f"{where} {first + i} (sample_id {sid}): token_ids "
                              f"{tok.shape}, logprobs {lp.shape}"
                              f"{'' if inp is None else f', input_ids {inp.shape}'} differ from "
                              f"the first record's {shape}; every record has the same (L, k)")
    has_inputs = {b[3] is None for b in batch}
    if len(has_inputs) > 1:
        raise RecordError(f"{where}s {first}..{first + len(batch) - 1}: input_ids is given for "
                          "some records and not others; give it for all or none")
    tok = np.stack([b[1] for b in batch])
    lp = np.stack([b[2] for b in batch])
    inputs = None if batch[0][3] is None else np.stack([b[3] for b in batch])
    if tok.ndim == 2:  # records without positions: (B, k) -> (B, 1, k)
        tok, lp = tok[:, None], lp[:, None]
        inputs = None if inputs is None else inputs[:, None]
    return RecordBatch(first=first, sample_ids=np.array([b[0] for b in batch], np.int64),
                       token_ids=tok, logprobs=lp, input_ids=inputs)


# -- writing --------------------------------------------------------------------------------------

def is_records_file(path: Path) -> bool:
    """Whether `path` is a records file (its header says so): only such a file is replaced."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return json.loads(str(z["header"])).get("format") == FORMAT
        with path.open("r", encoding="utf-8") as f:
            return json.loads(f.readline()).get("format") == FORMAT
    except Exception:  # anything unreadable is not ours
        return False


def write_jsonl(path: Path, header: RecordsHeader, batches: Iterable[RecordBatch]) -> int:
    """Write the header line, then one line per record; the number of records."""
    count = 0
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header.to_json()) + "\n")
        for b in batches:
            for i in range(len(b.sample_ids)):
                f.write(json.dumps(_record_dict(b, i, header.positions is not None)) + "\n")
            count += len(b.sample_ids)
    return count


def _record_dict(b: RecordBatch, i: int, positions: bool) -> dict[str, Any]:
    pick = slice(None) if positions else 0  # (L, k), or (k,) without positions
    d = {"sample_id": int(b.sample_ids[i]), "token_ids": b.token_ids[i][pick].tolist(),
         "logprobs": b.logprobs[i][pick].tolist()}
    if b.input_ids is not None:
        d["input_ids"] = b.input_ids[i][pick].tolist()
    return d


def write_npz(path: Path, header: RecordsHeader, batches: Iterable[RecordBatch]) -> int:
    """Write the arrays (N, L, k) (or (N, k)) and the header as JSON; the number of records."""
    parts = list(batches)
    if not parts:
        raise RecordError(f"{path}: no records to write")
    squeeze = header.positions is None  # (N, 1, k) -> (N, k)

    def cat(name: str, dtype: Any) -> np.ndarray:
        a = np.concatenate([getattr(b, name) for b in parts]).astype(dtype)
        return a[:, 0] if squeeze and a.ndim > 1 else a
    arrays = {"sample_id": cat("sample_ids", np.int64), "token_ids": cat("token_ids", np.int64),
              "logprobs": cat("logprobs", np.float32)}
    if parts[0].input_ids is not None:
        arrays["input_ids"] = cat("input_ids", np.int64)
    with path.open("wb") as f:
        np.savez_compressed(f, header=np.array(json.dumps(header.to_json())), **arrays)
    return len(arrays["sample_id"])
