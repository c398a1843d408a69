"""Where a new store goes: refuse what softtargets did not create, delete only what it did.

`teacher-logits --overwrite` deletes a path only when it is a softtargets store (group attributes
["softtargets"]["format"] == "softtargets.logits", complete or not) that holds nothing but what
the format defines: the group's zarr.json and the arrays of `store.STORE_ARRAYS` (their zarr.json
and chunk objects), plus the temp files a killed local write left in them. Everything is listed
and checked before the first deletion; anything else (a regular file, a foreign Zarr group or
array, a user's file inside a store) is refused with one line naming it, and nothing is deleted.
numpy and zarr only (here: neither), never torch.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from softtargets.format.digests import DIGESTS, INPUT
from softtargets.errors import (ForeignDataError, RemoteStoreError, SofttargetsError,
                                StoreExistsError, StoreWriteError)
from softtargets.format.remote import explain, filesystem, is_remote, local_path, redact
from softtargets.format.store import ATTR_KEY, FORMAT_NAME, STORE_ARRAYS

# zarr's LocalStore writes `<name>.<uuid hex>.partial`, then renames it; a SIGKILL leaves it.
_PARTIAL = re.compile(r"^(zarr|\d+)\.[0-9a-f]+\.partial$")
LISTED = 3  # foreign entries named in a refusal; the count is always given


def _data_parts(parts: list[str]) -> list[str]:
    """Digest arrays mirror the data arrays under `digests/`: digests/<array>/... is checked as
    <array>/..., and the subgroup's own zarr.json as the group's. The input digests
    (digests/input, which mirror no data array) are checked as an array of the format."""
    if parts[0] == DIGESTS and len(parts) > 1:
        return [STORE_ARRAYS[0], *parts[2:]] if parts[1] == INPUT else parts[1:]
    return parts


def is_format_key(key: str) -> bool:
    """Whether `key` (a file or object path relative to the store, '/'-separated) is one the
    format defines: zarr.json, <array>/zarr.json, <array>/c/<i>/.../<j>, the same under
    digests/, or a temp file of one."""
    parts = _data_parts(key.split("/"))
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
    if rel == DIGESTS:
        return True
    parts = _data_parts(rel.split("/"))
    return parts[0] in STORE_ARRAYS and (len(parts) == 1 or (
        parts[1] == "c" and all(d.isdigit() for d in parts[2:])))


def _named(entries: list[str]) -> str:
    shown = ", ".join(repr(e) for e in entries[:LISTED])
    return shown + (f" and {len(entries) - LISTED} more" if len(entries) > LISTED else "")


def _foreign(files: list[str], dirs: list[str]) -> list[str]:
    """The entries that are not the format's, without those inside a listed directory."""
    chosen = {f for f in files if not is_format_key(f)} | {d for d in dirs if not is_format_dir(d)}
    return sorted(e for e in chosen if not any(
        "/".join(e.split("/")[:i]) in chosen for i in range(1, e.count("/") + 1)))


def foreign_content(files: list[str], dirs: list[str], group_json: bytes | None) -> str | None:
    """Why a directory (or prefix) holding `files` and `dirs` (relative paths) is not a
    softtargets store that may be deleted, or None when it is one."""
    if group_json is None:
        top = sorted({e.split("/")[0] for e in files + dirs})
        return f"it is not a softtargets store (no zarr.json) and holds {_named(top)}"
    try:
        doc: Any = json.loads(group_json)
    except ValueError:
        return "its zarr.json is not Zarr metadata, so it is not a softtargets store"
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        kind = doc.get("node_type") if isinstance(doc, dict) else None
        return f"it is a Zarr {kind or 'node'}, not a softtargets store"
    attrs = doc.get("attributes")
    own = attrs.get(ATTR_KEY) if isinstance(attrs, dict) else None
    if not isinstance(own, dict) or own.get("format") != FORMAT_NAME:
        return (f"it is a Zarr group but not a softtargets store (attributes[{ATTR_KEY!r}]"
                f"['format'] is not {FORMAT_NAME!r})")
    extra = _foreign(files, dirs)
    return f"it holds {_named(extra)}, which softtargets did not create" if extra else None


# --- listing and deleting, local or object storage ---------------------------------------------

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


def _listing(url: str, sub: str = "") -> tuple[list[str], list[str]]:
    """(files or objects, local directories) under the store `url` (or its folder `sub`),
    relative to the store."""
    prefix = f"{sub}/" if sub else ""
    if not is_remote(url):
        files, dirs = local_listing(Path(local_path(url)) / sub)
        return [prefix + f for f in files], [prefix + d for d in dirs] + ([sub] if sub else [])
    fs, path = filesystem(url)
    root = path.rstrip("/") + "/"
    fs.invalidate_cache()
    keys = fs.find(root + sub) if fs.exists(root + sub) else []
    return [k[len(root):] for k in keys if k.startswith(root + prefix)], []


def _delete(url: str, files: list[str], dirs: list[str]) -> None:
    """Delete exactly `files`, then the directories `dirs` that are empty then (deepest first)."""
    if is_remote(url):
        fs, path = filesystem(url)
        fs.rm([f"{path.rstrip('/')}/{f}" for f in files])  # the listed objects, never a prefix
        fs.invalidate_cache()
        return
    root = Path(local_path(url))
    for f in files:
        os.unlink(root / f)
    for d in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        try:
            os.rmdir(root / d)
        except OSError:  # something appeared since the listing: leave it, delete nothing else
            pass


def _storage(url: str, action: str, fn: Any, *args: Any) -> Any:
    """fn(*args), a back end's failure on a remote URL turned into one line."""
    try:
        return fn(*args)
    except Exception as e:
        if not is_remote(url) or isinstance(e, SofttargetsError):
            raise
        raise RemoteStoreError(explain(url, e, action=action)) from None


# --- what --overwrite and the ensemble writer delete ------------------------------------------

def _refuse(url: str, what: str) -> ForeignDataError:
    return ForeignDataError(f"refusing to overwrite {redact(url)!r}: {what}; move it or choose "
                            "another --store")


def _read_group(url: str) -> bytes | None:
    if not is_remote(url):
        group = Path(local_path(url)) / "zarr.json"
        return group.read_bytes() if group.is_file() else None
    fs, path = filesystem(url)
    key = path.rstrip("/") + "/zarr.json"
    return fs.cat_file(key) if fs.isfile(key) else None


def _occupied(url: str) -> str | None:
    """Why the path itself is no store at all (a file, a link), or None."""
    if is_remote(url):
        fs, path = filesystem(url)
        return "it is an object (a file), not a softtargets store" if fs.isfile(path) else None
    path = Path(local_path(url))
    if os.path.islink(path):
        return "it is a symbolic link, which softtargets did not create"
    if path.exists() and not path.is_dir():
        return "it is a file, not a softtargets store"
    return None


def _check_and_delete(url: str, overwrite: bool) -> None:
    occupied = _occupied(url)
    if occupied is not None:
        raise _refuse(url, occupied)
    files, dirs = _listing(url)
    exists = bool(files or dirs) or (not is_remote(url) and Path(local_path(url)).is_dir())
    if not exists:
        return
    if files or dirs:
        reason = foreign_content(files, dirs, _read_group(url))
        if reason is not None:
            raise _refuse(url, reason)
    if not overwrite:
        raise StoreExistsError(f"store path {redact(url)!r} already exists; pass --overwrite to "
                               "replace it or choose another path")
    _delete(url, files, dirs)


def prepare_destination(url: str, overwrite: bool) -> None:
    """Make `url` ready for a new store: absent, or with `overwrite` a softtargets store whose
    objects are deleted here. Anything else is refused before anything is deleted."""
    _storage(url, "prepare", _check_and_delete, url, overwrite)
    if not is_remote(url):
        try:
            Path(local_path(url)).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise unwritable(url, e) from None


def delete_array(url: str, name: str) -> None:
    """Delete array `name` of the store at `url` (a scratch array such as member_logits): its
    format objects only; refused, deleting nothing, when it holds anything else."""
    files, dirs = [], []
    for sub in (name, f"{DIGESTS}/{name}"):  # the array and its digests
        more = _storage(url, "list", _listing, url, sub)
        files, dirs = files + more[0], dirs + more[1]
    extra = _foreign(files, dirs) if name in STORE_ARRAYS else [name]
    if extra:
        raise ForeignDataError(f"refusing to delete array {name!r} of {redact(url)!r}: it holds "
                               f"{_named(extra)}, which softtargets did not create; move it")
    _storage(url, "delete from", _delete, url, files, dirs)


def sweep_partial_files(url: str) -> int:
    """Delete the temp files a killed writer left in a local store; returns how many. Files
    that are not the format's temp files are left alone."""
    if is_remote(url):
        return 0  # object stores write whole objects: nothing partial to sweep
    files, _dirs = _listing(url)
    partial = [f for f in files if f.endswith(".partial") and is_format_key(f)]
    _delete(url, partial, [])
    return len(partial)


def unwritable(url: str, error: OSError) -> StoreWriteError:
    """The one-line error for a local store path that cannot be created."""
    path = Path(local_path(url))
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        why = f"{str(blocker)!r} is a file, not a directory"
    else:
        why = f"{error.strerror or error} in {str(blocker)!r}"
    return StoreWriteError(f"cannot write store {url!r}: {why}; choose a --store in a writable "
                           "directory")
