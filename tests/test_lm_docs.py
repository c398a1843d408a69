"""Every ```python example of docs/LM.md runs, in order, as a user would paste it (```py
snippets need the user's own files and are shown, not run)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_python_blocks
from lm_helpers import one_thread  # noqa: F401 (fixture)

DOC = Path(__file__).resolve().parents[1] / "docs" / "LM.md"


def test_the_lm_doc_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope = run_python_blocks(DOC.read_text(), DOC, count=2)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "{'train': 4, 'val': 1} 300" and printed[1] == "topk 128"
    assert scope["metrics"]["steps"] == 4 and scope["metrics"]["val_loss"] > 0
    assert "another tokenizer than the data's: vocab size 300 vs 301" in scope["refused"]
