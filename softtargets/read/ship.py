"""Sending batches from DataLoader worker processes through a reused shared-memory ring.

torch sends each tensor a worker yields by moving its storage to new shared memory and passing
a file descriptor, one socket round trip to the worker per tensor. Profiled on 2 cores, that
made a worker's batches cost 4-5 us per row of 1,000 float16 logits beyond the decode (~2 us):
a fresh shared-memory allocation per tensor (~0.7 ms), page faults on first touch in both
processes, and the round trips waiting for the busy worker's GIL (~1.5 ms each).

Here a worker copies each batch's tensors into one slot of a ring of shared memory that it
allocates once and reuses; the main process maps the ring once (the first batch carries it) and
receives the batch as tensors over its slot, without a copy: the slot is leased to the batch
and freed when the last of its tensors (and any view of them) is gone, so the training process
spends no time copying batches. A batch that finds no free slot (batches held longer than the
ring allows), or does not fit one, is sent as torch sends it. Nothing else changes: the main
process gets the same tensors and target dataclasses the worker yielded. Memory: SLOTS slots of
1.25x the worker's first batch per worker; the main process keeps a worker's ring mapped until
a ring of a new worker arrives after that worker has exited.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from softtargets.errors import ConfigError

ALIGN = 64  # tensor offsets in a slot: any dtype's alignment
SLOTS = 6  # a worker has prefetch_factor (default 2) batches in flight, plus the one it fills
_serial = itertools.count()


class Ring:
    """Shared memory of `slots` slots of `slot_bytes`, with one free/full flag per slot."""

    def __init__(self, slot_bytes: int, slots: int = SLOTS) -> None:
        self.slot_bytes, self.slots = slot_bytes, slots
        storage = torch.UntypedStorage._new_shared(ALIGN + slots * slot_bytes)
        self.bytes = torch.empty(0, dtype=torch.uint8).set_(storage)  # (nbytes,) uint8
        self.flags = self.bytes[:slots]  # 0: free, 1: holds a batch not yet received
        self.flags.zero_()
        self.key = (os.getpid(), next(_serial))
        self.sent = False  # whether the main process has been sent the ring itself
        self._next = 0

    def take(self) -> int | None:
        """A free slot, marked full; None when every slot holds a batch in flight."""
        for i in range(self.slots):
            slot = (self._next + i) % self.slots
            if not self.flags[slot]:
                self.flags[slot] = 1
                self._next = slot + 1
                return slot
        return None

    def region(self, slot: int, offset: int, nbytes: int) -> torch.Tensor:
        start = ALIGN + slot * self.slot_bytes + offset
        return self.bytes[start:start + nbytes]


@dataclasses.dataclass(frozen=True)
class Spec:
    """Where one tensor of a shipped batch lies in its slot."""

    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype


class Shipped:
    """A batch in a ring slot; unpickled in the main process as the batch itself."""

    def __init__(self, ring: Ring, slot: int, skeleton: Any) -> None:
        self.ring, self.slot, self.skeleton = ring, slot, skeleton

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        ring = self.ring
        first = None if ring.sent else ring.bytes  # fd passed once; later batches name the ring
        ring.sent = True
        return _receive, (ring.key, first, ring.slot_bytes, self.slot, self.skeleton)


_worker_ring: list[Ring] = []  # the ring of this worker process (at most one)
_received: dict[tuple[int, int], torch.Tensor] = {}  # main process: rings by key


def ship(batch: Any) -> Any:
    """`batch` (tuples, lists, target dataclasses, CPU tensors) ready to leave this process:
    in a DataLoader worker, copied into a ring slot when one is free and fits; else as is."""
    if get_worker_info() is None:
        return batch
    tensors: list[torch.Tensor] = []
    skeleton = _flatten(batch, tensors)
    if any(t.device.type != "cpu" for t in tensors):
        return batch
    specs, size = [], 0
    for t in tensors:
        specs.append(Spec(size, tuple(t.shape), t.dtype))
        size += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    if not _worker_ring or _worker_ring[0].key[0] != os.getpid():  # none yet, or forked
        _worker_ring[:] = [Ring(max(ALIGN, size + size // 4))]
    ring = _worker_ring[0]
    slot = ring.take() if size <= ring.slot_bytes else None
    if slot is None:
        return batch
    for t, spec in zip(tensors, specs):
        nbytes = t.numel() * t.element_size()
        ring.region(slot, spec.offset, nbytes).view(t.dtype).view(t.shape).copy_(t)
    return Shipped(ring, slot, _fill(skeleton, specs))


def _receive(key: tuple[int, int], ring: torch.Tensor | None, slot_bytes: int, slot: int,
             skeleton: Any) -> Any:
    """(Main process) the batch of `slot`, its tensors leased views of the slot."""
    if ring is not None:
        _forget_dead()
        _received[key] = ring
    data = _received.get(key)
    if data is None:
        raise ConfigError(f"a DataLoader worker (pid {key[0]}) sent a batch in shared memory "
                          "this process never mapped; iterate the DataLoader from its first "
                          "batch")
    base = ALIGN + slot * slot_bytes
    lease = _Lease(data.numpy(), slot)

    def out(spec: Spec) -> torch.Tensor:
        nbytes = spec.dtype.itemsize * _numel(spec.shape)
        typestr = _TYPESTR.get(spec.dtype)
        if typestr is None:  # no numpy dtype (bfloat16, ...): a copy, as before
            region = data[base + spec.offset:base + spec.offset + nbytes]
            return region.view(spec.dtype).view(spec.shape).clone()
        view = _View(lease, data.data_ptr() + base + spec.offset, spec.shape, typestr)
        return torch.from_numpy(np.asarray(view))  # holds `view`, so the lease, while alive

    batch = _build(skeleton, out)
    del lease  # the tensors hold it now; with none (no tensors), the slot is free here
    return batch


class _Lease:
    """One received slot, held by the tensors of its batch; freed for the worker when the
    last of them is collected."""

    def __init__(self, ring: np.ndarray, slot: int) -> None:
        self.ring, self.slot = ring, slot  # (nbytes,) uint8 view: its first bytes are the flags

    def __del__(self) -> None:
        self.ring[self.slot] = 0  # numpy, not torch: this may run late at interpreter exit


class _View:
    """A region of a leased slot as numpy sees it (its array's base, so the lease lives as
    long as the array and every torch tensor made from it)."""

    def __init__(self, lease: _Lease, address: int, shape: tuple[int, ...], typestr: str) -> None:
        self.lease = lease
        self.__array_interface__ = {"data": (address, False), "shape": shape,
                                    "typestr": typestr, "version": 3}


_TYPESTR = {dtype: np.dtype(name).str for dtype, name in [
    (torch.float64, "f8"), (torch.float32, "f4"), (torch.float16, "f2"), (torch.int64, "i8"),
    (torch.int32, "i4"), (torch.int16, "i2"), (torch.int8, "i1"), (torch.uint8, "u1"),
    (torch.bool, "?")]}


def _forget_dead() -> None:
    """Drop the rings of worker processes that have exited (each epoch's workers are new)."""
    for key in list(_received):
        try:
            os.kill(key[0], 0)
        except ProcessLookupError:
            del _received[key]
        except PermissionError:
            pass


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _Node:
    """A target dataclass in a skeleton: its class and its fields' skeletons."""

    def __init__(self, cls: type, fields: dict[str, Any]) -> None:
        self.cls, self.fields = cls, fields


def _flatten(obj: Any, tensors: list[torch.Tensor]) -> Any:
    """`obj` with each tensor replaced by its index in `tensors` (an int in a list, so that
    plain ints of the batch stay what they are)."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.detach().contiguous())
        return [len(tensors) - 1]
    if isinstance(obj, (tuple, list)):
        return (type(obj), [_flatten(v, tensors) for v in obj])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _Node(type(obj), {f.name: _flatten(getattr(obj, f.name), tensors)
                                 for f in dataclasses.fields(obj)})
    return obj


def _fill(skeleton: Any, specs: list[Spec]) -> Any:
    """The skeleton with each tensor index replaced by the tensor's Spec."""
    if isinstance(skeleton, list):
        return specs[skeleton[0]]
    if isinstance(skeleton, tuple):
        return (skeleton[0], [_fill(v, specs) for v in skeleton[1]])
    if isinstance(skeleton, _Node):
        return _Node(skeleton.cls, {k: _fill(v, specs) for k, v in skeleton.fields.items()})
    return skeleton


def _build(skeleton: Any, out: Callable[[Spec], torch.Tensor]) -> Any:
    """The batch of a filled skeleton, each tensor made by `out`."""
    if isinstance(skeleton, Spec):
        return out(skeleton)
    if isinstance(skeleton, tuple):
        return skeleton[0](_build(v, out) for v in skeleton[1])
    if isinstance(skeleton, _Node):
        return skeleton.cls(**{k: _build(v, out) for k, v in skeleton.fields.items()})
    return skeleton
