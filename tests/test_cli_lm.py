"""The LM commands (softtargets/cli_lm.py) chained as the Makefile runs them, on a tiny corpus,
and their one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lm_helpers import one_thread  # noqa: F401 (fixture)
from softtargets.cli import cli
from softtargets.recipes.lm.corpus import stdlib_root

TINY = ["--layers", "1", "--heads", "2", "--width", "32", "--batch-size", "4", "--threads", "1"]


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_corpus_teacher_store_and_student_from_the_command_line(tmp_path):
    corpus, teacher = str(tmp_path / "corpus"), str(tmp_path / "teacher.pt")
    out = run("lm-corpus", "--out", corpus, "--source", str(stdlib_root() / "json"),
              "--vocab-size", "300")
    assert json.loads(out.split(": ", 1)[1])["vocab_size"] == 300
    run("lm-teacher", "--corpus", corpus, "--out", teacher, "--steps", "3", "--seq-len", "16",
        *TINY)
    out = run("lm-teacher-logits", "--corpus", corpus, "--teacher", teacher, "--store",
              str(tmp_path / "s.zarr"), "--kind", "sampled", "--k", "6", "--seq-len", "16",
              "--sequences", "8", "--threads", "1")
    assert json.loads(out.split(": ", 1)[1])["tokens"] == 8 * 16
    out = run("lm-student", "--corpus", corpus, "--store", str(tmp_path / "s.zarr"), "--out",
              str(tmp_path / "student.pt"), "--steps", "3", *TINY)
    metrics = json.loads(out.split(": ", 1)[1])
    assert metrics["steps"] == 3 and metrics["val_loss"] > 0
    result = CliRunner().invoke(cli, ["lm-student", "--corpus", corpus, "--store",
                                      str(tmp_path / "s.zarr"), "--sequences", "4"])
    assert result.exit_code == 1 and result.output.startswith(
        "Error: ConfigError: --sequences applies without --store")


def test_a_missing_corpus_or_teacher_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["lm-teacher", "--corpus", str(tmp_path / "none")])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "DatasetError: no corpus at" in result.output
    result = CliRunner().invoke(cli, ["lm-experiment", "--seeds", "a,b"])
    assert result.output == ("Error: ConfigError: --seeds must be integers separated by "
                             "commas, got 'a,b'\n")
