"""A write lease next to a store (`<store>.lock`), so two stage-1 runs never write one store.

The lease is a small JSON file: pid, host, a random token, start and heartbeat times (UTC epoch
seconds). It is created exclusively (O_EXCL on local disks; create-then-read-back on object
storage, which has no exclusive create), refreshed after every written unit, and removed when the
writer finishes or fails. A writer killed with SIGKILL leaves it behind; it is *stale*, and taken
over by the next writer, when

* its host is this host and its pid is no longer alive, or
* its heartbeat is older than `stale_after` seconds (default 600; a writer on another host), or
* the user passes --break-lock (documented escape hatch; the user asserts the writer is dead).

Any other existing lease makes the second writer refuse with StoreLockedError, and so does a
file at the lease's path that is not a lease (softtargets never deletes a file it did not
create). No torch here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import time
from typing import Any

from softtargets.format.destination import unwritable
from softtargets.errors import ForeignDataError, RemoteStoreError, StoreError, StoreLockedError
from softtargets.format.remote import explain, filesystem, is_remote, local_path, redact

LOCK_SUFFIX = ".lock"
STALE_AFTER_S = 600.0


@dataclasses.dataclass(frozen=True)
class Lease:
    """Who holds a store's write lease."""

    pid: int
    host: str
    token: str
    started_at: float
    heartbeat_at: float

    def describe(self, now: float) -> str:
        return (f"pid {self.pid} on host {self.host!r} (started "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.started_at))}, last "
                f"heartbeat {now - self.heartbeat_at:.0f} s ago)")


def lock_url(store_url: str) -> str:
    """Where the lease of `store_url` lives: a sibling `<store>.lock`."""
    return store_url.rstrip("/") + LOCK_SUFFIX


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def booted_at() -> float | None:
    """When this host booted (UTC epoch seconds, Linux /proc/stat), None where unknown."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def is_stale(lease: Lease, *, now: float, stale_after: float) -> bool:
    """A lease whose writer is provably dead (same host: its pid is gone, or the lease predates
    the host's boot, after which pids repeat) or silent for `stale_after` seconds."""
    if lease.host == socket.gethostname():
        boot = booted_at()
        if not pid_alive(lease.pid) or (boot is not None and lease.started_at < boot):
            return True
    return now - lease.heartbeat_at > stale_after


class _Backend:
    """Exclusive create / read / replace / delete of the lease file, local or fsspec."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.remote = is_remote(url)
        if self.remote:
            self.fs, self.path = filesystem(url)
        else:
            self.path = local_path(url)

    def create(self, data: bytes) -> bool:
        """Create the file if absent; False if it exists."""
        if not self.remote:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = self._temp_file(data)
            try:  # a hard link is exclusive and atomic: a lease file is never half written
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, data)
        return True

    def read(self) -> bytes | None:
        try:
            if not self.remote:
                with open(self.path, "rb") as f:
                    return f.read()
            self.fs.invalidate_cache()
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return b""  # not a lease

    def _temp_file(self, data: bytes) -> str:
        """A new file beside the lease holding `data`; exclusive, so no existing file is hit."""
        tmp = f"{self.path}.{secrets.token_hex(6)}.tmp"
        with open(tmp, "xb") as f:
            f.write(data)
        return tmp

    def replace(self, data: bytes) -> None:
        if not self.remote:
            os.replace(self._temp_file(data), self.path)  # atomic: never half a lease
        else:
            self.fs.pipe_file(self.path, data)

    def delete(self) -> None:
        try:
            if not self.remote:
                os.unlink(self.path)
            else:
                self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass


# What a file at the lease's path that is not a lease parses to; such a file is never deleted.
NOT_A_LEASE = Lease(pid=-1, host="?", token="", started_at=0.0, heartbeat_at=0.0)


def _parse(raw: bytes | None) -> Lease | None:
    """The lease in `raw`, None when there is no file, NOT_A_LEASE for anything else."""
    if raw is None:
        return None
    try:
        lease = Lease(**json.loads(raw))
    except (ValueError, TypeError):
        return NOT_A_LEASE
    ok = (isinstance(lease.pid, int) and isinstance(lease.host, str) and lease.token
          and isinstance(lease.token, str)
          and all(isinstance(t, (int, float)) for t in (lease.started_at, lease.heartbeat_at)))
    return lease if ok else NOT_A_LEASE


class StoreLock:
    """The write lease of one store. Use as a context manager around a whole stage-1 run."""

    def __init__(self, store_url: str, *, break_lock: bool = False,
                 stale_after: float = STALE_AFTER_S) -> None:
        self.store_url = store_url
        self.url = lock_url(store_url)
        self.break_lock = break_lock
        self.stale_after = stale_after
        self.lease: Lease | None = None
        self.took_over: Lease | None = None  # the stale lease this writer replaced, if any
        try:
            self._backend = _Backend(self.url)
        except Exception as e:  # fsspec back ends raise their own types
            raise StoreLockedError(explain(self.url, e, action="lock")) from None

    def acquire(self) -> Lease:
        """Take the lease or raise StoreLockedError naming the live holder."""
        try:
            return self._acquire()
        except StoreError:
            raise
        except Exception as e:
            if not is_remote(self.url):
                if isinstance(e, OSError):  # read-only file system, a path below a file
                    raise unwritable(self.store_url, e) from None
                raise
            raise RemoteStoreError(explain(self.store_url, e, action="lock")) from None

    def _acquire(self) -> Lease:
        now = time.time()
        mine = Lease(pid=os.getpid(), host=socket.gethostname(), token=secrets.token_hex(8),
                     started_at=now, heartbeat_at=now)
        data = json.dumps(dataclasses.asdict(mine)).encode()
        for _attempt in range(3):
            if self._backend.create(data):
                break
            held = _parse(self._backend.read())
            if held is None:
                continue  # released between our create and read: try again
            if held is NOT_A_LEASE:
                raise ForeignDataError(
                    f"refusing to take the lease {redact(self.url)!r} of store "
                    f"{redact(self.store_url)!r}: that path holds something that is not a "
                    "softtargets lease (JSON with pid, host, token), which softtargets did not "
                    "create; move it or choose another --store")
            if not (self.break_lock or is_stale(held, now=now, stale_after=self.stale_after)):
                raise StoreLockedError(
                    f"store {redact(self.store_url)!r} is being written by {held.describe(now)} "
                    f"(lease {redact(self.url)!r}); wait for it to finish, or if that process is "
                    "dead, rerun with --break-lock (or delete the .lock file)")
            self.took_over = held
            self._backend.delete()
        else:
            raise StoreLockedError(f"could not take the lease {redact(self.url)!r}: another "
                                   "writer keeps creating it; is a second run starting?")
        if _parse(self._backend.read()) != mine:  # object storage: last writer wins
            raise StoreLockedError(f"lost the race for the lease {redact(self.url)!r} to another "
                                   "writer starting at the same time")
        self.lease = mine
        return mine

    def check(self) -> None:
        """Raise StoreLockedError unless the lease is still this writer's."""
        if self.lease is None:
            return
        held = _parse(self._backend.read())
        if held is not None and held.token == self.lease.token:
            return
        if held is None:
            who = "a writer that has released it since, or it was deleted"
        elif held is NOT_A_LEASE:
            who = "a file that is not a softtargets lease"
        else:
            who = held.describe(time.time())
        raise StoreLockedError(f"this writer's lease {redact(self.url)!r} was taken over by "
                               f"{who}; stopping so two writers never write the same store")

    def heartbeat(self) -> None:
        """Refresh the lease; refuse to go on if another writer took it over."""
        if self.lease is None:
            return
        self.check()
        self.lease = dataclasses.replace(self.lease, heartbeat_at=time.time())
        self._backend.replace(json.dumps(dataclasses.asdict(self.lease)).encode())

    def release(self) -> None:
        """Delete the lease if it is still ours."""
        if self.lease is None:
            return
        held = _parse(self._backend.read())
        if held is not None and held.token == self.lease.token:
            self._backend.delete()
        self.lease = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
