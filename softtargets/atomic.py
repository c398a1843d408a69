"""Files written whole or not at all: a crash (or SIGKILL) leaves the old file or the new one,
never part of one. Every metrics file, checkpoint, token file and records export softtargets
writes goes through `replacing`; torch and numpy are not imported here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (`<name>.partial`, its folder made) to write; when
    the block ends without an error, rename it over `path`; on an error, remove it (it is ours)
    and leave `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """obj as indented JSON at `path`, replaced whole."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n", encoding="utf-8")
    return Path(path)
