"""Where a new store goes: refuse what softtargets did not create, delete only what it did. No torch.

`teacher-logits --overwrite` deletes a path only when it is a softtargets store (group attributes
["softtargets"]["format"] == "softtargets.logits", complete or not) that holds nothing but what
the format defines: the group's zarr.json and the arrays of `store.STORE_ARRAYS` (their zarr.json
and chunk objects), plus the temp files a killed local write left in them. Everything is listed
and checked before the first deletion; anything else (a regular file, a foreign Zarr group or
array, a user's file inside a store) is refused with one line naming it, and nothing is deleted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from softtargets.errors import RemoteStoreError, StoreExistsError, StoreWriteError
from softtargets.remote import explain, filesystem, is_remote, local_path, redact
from softtargets.store import ATTR_KEY, FORMAT_NAME, STORE_ARRAYS

# zarr's LocalStore writes `<name>.<uuid hex>.partial`, then renames it; a SIGKILL leaves it.
_PARTIAL = re.compile(r"^(zarr|\d+)\.[0-9a-f]+\.partial$")
LISTED = 3  # foreign entries named in a refusal; the count is always given


def is_format_key(key: str) -> bool:
    """Whether `key` (a file or object path relative to the store, '/'-separated) is one the
    format defines: zarr.json, <array>/zarr.json, <array>/c/<i>/.../<j>, or a temp file of one."""
    parts = key.split("/")
    if len(parts) == 1:
        return parts[0] == "zarr.json" or _PARTIAL.match(parts[0]) is not None
    if parts[0] not in STORE_ARRAYS:
        return False
    if len(parts) == 2:
        return parts[1] == "zarr.json" or _PARTIAL.match(parts[1]) is not None
    *dirs, last = parts[2:]
    return (parts[1] == "c" and all(d.isdigit() for d in dirs)
            and (last.isdigit() or _PARTIAL.match(last) is not None))


def is_format_dir(rel: str) -> bool:
    """Whether directory `rel` (relative to a local store) is one the format's keys live in."""
    parts = rel.split("/")
    return parts[0] in STORE_ARRAYS and (len(parts) == 1 or (
        parts[1] == "c" and all(d.isdigit() for d in parts[2:])))


def _refuse(url: str, what: str) -> StoreExistsError:
    return StoreExistsError(f"refusing to overwrite {redact(url)!r}: {what}; move it or choose "
                            "another --store")


def _named(entries: list[str]) -> str:
    shown = ", ".join(repr(e) for e in entries[:LISTED])
    return shown + (f" and {len(entries) - LISTED} more" if len(entries) > LISTED else "")


def _outermost(entries: list[str]) -> list[str]:
    """Entries without those inside another listed directory entry, sorted."""
    chosen = set(entries)
    return sorted(e for e in chosen
                  if not any("/".join(e.split("/")[:i]) in chosen for i in range(1, e.count("/") + 1)))


def foreign_content(files: list[str], dirs: list[str], group_json: bytes | None) -> str | None:
    """Why a directory (or prefix) holding `files` and `dirs` (relative paths) is not a
    softtargets store that may be deleted, or None when it is one."""
    top = sorted({e.split("/")[0] for e in files + dirs})
    if group_json is None:
        return f"it is not a softtargets store (no zarr.json) and holds {_named(top)}"
    try:
        doc: Any = json.loads(group_json)
    except ValueError:
        return "its zarr.json is not Zarr metadata, so it is not a softtargets store"
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        kind = doc.get("node_type") if isinstance(doc, dict) else None
        return f"it is a Zarr {kind or 'node'}, not a softtargets store"
    attrs = doc.get("attributes") or {}
    own = attrs.get(ATTR_KEY) if isinstance(attrs, dict) else None
    if not isinstance(own, dict) or own.get("format") != FORMAT_NAME:
        return (f"it is a Zarr group but not a softtargets store (attributes[{ATTR_KEY!r}]"
                f"['format'] is not {FORMAT_NAME!r})")
    extra = _outermost([f for f in files if not is_format_key(f)]
                       + [d for d in dirs if not is_format_dir(d)])
    if extra:
        return f"it holds {_named(extra)}, which softtargets did not create"
    return None


def prepare_destination(url: str, overwrite: bool) -> None:
    """Make `url` ready for a new store: absent, or with `overwrite` a softtargets store whose
    objects are deleted here. Anything else is refused before anything is deleted."""
    if is_remote(url):
        _prepare_remote(url, overwrite)
    else:
        _prepare_local(url, overwrite)


def _exists_error(url: str) -> StoreExistsError:
    return StoreExistsError(f"store path {redact(url)!r} already exists; pass --overwrite to "
                            "replace it or choose another path")


# --- local paths -------------------------------------------------------------------------------

def unwritable(url: str, error: OSError) -> StoreWriteError:
    """The one-line error for a local store path that cannot be created."""
    path = Path(local_path(url))
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        why = f"{str(blocker)!r} is a file, not a directory"
    else:
        where = f"cannot create {error.filename!r}: " if error.filename else ""
        why = f"{where}{error.strerror or error}"
    return StoreWriteError(f"cannot write store {url!r}: {why}; choose a --store in a writable "
                           "directory")


def local_listing(root: Path) -> tuple[list[str], list[str]]:
    """Files (and symbolic links) and directories under `root`, as '/'-separated relative paths."""
    files: list[str] = []
    dirs: list[str] = []
    for here, subdirs, names in os.walk(root):
        rel = Path(here).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for d in subdirs:  # os.walk does not descend into links: list them as entries
            (files if os.path.islink(os.path.join(here, d)) else dirs).append(prefix + d)
        files += [prefix + n for n in names]
    return files, dirs


def _prepare_local(url: str, overwrite: bool) -> None:
    path = Path(local_path(url))
    if os.path.islink(path):
        raise _refuse(url, "it is a symbolic link, which softtargets did not create")
    if path.exists() and not path.is_dir():
        raise _refuse(url, "it is a file, not a softtargets store")
    if path.is_dir():
        files, dirs = local_listing(path)
        if files or dirs:
            group = path / "zarr.json"
            reason = foreign_content(files, dirs, group.read_bytes() if group.is_file() else None)
            if reason is not None:
                raise _refuse(url, reason)
        if not overwrite:
            raise _exists_error(url)
        for f in files:  # every one of them is the format's: checked above
            os.unlink(path / f)
        for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):  # deepest first
            try:
                os.rmdir(path / d)
            except OSError:  # something appeared since the listing: leave it, delete nothing else
                pass
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable(url, e) from None


def sweep_partial_files(url: str) -> int:
    """Delete the temp files a killed writer left in a local store's arrays; returns how many.
    Files that are not the format's temp files are left alone."""
    if is_remote(url):
        return 0  # object stores write whole objects: nothing partial to sweep
    root = Path(local_path(url))
    files, _dirs = local_listing(root)
    partial = [f for f in files if f.endswith(".partial") and is_format_key(f)]
    for f in partial:
        os.unlink(root / f)
    return len(partial)


# --- object storage ----------------------------------------------------------------------------

def _prepare_remote(url: str, overwrite: bool) -> None:
    fs, path = filesystem(url)
    root = path.rstrip("/")
    try:
        fs.invalidate_cache()
        if fs.isfile(root):
            raise _refuse(url, "it is an object (a file), not a softtargets store")
        keys = [k for k in fs.find(root + "/") if k.startswith(root + "/")]
        if not keys:
            return
        files = [k[len(root) + 1:] for k in keys]
        group = fs.cat_file(root + "/zarr.json") if "zarr.json" in files else None
        reason = foreign_content(files, [], group)
        if reason is not None:
            raise _refuse(url, reason)
        if not overwrite:
            raise _exists_error(url)
        fs.rm(keys)  # exactly the listed objects, never the prefix
        fs.invalidate_cache()
    except StoreExistsError:
        raise
    except Exception as e:
        raise RemoteStoreError(explain(url, e, action="prepare")) from None
