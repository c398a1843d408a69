"""Progress bars: live on a terminal, a line every 30 s in logs (CI, `make ... > log`)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(*, total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr that does not flood non-terminal logs with carriage returns."""
    live = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                mininterval=0.1 if live else 30.0, dynamic_ncols=live, ascii=not live)
