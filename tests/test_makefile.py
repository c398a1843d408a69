"""`make student`'s commands: the CNN teacher by default, the paper's MLP one variable away, the
validation rows on every step, and steps that rerun when their settings change."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(*args):
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *map(str, args)],
                          capture_output=True, text=True)


def commands(run, *args):
    p = make("-n", "student", f"RUN={run}", *args)
    assert p.returncode == 0, p.stderr
    return [line for line in p.stdout.splitlines() if "/softtargets " in line]


def test_default_run_uses_the_cnn_teacher_and_validation_rows(tmp_path):
    lines = commands(tmp_path)
    steps = {line.split("/softtargets ")[1].split()[0]: line for line in lines}
    assert ("train-teacher --dataset fashion-mnist --val-rows 5000 --epochs 15 --arch cnn "
            "--hidden 16,32,128 --max-norm 0 --dropout 0.2") in steps["train-teacher"]
    assert "teacher-logits --dataset fashion-mnist --val-rows 5000 " in steps["teacher-logits"]
    assert "baseline --dataset fashion-mnist --val-rows 5000 --epochs 20 --lr 0.05 " \
        in steps["baseline"]
    assert "--val-rows 5000 --epochs 20 --lr 0.05 -T " in steps["student"]
    assert steps["summary"].endswith(f"summary {tmp_path}")


def test_paper_mlp_teacher_is_one_variable_away(tmp_path):
    teacher = [line for line in commands(tmp_path, "TEACHER_ARCH=mlp") if "train-teacher" in line]
    assert "--val-rows 5000 --epochs 30 --arch mlp --hidden 1200,1200 --out" in teacher[0]
    p = make("-n", "student", f"RUN={tmp_path}", "TEACHER_ARCH=vit")
    assert p.returncode != 0 and "TEACHER_ARCH must be cnn or mlp, got 'vit'" in p.stderr


def test_settings_files_change_only_with_the_settings(tmp_path):
    args = tmp_path / "teacher.args"
    assert make(f"RUN={tmp_path}", args).returncode == 0
    first = args.read_text()
    os.utime(args, (1, 1))  # a rerun with the same settings must leave the file (and its date)
    assert make(f"RUN={tmp_path}", args).returncode == 0
    assert args.stat().st_mtime == 1 and args.read_text() == first
    assert make(f"RUN={tmp_path}", args, "TEACHER_ARCH=mlp").returncode == 0
    assert "--arch mlp" in args.read_text() and args.stat().st_mtime > 1
