"""The write lease of a store: exclusive, stale after death or silence, breakable."""

import json
import os
import time

import pytest

from softtargets.errors import StoreLockedError
from softtargets.write.lock import StoreLock, lock_url


def write_lease(path, *, pid, host, age):
    now = time.time()
    path.write_text(json.dumps({"pid": pid, "host": host, "token": "t0", "started_at": now - age,
                                "heartbeat_at": now - age}))


def test_lease_is_exclusive_and_released(tmp_path):
    store = str(tmp_path / "s.zarr")
    assert lock_url(store) == store + ".lock"
    with StoreLock(store) as first:
        lease = json.loads((tmp_path / "s.zarr.lock").read_text())
        assert lease["pid"] == os.getpid() and lease["token"] == first.lease.token
        with pytest.raises(StoreLockedError, match=rf"is being written by pid {os.getpid()} on "
                           "host .* if that process is dead, rerun with --break-lock"):
            StoreLock(store).acquire()
        first.heartbeat()
    assert not (tmp_path / "s.zarr.lock").exists()


def test_lease_of_a_live_writer_on_another_host_is_respected(tmp_path):
    write_lease(tmp_path / "s.zarr.lock", pid=1, host="other-host", age=30)
    with pytest.raises(StoreLockedError,
                       match="pid 1 on host 'other-host'.*last heartbeat 30 s ago"):
        StoreLock(str(tmp_path / "s.zarr")).acquire()


def test_silent_or_dead_or_broken_leases_are_taken_over(tmp_path):
    store = str(tmp_path / "s.zarr")
    write_lease(tmp_path / "s.zarr.lock", pid=1, host="other-host", age=601)  # silent > 600 s
    lock = StoreLock(store)
    lock.acquire()
    assert lock.took_over.host == "other-host"
    lock.release()
    import socket
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lease(tmp_path / "s.zarr.lock", pid=dead.pid, host=socket.gethostname(), age=1)
    lock = StoreLock(store)
    lock.acquire()  # same host, pid gone
    assert lock.took_over.pid == dead.pid
    lock.release()
    write_lease(tmp_path / "s.zarr.lock", pid=1, host="other-host", age=1)
    lock = StoreLock(store, break_lock=True)
    lock.acquire()
    assert lock.took_over.pid == 1
    lock.release()


def test_a_lease_from_before_this_hosts_boot_is_stale_though_its_pid_lives(tmp_path):
    # pids repeat after a reboot: a live pid (our own) in a lease older than the boot is stale
    import socket

    from softtargets.write.lock import booted_at
    boot = booted_at()
    if boot is None:
        pytest.skip("no /proc/stat boot time here")
    store = str(tmp_path / "s.zarr")
    write_lease(tmp_path / "s.zarr.lock", pid=os.getpid(), host=socket.gethostname(),
                age=time.time() - boot + 60)
    lock = StoreLock(store, stale_after=float("inf"))
    lock.acquire()
    assert lock.took_over.pid == os.getpid()
    lock.release()
    write_lease(tmp_path / "s.zarr.lock", pid=os.getpid(), host=socket.gethostname(), age=1)
    with pytest.raises(StoreLockedError, match=rf"is being written by pid {os.getpid()}"):
        StoreLock(store, stale_after=float("inf")).acquire()


def test_heartbeat_stops_a_writer_whose_lease_was_taken(tmp_path):
    store = str(tmp_path / "s.zarr")
    lock = StoreLock(store)
    lock.acquire()
    StoreLock(store, break_lock=True).acquire()
    with pytest.raises(StoreLockedError,
                       match=rf"this writer's lease '.*s.zarr.lock' was taken over by pid "
                       rf"{os.getpid()} on host .*; stopping so two writers never"):
        lock.heartbeat()
