"""Several stage-1 writers under torchrun: ranks from the environment, gloo (CPU) or NCCL (GPU).

`torchrun --nproc_per_node N -m softtargets teacher-logits ...` sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them everything here is a no-op for one process.
Rank r writes the units r, r + N, r + 2N, ... (whole chunks or whole shards), so no two processes
ever write parts of one storage object.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime as _dt
import os
from typing import Any

from softtargets import errors
from softtargets.errors import ConfigError, SofttargetsError


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the writers."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (one process when unset)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is not in [0, WORLD_SIZE={world})")
    return Ranks(rank=rank, world=world, local_rank=local)


def my_units(num_units: int, ranks: Ranks) -> list[int]:
    """The deterministic, disjoint share of units of this rank (round robin)."""
    return list(range(ranks.rank, num_units, ranks.world))


def _destroy_process_group() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


class Comm:
    """Collectives between the writers; trivial for one process.

    The process group a Comm starts stays up until the process exits, and later sessions of the
    same process (a script writing several stores) use it: destroying it and starting another
    on torchrun's shared rendezvous store can hang or reset a rank that reads the first
    group's keys.
    """

    def __init__(self, ranks: Ranks, *, device_type: str = "cpu") -> None:
        self.ranks = ranks
        if ranks.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if device_type == "cuda" else "gloo"
                if backend == "nccl":
                    import torch
                    torch.cuda.set_device(ranks.local_rank)
                dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world,
                                        timeout=_dt.timedelta(minutes=30))
                atexit.register(_destroy_process_group)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if self.ranks.world == 1:
            return value
        import torch.distributed as dist
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.ranks.world == 1:
            return [value]
        import torch.distributed as dist
        out: list[Any] = [None] * self.ranks.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        """Nothing to release: the process group stays up for the process (see the class)."""


def error_status(e: BaseException | None) -> tuple[str, str] | None:
    """A picklable (class name, message) of an error, to send to the other ranks."""
    return None if e is None else (type(e).__name__, str(e))


def raise_status(status: tuple[str, str], *, rank: int) -> None:
    """Re-raise another rank's error here, as the same softtargets error class when possible."""
    name, message = status
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SofttargetsError)):
        cls = errors.StoreError
    raise cls(f"rank {rank} failed: {name}: {message}")
