"""Every example of docs/API.md runs, in order, as a user would paste it."""

from pathlib import Path

import torch
from conftest import run_python_blocks

from softtargets.read import DenseTarget, PositionTargets

DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"


def test_the_examples_of_docs_api_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope = run_python_blocks(DOC.read_text(), DOC, count=10)
    assert capsys.readouterr().out == "dense 64 1000\ndense 64 module\n"
    assert isinstance(scope["one"], DenseTarget) and scope["one"].logits.shape == (1000,)
    assert scope["x"].shape == (2, 8) and scope["y"].dtype == torch.int64
    assert isinstance(scope["target"], PositionTargets)
    assert scope["target"].sparse.ids.shape == (2, 8, 4)
    assert torch.isfinite(scope["loss"]) and scope["loss"].item() > 0
    assert (tmp_path / "teacher.zarr").is_dir() and (tmp_path / "tokens.zarr").is_dir()
    assert scope["state"]["epoch"] == 2 and scope["state"]["delivered"] == 1
    assert len(scope["rest"]) == 1 and isinstance(scope["rest"][0][2], PositionTargets)
    # "Write a store from Python"
    assert scope["top"].kind == "topk" and scope["top"].extra["sparse"]["k"] == 32
    assert scope["writer"].meta.n == 64 and scope["writer"].meta.kind == "sampled"
    assert "chunk 2 (dataset rows 32..47) does not match the student's data" in scope["refused"]
    # "Augmented views": every view stored, then replayed through the public read path
    assert scope["views_meta"].extra["views"]["views"] == 4
    assert scope["every"].logits.shape == (2, 4, 1000) and scope["params"].shape == (2, 4, 5)
    assert scope["vx"].shape == (16, 3, 32, 32) and scope["vt"].logits.shape == (16, 1000)
    assert scope["sx"].shape == (16, 3, 32, 32) and scope["st"].logits.shape == (16, 1000)
