"""A recipe's run directory: a timestamped log line, cached JSON results, and the check that
refuses to resume a directory saved with other settings."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from softtargets.atomic import write_json
from softtargets.config import to_dict
from softtargets.errors import ConfigError


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cached_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


# Fields that do not change any result: a rerun with other values may reuse saved steps.
_NEUTRAL = ("threads",)


def check_run_dir(cfg: Any, out: Path) -> None:
    """Refuse to resume in a run directory saved with other settings (its teachers, stores and
    students would be reused as if they were this config's); record the settings otherwise."""
    saved = cached_json(out / "config.json")
    if saved is None and (out / "results.json").is_file():  # runs from before config.json
        saved = json.loads((out / "results.json").read_text())["config"]
    now = to_dict(cfg)
    if saved is not None:
        # a setting added since the directory was saved reads as its default there
        defaults = {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(cfg)
                    if f.default is not dataclasses.MISSING}
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
        diff = sorted(k for k in set(saved) | set(now)
                      if k not in _NEUTRAL and saved.get(k) != now.get(k))
        if diff:
            shown = ", ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)
            raise ConfigError(f"run directory {str(out)!r} holds results of other settings "
                              f"({shown}); pass another --out or delete that directory")
    write_json(out / "config.json", now)
