"""Helpers shared by the stage-1 tests: a tiny teacher checkpoint, CLI arguments, and a run
slowed by its teacher to be killed mid-way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from softtargets.datasets.idx_files import load_split
from softtargets.recipes.hinton2015.models import ModelSpec, build, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def make_teacher(path: Path, data_cfg, *, seed: int = 0, hidden=(32,),
                 dropout: float = 0.0) -> Path:
    """An untrained, seeded MLP checkpoint: enough for stage 1 (its logits are what they are)."""
    split = load_split(data_cfg)
    torch.manual_seed(seed)
    spec = ModelSpec(inputs=784, hidden=tuple(hidden), classes=10, dropout=dropout)
    save_checkpoint(path, model=build(spec), spec=spec, config={}, dataset=split.identity(),
                    class_names=split.class_names, metrics={})
    return path


def stage1_args(data_cfg, teacher: Path, store, *extra) -> list[str]:
    return ["teacher-logits", "--dataset", data_cfg.dataset, "--data-dir", data_cfg.data_dir,
            "--teacher", str(teacher), "--store", str(store), "--chunk-rows", "8",
            "--device", "cpu", "--threads", "1", "--quiet", *[str(e) for e in extra]]


def start_stage1(args: list[str], *, delay: float, env: dict | None = None) -> subprocess.Popen:
    """The command line `softtargets ...` in a subprocess whose teacher sleeps `delay` s before
    each batch (tests/slow.py: torch's forward hooks, nothing in softtargets)."""
    full_env = {**os.environ, **(env or {}),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"),
                                                            os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "slow.py"), str(delay), *args],
                            cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, *, timeout: float = 60.0, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def chunk_files(store: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every chunk/shard object of a store."""
    files = (p for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json")
    return {str(p.relative_to(store)): p.read_bytes() for p in files  # data and digests
            if "c" in str(p.relative_to(store)).split("/")[1:3]}
