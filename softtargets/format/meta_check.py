"""Strict metadata at open: every reader refuses a store whose metadata or array layout lies.

numpy and zarr only. `open_store_group` turns "this is not a store" into one line (nothing there,
not a Zarr node, an array inside a store, an invalid zarr.json, a foreign group); `check_meta`
refuses each violated rule of docs/FORMAT.md ("Verifying") in one line naming the key, the value
and what was expected. verify reports the same lines as problems (`meta_problems`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from softtargets.format import schema
from softtargets.errors import StoreError, StoreMetadataError
from softtargets.format.remote import is_remote, local_path, open_group


def open_store_group(url: str) -> tuple[dict[str, Any], zarr.Group]:
    """(attributes["softtargets"], group) of the store at `url`; refuses anything that is not a
    softtargets store, and a format version newer than this reader's."""
    if not is_remote(url) and not Path(local_path(url)).exists():
        raise StoreError(f"no store at {url!r}; run stage 1 (softtargets teacher-logits) first")
    try:
        group = open_group(url, mode="r")
    except zarr.errors.ContainsArrayError:
        raise StoreError(_array_inside(url)) from None
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StoreError(f"{url!r} is not a Zarr v3 group (no group zarr.json there: {e}); pass "
                         "the path of a store written by softtargets teacher-logits") from None
    except (ValueError, TypeError, KeyError) as e:  # JSONDecodeError is a ValueError
        raise StoreMetadataError(
            f"{_join(url, 'zarr.json')} is not valid Zarr v3 group metadata "
            f"({type(e).__name__}: {_first_line(e)}); the file is damaged or was edited") from None
    raw = group.attrs.get(schema.ATTR_KEY)
    if not isinstance(raw, dict) or raw.get("format") != schema.FORMAT_NAME:
        raise StoreError(f"{url!r} is a Zarr group but not a softtargets logit store "
                         f"(attributes[{schema.ATTR_KEY!r}].format != {schema.FORMAT_NAME!r})")
    version = raw.get("version")
    if type(version) is int and version > schema.MAX_READ_VERSION:
        raise StoreError(f"store {url!r} has format version {version!r}; this reader supports "
                         f"up to {schema.MAX_READ_VERSION}: upgrade softtargets")
    return raw, group


def check_meta(raw: Mapping[str, Any], group: zarr.Group, url: str) -> None:
    """Refuse the store at `url` if its metadata or arrays break a rule of the format; the first
    violation in one line (with the count of the others)."""
    problems = meta_problems(raw, group)
    if problems:
        more = (f" (and {len(problems) - 1} more metadata problem(s); `softtargets verify` lists "
                "them)") if len(problems) > 1 else ""
        raise StoreMetadataError(f"store {url!r}: {problems[0]}{more}")


def meta_problems(raw: Mapping[str, Any], group: zarr.Group, *,
                  require_arrays: bool | None = None) -> list[str]:
    """Every violated rule: metadata keys first, then (when they are valid) each array's layout.

    Arrays may be absent only while the store is incomplete (its writer is creating them), unless
    `require_arrays` (verify)."""
    problems = schema.key_problems(raw)
    if problems:
        return problems
    required = raw.get("complete") is True if require_arrays is None else require_arrays
    for spec in schema.row_arrays(raw):
        problems += array_problems(spec, group, required=required, chunk_rows=raw["chunk_rows"],
                                   shard_rows=raw.get("shard_rows"))
    return problems


def array_problems(spec: schema.ArraySpec, group: zarr.Group, *, required: bool,
                   chunk_rows: int, shard_rows: int | None) -> list[str]:
    """Shape, data type, chunk and shard grid and crc32c of one array against the metadata."""
    name = spec.name
    try:
        array = group[name]
    except KeyError:
        return [f"array {name!r} is missing; the store is truncated or damaged"] \
            if required else []
    except Exception as e:  # zarr rejects the array's zarr.json: say which key is wrong
        return [_rejected_array(spec, group, e)]
    if not isinstance(array, zarr.Array):
        return [f"{name!r} is a group, expected an array {spec.dims} {spec.dtype}"]
    out = []
    if tuple(array.shape) != spec.shape:
        out.append(f"array {name!r} has shape {tuple(array.shape)}, expected {spec.dims} = "
                   f"{spec.shape} from the metadata")
    if np.dtype(array.dtype) != np.dtype(spec.dtype):  # type: ignore[arg-type]
        out.append(f"array {name!r} has data_type {np.dtype(array.dtype)}, expected "  # type: ignore[arg-type]
                   f"{spec.dtype}")
    out += _grid_problems(spec, array, chunk_rows, shard_rows)
    out += _fill_problems(spec, array)
    if not has_crc32c(array):
        out.append(f"array {name!r} has codecs {codec_names(array)} without crc32c, expected "
                   "crc32c in the chain (and in a shard's index chain): damaged chunks must fail "
                   "to decode")
    return out


def expected_fill(spec: schema.ArraySpec) -> float:
    """The format's fill value: NaN for floats, -1 for ids and positions, 0 for classes and
    counts. It is what a deleted chunk reads as, so it must be one that the row checks reject."""
    if np.dtype(spec.dtype).kind == "f":
        return float("nan")
    return -1 if spec.rule in ("sample_id", "position") else 0


def _fill_problems(spec: schema.ArraySpec, array: zarr.Array) -> list[str]:
    want = expected_fill(spec)
    got = array.metadata.fill_value.item()  # type: ignore[union-attr]  # numpy scalar -> float
    same = np.isnan(got) if np.isnan(want) else got == want
    if same:
        return []
    return [f"array {spec.name!r} has fill_value {got!r}, expected {want!r}: a deleted chunk "
            "reads as the fill value, which must fail the row checks"]


def _grid_problems(spec: schema.ArraySpec, array: zarr.Array, rows: int,
                   shard: int | None) -> list[str]:
    out = []
    if tuple(array.chunks) != spec.grid(rows):
        inner = " (inner chunks of its shards)" if array.shards else ""
        out.append(f"array {spec.name!r} has chunks {tuple(array.chunks)}{inner}, expected "
                   f"{spec.grid(rows)} from metadata chunk_rows {rows}")
    want = spec.grid(shard) if shard and spec.row_axis == 0 else None
    got = tuple(array.shards) if array.shards else None
    if got != want:
        says = f"shard_rows {shard}" if shard else "no shard_rows (unsharded)"
        out.append(f"array {spec.name!r} has shards {got}, expected {want} from metadata {says}")
    return out


def codec_names(array: zarr.Array) -> list[str]:
    """The codec chain of an array with compressor settings, inner codecs of a shard in
    brackets: ["bytes", "zstd(level=3)", "crc32c"]."""
    out = []
    for codec in array.metadata.to_dict()["codecs"]:  # type: ignore[union-attr]
        name = codec["name"]
        if name == "sharding_indexed":
            inner = [c["name"] for c in codec["configuration"]["codecs"]]
            name = f"sharding_indexed[{', '.join(inner)}]"
        elif name in ("zstd", "blosc"):
            conf = codec.get("configuration", {})
            name += "(" + ", ".join(f"{k}={v}" for k, v in conf.items()
                                    if k in ("level", "cname", "clevel", "shuffle")) + ")"
        out.append(name)
    return out


def has_crc32c(array: zarr.Array) -> bool:
    """Whether every chunk (and a shard's index) is checksummed with crc32c."""
    codecs = array.metadata.to_dict()["codecs"]  # type: ignore[union-attr]
    if codecs and codecs[0]["name"] == "sharding_indexed":
        conf = codecs[0]["configuration"]
        return all(any(c["name"] == "crc32c" for c in conf.get(key, []))
                   for key in ("codecs", "index_codecs"))
    return any(c["name"] == "crc32c" for c in codecs)


def _rejected_array(spec: schema.ArraySpec, group: zarr.Group, error: Exception) -> str:
    """The line for an array whose zarr.json zarr cannot load: its data_type when that is what
    differs, else zarr's own complaint."""
    where = f"{spec.name}/zarr.json"
    doc = _read_json(group, where)
    got = doc.get("data_type") if isinstance(doc, dict) else None
    if isinstance(got, str) and got != spec.dtype:
        return f"array {spec.name!r} has data_type {got} in {where}, expected {spec.dtype}"
    return (f"array {spec.name!r}: zarr rejects {where} ({type(error).__name__}: "
            f"{_first_line(error)}); the file is damaged or was edited")


def _read_json(group: zarr.Group, key: str) -> Any:
    try:
        buf = sync(group.store.get(key, prototype=default_buffer_prototype()))
        return None if buf is None else json.loads(buf.to_bytes())
    except Exception:  # unreadable: the caller falls back to zarr's message
        return None


def _array_inside(url: str) -> str:
    """The line for a path that is a Zarr array: name the store it belongs to, if any."""
    parent, _, name = url.rstrip("/").rpartition("/")
    try:
        group = open_group(parent, mode="r") if parent else None
        is_store = group is not None and isinstance(group.attrs.get(schema.ATTR_KEY), dict)
    except Exception:  # the parent is no Zarr group: a lone array
        is_store = False
    if is_store:
        return (f"{url!r} is the array {name!r} inside the store {parent!r}, not a store; pass "
                f"the store path {parent!r}")
    return (f"{url!r} is a Zarr array, not a softtargets store (a Zarr group); pass the path of "
            "a store written by softtargets teacher-logits")


def _join(url: str, key: str) -> str:
    return f"{url.rstrip('/')}/{key}"


def _first_line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text[:200]
