"""Files of torch objects: written atomically, read without running their code, digested.

Every checkpoint and training state softtargets writes goes through `save_atomic`, every one it
reads through `safe_load`, so a crash never leaves half a file and a foreign file is one line.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from softtargets.atomic import replacing
from softtargets.errors import CheckpointError


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside `path`, then rename it over `path`: a reader
    (or a resume after SIGKILL) sees the old file or the new one, never part of one."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def safe_load(path: str | os.PathLike, *, fix: str) -> Any:
    """torch.load(weights_only=True) on the CPU. A file it refuses (random bytes, arbitrary
    pickles) is reported as not a checkpoint, in one line, never with torch's advice to load it
    with weights_only=False, which runs the file's code."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not for the user
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{str(path)!r} not found; {fix}") from None
    except Exception as e:
        text = str(e).split("WeightsUnpickler error:", 1)[-1]
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and "weights_only" not in line]
        reason = f"{type(e).__name__}: {lines[0] if lines else ''}"[:200]
        raise CheckpointError(f"{str(path)!r} is not a softtargets or torch checkpoint: the safe "
                              f"loader (weights only) cannot read it ({reason}); {fix}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """"sha256:<hex>" of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
