"""A slow teacher by public means, so a test can kill a stage-1 run mid-way: torch's global
module hooks make every top-level forward pass (one teacher batch) sleep first. The teacher,
its weights and the store are those of an ordinary run; softtargets knows nothing of it.

    python tests/slow.py SECONDS teacher-logits ...   # the command line, each batch slowed
    with slow_forwards(0.5): run_cli(...)             # in this process
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

from torch.nn.modules.module import (register_module_forward_hook,
                                     register_module_forward_pre_hook)


@contextlib.contextmanager
def slow_forwards(seconds: float) -> Iterator[None]:
    """Every outermost module forward sleeps `seconds` first (nested modules do not)."""
    depth = threading.local()

    def before(module, args):
        level = getattr(depth, "n", 0)
        if level == 0:
            time.sleep(seconds)
        depth.n = level + 1

    def after(module, args, out):
        depth.n = getattr(depth, "n", 1) - 1

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


if __name__ == "__main__":
    from softtargets.cli import main

    seconds = float(sys.argv[1])
    sys.argv = ["softtargets", *sys.argv[2:]]
    with slow_forwards(seconds):
        main()
