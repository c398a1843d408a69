"""The public API: what `softtargets` exports, that the format layer needs no torch, and the
README's "Use it from Python" example run as a user would paste it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import run_python_blocks

import softtargets

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_resolves():
    assert "write_logits" in softtargets.__all__ and "SoftTargets" in softtargets.__all__
    for name in softtargets.__all__:
        assert getattr(softtargets, name) is not None, name
    assert set(softtargets.__all__) <= set(dir(softtargets))


def test_the_format_layer_imports_no_torch():
    code = ("import sys, softtargets, softtargets.format.store, softtargets.format.sparse_store, "
            "softtargets.tools.verify, softtargets.tools.provenance, softtargets.format.records, "
            "softtargets.tools.export; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_the_readme_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    monkeypatch.chdir(tmp_path)
    scope = run_python_blocks(section, README, count=1)
    assert scope["loss"].item() > 0 and (tmp_path / "teacher.zarr" / "digests").is_dir()
