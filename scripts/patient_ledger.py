"""The patient experiment's ledger: the part of its runs that is committed, so a fresh checkout
(a new session's work tree is laid anew, and runs/ is not in git) resumes where the last one
stopped instead of starting 60 worker-hours over.

    ledger/ensemble.json        the teachers' and ensemble's test errors as first measured
    ledger/stage1.json          stage-1 wall and CPU seconds per store, as first measured
    ledger/stores.json          the fingerprints (of the chunk digests) of each store's builds:
                                one per key while every rebuild gives the same targets
    ledger/teachers/            the teachers' checkpoints (some 0.8 MB each): every run in the
                                ledger learnt from them; other teachers are refused
    ledger/runs/.../metrics.json  a finished run's history (copied when it finishes)
    ledger/runs/.../state.pt    an unfinished run's last saved epoch (`snapshot`; removed when
                                the run finishes)
    ledger/record.json          per-arm summaries measured before the ledger kept histories, with
                                teachers since lost (their ensemble is in it); an arm whose
                                seeds it holds in full keeps them, any other arm runs all its
                                seeds on the ledger's teachers (never a mix within one arm)

The run directory (out/, under runs/) stays the working copy: runs write there as before.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zarr

from softtargets.atomic import replacing, write_json
from softtargets.format.digests import DIGESTS
from softtargets.torchfiles import file_sha256


class LedgerMismatch(SystemExit):
    """The work at hand disagrees with what the ledger recorded (other teachers or targets)."""


class Ledger:
    """The committed record under `root` (None: none) of the runs written under `out`."""

    def __init__(self, root: str | Path | None, out: Path) -> None:
        self.root = None if root is None else Path(root)
        self.out = out
        record = self._read("record.json")
        self.record: dict[str, Any] = record or {}

    # --- reading -------------------------------------------------------------------------------
    def _read(self, name: str) -> Any:
        if self.root is None or not (self.root / name).is_file():
            return None
        return json.loads((self.root / name).read_text())

    def _mirror(self, path: Path) -> Path | None:
        """Where `path` (under out) is kept in the ledger."""
        return None if self.root is None else self.root / path.relative_to(self.out)

    def metrics(self, where: Path) -> dict[str, Any] | None:
        """A finished run's metrics: the ledger's copy, else the run directory's."""
        for path in (self._mirror(where / "metrics.json"), where / "metrics.json"):
            if path is not None and path.is_file():
                return json.loads(path.read_text())
        return None

    def state_path(self, where: Path) -> Path | None:
        """The run's saved state: the run directory's, else the ledger's snapshot."""
        for path in (where / "state.pt", self._mirror(where / "state.pt")):
            if path is not None and path.is_file():
                return path
        return None

    def recorded_arm(self, student: str, arm: str) -> dict[str, Any] | None:
        """The record's summary of (student, arm), or None."""
        return self.record.get("students", {}).get(student, {}).get("arms", {}).get(arm)

    def recorded_selection(self, student: str) -> dict[tuple, int]:
        """The record's selection scores of the student: (loss, T, alpha) -> validation errors."""
        scores = self.record.get("students", {}).get(student, {}).get("selection", {})
        return {tuple(ast.literal_eval(k)): v for k, v in scores.items()}

    def stage1_seconds(self) -> dict[str, float]:
        """Stage-1 seconds per store key (and "key:cpu"): the ledger's first measurements,
        then the run directory's for stores the ledger has not timed."""
        local = self.out / "stage1.json"
        timing = json.loads(local.read_text()) if local.is_file() else {}
        return {**timing, **(self._read("stage1.json") or {})}

    # --- writing -------------------------------------------------------------------------------
    def restore_teachers(self) -> list[Path]:
        """Copy the ledger's teachers into out where out lacks them (an unfinished run's
        snapshot is brought back when the run comes up: `resume`); returns the copies."""
        if self.root is None:
            return []
        copied = []
        for src in self.root.glob("teachers/*"):
            dst = self.out / src.relative_to(self.root)
            if not dst.is_file():
                copied.append(_copy_file(src, dst))
        return copied

    def resume(self, where: Path) -> None:
        """Bring the ledger's snapshot of an unfinished run into its run directory if that has
        no state.pt (a fresh checkout); a state saved there since is newer and stays."""
        saved = self.state_path(where)
        if saved is not None and saved != where / "state.pt":
            _copy_file(saved, where / "state.pt")

    def keep_teachers(self, paths: list[str]) -> None:
        """Copy the teachers' checkpoints (and their .json) into the ledger once; refuse
        teachers other than the ledger's (its runs all learnt from those)."""
        for path in map(Path, paths):
            kept = self._mirror(path)
            if kept is not None and kept.is_file() and \
                    (mine := file_sha256(path)) != (theirs := file_sha256(kept)):
                raise LedgerMismatch(
                    f"teacher {path} is not the ledger's {kept} (sha256 {mine[7:23]} vs "
                    f"{theirs[7:23]}): the ledger's runs learnt from its teachers; move "
                    f"{path.parent} away to use them, or pass another --ledger")
            for src in (path, path.with_suffix(".json")):
                self._copy(src)

    def archive(self, where: Path) -> None:
        """A run finished: keep its metrics, drop its snapshot."""
        self._copy(where / "metrics.json")
        snap = self._mirror(where / "state.pt")
        if snap is not None and snap.is_file():
            snap.unlink()  # written by `snapshot`: ours to remove

    def snapshot(self) -> list[Path]:
        """Copy every unfinished run's state.pt into the ledger; returns the copies."""
        if self.root is None:
            return []
        done = []
        for state in self.out.glob("runs/**/state.pt"):
            if not (state.parent / "metrics.json").is_file():
                done.append(self._copy(state, always=True))
        return [p for p in done if p is not None]

    def note_store(self, key: str, url: str, seconds: float, cpu_seconds: float) -> None:
        """A store was (re)built: keep its first timing, and its fingerprint beside those of
        earlier builds (a rebuild on another CPU may round some logits differently: the
        report names a store built more than one way)."""
        with self._writing():  # two workers may finish stores at once
            local = self.out / "stage1.json"
            mine = json.loads(local.read_text()) if local.is_file() else {}
            write_json(local, {**mine, key: seconds, f"{key}:cpu": cpu_seconds})
            if self.root is None:
                return
            timing = self._read("stage1.json") or {}
            if key not in timing:
                write_json(self.root / "stage1.json", {**timing, key: seconds,
                                                       f"{key}:cpu": cpu_seconds})
            prints = self._read("stores.json") or {}
            seen = prints.get(key, [])
            if (new := fingerprint(url)) not in seen:
                write_json(self.root / "stores.json", {**prints, key: [*seen, new]})

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold an exclusive lock (out/ledger.lock, beside the runs) while reading and
        rewriting a shared JSON file."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "ledger.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def store_builds(self) -> dict[str, int]:
        """Store key -> how many different stores were built for it (1 when every rebuild
        gave the same targets)."""
        return {k: len(v) for k, v in (self._read("stores.json") or {}).items()}

    def check_ensemble(self, ens: dict[str, Any]) -> str | None:
        """Keep the first ensemble test metrics; a line saying how these differ from them, or
        None. (The teachers are checked byte for byte: a test store rebuilt on another CPU may
        round a near tie the other way.)"""
        if self.root is None:
            return None
        kept = self._read("ensemble.json")
        if kept is None:
            write_json(self.root / "ensemble.json", ens)
            return None
        got = (ens["test_errors"], ens.get("member_test_errors"))
        want = (kept["test_errors"], kept.get("member_test_errors"))
        return None if got == want else (
            f"the ledger's teachers give {got[0]} test errors (members {got[1]}) here, "
            f"{want[0]} (members {want[1]}) where the ledger first measured them")

    def _copy(self, src: Path, *, always: bool = False) -> Path | None:
        dst = self._mirror(src)
        if dst is None or not src.is_file() or (dst.is_file() and not always):
            return None
        return _copy_file(src, dst)


def _copy_file(src: Path, dst: Path) -> Path:
    """src copied to dst whole or not at all (a snapshot is copied while its run goes on)."""
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def fingerprint(url: str) -> str:
    """sha256 over a store's chunk digests (every data chunk's digest, by array name): equal
    fingerprints mean equal targets, rows and ids."""
    digests = zarr.open_group(url, mode="r")[DIGESTS]
    h = hashlib.sha256()
    for name, array in sorted(digests.arrays()):
        h.update(name.encode())
        h.update(array[...].tobytes())
    return h.hexdigest()
