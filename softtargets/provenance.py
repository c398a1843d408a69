"""`softtargets inspect`: what a store is (provenance) and how it is stored. No torch.

Reads only metadata and object listings, never chunk data, so it is cheap on object storage.
"""

from __future__ import annotations

import math
from typing import Any

import zarr

from softtargets.remote import count_objects, redact, store_size
from softtargets.store import LOGITS, SAMPLE_ID, StoreMeta, read_meta, unit_rows

# Keys of later format additions (ensembles, views, sparse forms) that inspect lists if present.
MEMBER_KEYS = ("teachers", "members", "ensemble", "views")


def codec_names(array: zarr.Array) -> list[str]:
    """The codec chain of an array, inner codecs of a shard in brackets."""
    out = []
    for codec in array.metadata.to_dict()["codecs"]:
        name = codec["name"]
        if name == "sharding_indexed":
            inner = [c["name"] for c in codec["configuration"]["codecs"]]
            name = f"sharding_indexed[{', '.join(inner)}]"
        elif codec["name"] in ("zstd", "blosc"):
            conf = codec.get("configuration", {})
            name += "(" + ", ".join(f"{k}={v}" for k, v in conf.items()
                                    if k in ("level", "cname", "clevel", "shuffle")) + ")"
        out.append(name)
    return out


def store_info(url: str) -> dict[str, Any]:
    """Metadata of the store plus a `storage` section measured from the store itself."""
    meta, group = read_meta(url)
    info = meta.to_json()
    info["storage"] = storage_section(url, meta, group)
    return info


def storage_section(url: str, meta: StoreMeta, group: zarr.Group) -> dict[str, Any]:
    """Layout, codecs, objects present, bytes and compression ratio."""
    size = store_size(url)
    # the ratio compares chunk payloads only: metadata JSON would dominate tiny stores
    data = sum(store_size(url.rstrip("/") + f"/{name}/c") for name in (LOGITS, SAMPLE_ID))
    raw = meta.n * meta.num_classes * 2 + meta.n * 8  # float16 logits + int64 ids
    units = math.ceil(meta.n / unit_rows(meta))
    arrays = {}
    for name in (LOGITS, SAMPLE_ID):
        if name not in group:
            arrays[name] = None
            continue
        a = group[name]
        arrays[name] = {"shape": list(a.shape), "dtype": str(a.dtype),
                        "chunks": list(a.chunks), "shards": list(a.shards) if a.shards else None,
                        "codecs": codec_names(a),
                        "objects": count_objects(url.rstrip("/") + f"/{name}/c")}
    return {"url": redact(url), "bytes": size, "data_bytes": data, "raw_bytes": raw,
            "compression_ratio": round(raw / data, 3) if data else None,
            "sharded": bool(meta.extra.get("shard_rows")), "unit_rows": unit_rows(meta),
            "expected_objects_per_array": units, "arrays": arrays}


def _teacher_line(t: dict[str, Any]) -> str:
    return (f"{t.get('arch')} sha {t.get('checkpoint_sha256')} ({t.get('precision')} on "
            f"{t.get('device')}, torch {t.get('torch')}), checkpoint {t.get('checkpoint')}")


def describe(info: dict[str, Any]) -> str:
    """Human-readable provenance and layout of a store_info() dict."""
    d, t, s = info["dataset"], info["teacher"], info["storage"]
    logits = s["arrays"].get(LOGITS) or {}
    layout = f"{info['chunk_rows']} rows/chunk"
    if s["sharded"]:
        layout += f", {s['unit_rows']} rows/shard (sharding codec)"
    objects = ", ".join(f"{k} {v['objects']}/{s['expected_objects_per_array']}"
                        for k, v in s["arrays"].items() if v)
    state = "complete" if info.get("complete") else "INCOMPLETE (writer crashed or running)"
    ratio = f", {s['compression_ratio']:.2f}x vs raw" if s["compression_ratio"] else ""
    lines = [
        f"store:      {s['url']} ({info['format']} v{info['version']}, {info['kind']}, {state})",
        f"logits:     {info['n']} x {info['num_classes']} {info['dtype']}, {layout}",
        f"codecs:     {' -> '.join(logits.get('codecs', []))} (compressor {info['compressor']})",
        f"objects:    {objects} present",
        f"size:       {s['bytes']:,} bytes on disk ({s['data_bytes']:,} in chunks; raw "
        f"{s['raw_bytes']:,}{ratio})",
        f"dataset:    {d.get('name')}/{d.get('split')} n={d.get('n')} limit={d.get('limit')} "
        f"val_rows={d.get('val_rows') or 0} fingerprint {d.get('fingerprint')}",
        f"teacher:    {_teacher_line(t)}",
        f"trained on: {(t.get('trained_on') or {}).get('name')}/"
        f"{(t.get('trained_on') or {}).get('split')} "
        f"fingerprint {(t.get('trained_on') or {}).get('fingerprint')}",
    ]
    lines += ensemble_lines(info)
    sparse = info.get("sparse")
    if isinstance(sparse, dict):  # issue 6: top-k / sampled stores (docs/FORMAT.md)
        lines.append(f"sparse:     {info['kind']} K={sparse['k']} draws={sparse.get('draws')} "
                     f"tail at T={sparse['temperatures']} from {sparse['computed_from']} "
                     f"({sparse['source']})")
    for key in MEMBER_KEYS:
        members = info.get(key)
        if isinstance(members, list):
            for i, m in enumerate(members):
                text = _teacher_line(m) if isinstance(m, dict) else str(m)
                lines.append(f"{key}[{i}]: {text}")
    lines.append(f"created:    {info['created_at']} by " +
                 ", ".join(f"{k} {v}" for k, v in info["created_by"].items()))
    return "\n".join(lines)


def ensemble_lines(info: dict[str, Any]) -> list[str]:
    """The members of an ensemble store, or the rule of a combined-only one (issue 3 keys)."""
    ens, comb = info.get("ensemble"), info.get("combined")
    if isinstance(ens, dict):
        return [f"members:    {len(ens['members'])} in member_logits {ens['shape']} chunks "
                f"{ens['chunks']}, default rule {ens['default_rule']}",
                *(f"member[{i}]: {m.get('kind')} {m.get('arch')} {m.get('checkpoint')} "
                  f"{m.get('sha256') or m.get('checkpoint_sha256')}"
                  for i, m in enumerate(ens["members"]))]
    if isinstance(comb, dict):
        at = "every T" if comb["temperature"] is None else f"T={comb['temperature']:g} only"
        return [f"combined:   {comb['rule']} mean of {len(comb['members'])} members, valid at {at}"]
    return []
