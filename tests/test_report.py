"""The run summary of `make student`: test and validation errors, and the gap closed."""

import json

from softtargets.recipes.hinton2015.report import errors_text, gap_closed, gap_text, summary_table


def metrics(role, model, test, val=None, **extra):
    m = {"role": role, "model": model, "test_errors": test, "test_n": 10000,
         "test_accuracy": 1 - test / 10000, "seconds": 12.4, **extra}
    if val is not None:
        m.update(val_errors=val, val_n=5000, val_accuracy=1 - val / 5000)
    return m


def write_run(root, teacher, baseline, student):
    for path, m in ((root / "teacher.json", teacher), (root / "baseline" / "metrics.json",
                    baseline), (root / "student" / "metrics.json", student)):
        if m is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(m))


def distilled(test, val=None, val_rows=5000):
    return metrics("distilled", "mlp 784-800-800-10", test, val, config={
        "temperature": 5.0, "alpha": 0.5, "data": {"val_rows": val_rows}})


def test_summary_prints_validation_errors_and_the_gap_closed(tmp_path):
    write_run(tmp_path, metrics("teacher", "cnn 784-16-32-128-10", 775, 300),
              metrics("baseline", "mlp 784-800-800-10", 989, 400), distilled(916, 350))
    lines = summary_table(tmp_path).splitlines()
    assert lines[0] == ("| model | architecture | test errors | validation errors | accuracy | "
                        "train time |")
    assert lines[2] == "| teacher | cnn 784-16-32-128-10 | 775/10000 | 300/5000 | 92.25% | 12 s |"
    assert lines[4] == ("| distilled student (T=5, alpha=0.5) | mlp 784-800-800-10 | 916/10000 | "
                        "350/5000 | 90.84% | 12 s |")
    assert lines[6] == ("gap closed, (baseline - distilled) / (baseline - teacher): test 34% "
                        "((989 - 916) / (989 - 775)); validation 50% ((400 - 350) / (400 - 300))")
    assert lines[7].startswith("validation errors: on the last 5000 training rows (--val-rows)")


def test_summary_without_validation_rows_or_a_gap(tmp_path):
    write_run(tmp_path, metrics("teacher", "mlp 784-1200-1200-10", 995),
              metrics("baseline", "mlp 784-800-800-10", 990), distilled(1050))
    lines = summary_table(tmp_path).splitlines()
    assert lines[3].endswith("| 990/10000 | - | 90.10% | 12 s |")
    assert lines[-1] == ("gap closed, (baseline - distilled) / (baseline - teacher): test n/a: "
                         "the teacher (995) is no better than the baseline (990)")


def test_summary_of_an_unfinished_run_has_no_gap_line(tmp_path):
    write_run(tmp_path, metrics("teacher", "cnn", 775, 300), None, None)
    lines = summary_table(tmp_path).splitlines()
    assert len(lines) == 5 and "(not run: " in lines[3] and "gap" not in "".join(lines)


def test_gap_and_errors_text():
    assert gap_closed(200, 150, 100) == 0.5 and gap_closed(100, 90, 100) is None
    assert gap_text(985.3333, 920.0, 775) == "31% ((985.3 - 920.0) / (985.3 - 775))"
    assert errors_text(metrics("x", "m", 812)) == "812/10000 test errors (91.88% accuracy)"
    assert errors_text(metrics("x", "m", 812, 301)) == ("812/10000 test errors (91.88% accuracy); "
                                                        "301/5000 validation errors")
