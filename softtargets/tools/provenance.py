"""`softtargets inspect`: what a store is (provenance) and how it is stored. No torch.

Reads only metadata and object listings, never chunk data, so it is cheap on object storage.
"""

from __future__ import annotations

import math
from typing import Any

import zarr

from softtargets.format.digests import DIGESTS
from softtargets.format.digests import META_KEY as DIGESTS_KEY
from softtargets.format.meta_check import codec_names
from softtargets.format.remote import object_sizes, redact
from softtargets.format.schema import SPARSE_KINDS, row_arrays, sparse_names
from softtargets.format.store import LOGITS, StoreMeta, read_meta, unit_rows

# Keys of later format additions (ensembles, views, sparse forms) that inspect lists if present.
MEMBER_KEYS = ("teachers", "members", "ensemble", "views")


def store_info(url: str) -> dict[str, Any]:
    """Metadata of the store plus a `storage` section measured from the store itself."""
    meta, group = read_meta(url)
    info = meta.to_json()
    info["storage"] = storage_section(url, meta, group)
    return info


def values_array(meta: StoreMeta) -> str:
    """The array holding the store's values: logits, or topk_logits / sampled_logits."""
    return sparse_names(meta.kind)[1] if meta.kind in SPARSE_KINDS else LOGITS


def array_section(array: zarr.Array, sizes: dict[str, int]) -> dict[str, Any]:
    """Layout, objects present vs expected, chunk bytes and raw bytes of one array."""
    grid = array.shards or array.chunks  # the storage object's shape
    objects = [size for key, size in sizes.items() if key.startswith(f"{array.path}/c/")]
    return {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
            "shards": list(array.shards) if array.shards else None,
            "codecs": codec_names(array), "objects": len(objects),
            "expected_objects": math.prod(math.ceil(s / g) for s, g in zip(array.shape, grid)),
            "bytes": sum(objects),
            "raw_bytes": math.prod(array.shape) * array.dtype.itemsize}  # type: ignore[union-attr]


def storage_section(url: str, meta: StoreMeta, group: zarr.Group) -> dict[str, Any]:
    """Every array's layout, codecs, objects and bytes; the totals and compression ratio."""
    sizes = object_sizes(url)  # one listing for every array
    arrays: dict[str, Any] = {name: array_section(group[name], sizes)
                              for name in sorted(group.array_keys())}
    # the ratio compares chunk payloads only: metadata JSON would dominate tiny stores
    data = sum(a["bytes"] for a in arrays.values())
    raw = sum(a["raw_bytes"] for a in arrays.values())
    for spec in row_arrays(meta.to_json()):
        arrays.setdefault(spec.name, None)  # an expected array that is absent (incomplete store)
    return {"url": redact(url), "bytes": sum(sizes.values()), "data_bytes": data, "raw_bytes": raw,
            "digests": digests_section(meta, group, sizes),
            "compression_ratio": round(raw / data, 3) if data else None,
            "sharded": bool(meta.extra.get("shard_rows")), "unit_rows": unit_rows(meta),
            "expected_objects_per_array": math.ceil(meta.n / unit_rows(meta)),
            "values_array": values_array(meta), "arrays": arrays}


def digests_section(meta: StoreMeta, group: zarr.Group, sizes: dict[str, int]) -> dict[str, Any]:
    """Whether the chunks are bound to their places by digests, and what the digests cost."""
    declared = meta.extra.get(DIGESTS_KEY)
    try:
        sub = group[DIGESTS]
        names = sorted(sub.array_keys()) if isinstance(sub, zarr.Group) else []
    except KeyError:
        names = []
    keys = [k for k in sizes if k.startswith(f"{DIGESTS}/")]
    return {"bound": bool(names), "declared": declared, "arrays": names,
            "objects": sum(1 for k in keys if not k.endswith("zarr.json")),
            "bytes": sum(sizes[k] for k in keys)}


def digests_line(d: dict[str, Any]) -> str:
    if d["bound"]:
        return (f"digests:    bound: every chunk of {len(d['arrays'])} arrays has its "
                f"{(d['declared'] or {}).get('algorithm', '?')} digest ({d['objects']} objects, "
                f"{d['bytes']:,} bytes)")
    if d["declared"]:
        return "digests:    DECLARED BUT MISSING: the store was damaged or stripped"
    return ("digests:    UNBOUND: no chunk digests (written before they existed); a chunk in the "
            "wrong place would go unnoticed")


def _teacher_line(t: dict[str, Any]) -> str:
    return (f"{t.get('arch')} sha {t.get('checkpoint_sha256')} ({t.get('precision')} on "
            f"{t.get('device')}, torch {t.get('torch')}), checkpoint {t.get('checkpoint')}")


def shape_line(info: dict[str, Any]) -> str:
    """The kind-specific shape: `logits: N x C float16`, `topk: N x K=8 of C=10, ...`."""
    s, kind, n, c = info["storage"], info["kind"], info["n"], info["num_classes"]
    layout = f"{info['chunk_rows']} rows/chunk"
    if s["sharded"]:
        layout += f", {s['unit_rows']} rows/shard (sharding codec)"
    if kind not in SPARSE_KINDS:
        return f"logits:     {n} x {c} {info['dtype']}, {layout}"
    sp = info["sparse"]
    what = f"{kind + ':':<12}{n} x K={sp['k']} of C={c}"
    if kind == "sampled":
        what += f" ({sp['draws']} draws at T={sp['sample_temperature']:g}, seed {sp['seed']})"
    what += f", {info['dtype']} values, {sp['id_dtype']} ids"
    if kind == "sampled":
        what += f", {sp['count_dtype']} counts"
    if sp.get("position"):
        what += ", one row per (sample_id, position)"
    return f"{what}, {layout}"


def array_lines(storage: dict[str, Any]) -> list[str]:
    """One line per array: layout, objects present of expected, bytes in chunks vs raw, codecs."""
    out = []
    for name, a in storage["arrays"].items():
        if a is None:
            out.append(f"array:      {name} MISSING")
            continue
        shards = f" shards {tuple(a['shards'])}" if a["shards"] else ""
        out.append(f"array:      {name} {tuple(a['shape'])} {a['dtype']} chunks "
                   f"{tuple(a['chunks'])}{shards}: {a['objects']}/{a['expected_objects']} "
                   f"objects, {a['bytes']:,} bytes (raw {a['raw_bytes']:,}); "
                   f"{' -> '.join(a['codecs'])}")
    return out


def describe(info: dict[str, Any]) -> str:
    """Human-readable provenance and layout of a store_info() dict."""
    d, t, s = info["dataset"], info["teacher"], info["storage"]
    values = s["arrays"].get(s["values_array"]) or {}
    objects = ", ".join(f"{k} {v['objects']}/{v['expected_objects']}"
                        for k, v in s["arrays"].items() if v)
    state = "complete" if info.get("complete") else "INCOMPLETE (writer crashed or running)"
    ratio = f", {s['compression_ratio']:.2f}x vs raw" if s["compression_ratio"] else ""
    lines = [
        f"store:      {s['url']} ({info['format']} v{info['version']}, {info['kind']}, {state})",
        shape_line(info),
        f"codecs:     {' -> '.join(values.get('codecs', []))} (compressor {info['compressor']})",
        f"objects:    {objects} present",
        f"size:       {s['bytes']:,} bytes on disk ({s['data_bytes']:,} in chunks; raw "
        f"{s['raw_bytes']:,}{ratio})",
        *array_lines(s),
        digests_line(s["digests"]),
        f"dataset:    {d.get('name')}/{d.get('split')} n={d.get('n')} limit={d.get('limit')} "
        f"val_rows={d.get('val_rows') or 0} fingerprint {d.get('fingerprint')}",
        f"teacher:    {_teacher_line(t)}",
        f"trained on: {(t.get('trained_on') or {}).get('name')}/"
        f"{(t.get('trained_on') or {}).get('split')} "
        f"fingerprint {(t.get('trained_on') or {}).get('fingerprint')}",
    ]
    lines += ensemble_lines(info) + views_lines(info)
    sparse = info.get("sparse")
    if isinstance(sparse, dict):  # top-k / sampled stores (docs/FORMAT.md "Sparse stores")
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


def views_lines(info: dict[str, Any]) -> list[str]:
    """The augmented views of a views store (docs/FORMAT.md "Augmented views")."""
    views = info.get("views")
    if not isinstance(views, dict):
        return []
    return [f"views:      V={views['views']} per sample, seed {views.get('seed')}, parameters "
            f"{views['param_names']}, augment {views.get('augment')}"]


def ensemble_lines(info: dict[str, Any]) -> list[str]:
    """The members of an ensemble store, or the rule of a combined-only one."""
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
