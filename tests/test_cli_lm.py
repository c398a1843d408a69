"""The LM commands (softtargets/cli/lm.py) chained as the Makefile runs them, on a tiny corpus,
and their one-line errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lm_helpers import one_thread, tiny_corpus  # noqa: F401 (fixtures)
from softtargets.cli import cli
from softtargets.format.store import read_meta
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


def test_any_causal_lm_through_the_factory_interface_records_the_tokenizer(tiny_corpus,
                                                                           tmp_path):
    store = str(tmp_path / "user.zarr")
    run("teacher-logits", "--data", f"tokens:{tiny_corpus.token_file('val')}", "--seq-len", "16",
        "--teacher-factory", "lm_helpers:tiny_gpt", "--topk", "4", "--store", store, "--quiet",
        "--threads", "1")
    meta, _ = read_meta(store)
    assert meta.dataset["tokenizer"] == tiny_corpus.identity.to_json()  # from the sidecar
    assert meta.n == (tiny_corpus.tokens["val"] - 1) // 16 * 16 and meta.num_classes == 300
