"""Patient distillation building blocks: online function matching (recipes/hinton2015/
online.py) and one student run of an arm (patient.py): equal steps, per-epoch validation and
test errors, the skip of a finished run and resume from the last saved epoch."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from softtargets import IDXDataset, Mix, Views, write_logits
from softtargets.augment.views import AugmentSpec
from softtargets.config import to_dict
from softtargets.datasets.idx_files import load_split
from softtargets.errors import CheckpointError, ConfigError
from softtargets.format.ensemble import combine_log_probs
from softtargets.recipes.hinton2015 import patient
from softtargets.recipes.hinton2015.models import ModelSpec, build, save_checkpoint
from softtargets.recipes.hinton2015.online import OnlineBatches
from softtargets.recipes.hinton2015.patient import ArmConfig, run_arm
from softtargets.recipes.hinton2015.train import evaluate


def teachers(n: int = 2) -> list[nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build(ModelSpec(hidden=(8,))).eval())
    return out


@pytest.fixture
def data(tiny_data):
    cfg = tiny_data.__class__(**{**to_dict(tiny_data), "val_rows": 16})
    return cfg, IDXDataset.from_split(load_split(cfg))


def test_online_batches_are_fresh_views_with_the_teachers_target_now(data):
    _, ds = data
    models = teachers()
    online = OnlineBatches(ds, models, augment=AugmentSpec(shift=2, flip=1),
                           mix=Mix(kind="mixup", prob=0.5), temperature=3.0,
                           rule="arithmetic", batch_size=32, seed=1)
    first = list(online.epoch(0))
    assert online.num_batches() == len(first) == 3 and online.teacher_seconds > 0
    assert sum(len(x) for x, _, _ in first) == len(ds) == 80
    x, y, t = first[0]
    z = np.stack([m(x).detach().numpy() for m in models])  # (2, B, C)
    np.testing.assert_allclose(t.log_probs.numpy(),
                               combine_log_probs(z, rule="arithmetic", temperature=3.0),
                               atol=1e-5)
    assert y.shape == (32, 10) and torch.allclose(y.sum(1), torch.ones(32))
    assert 0 < (y.max(1).values < 1).float().mean() < 1  # some rows mixed, some not
    x_last, y_last, t_last = first[-1]  # the short last batch: 80 = 32 + 32 + 16
    z_last = np.stack([m(x_last).detach().numpy() for m in models])  # (2, 16, C)
    assert len(x_last) == len(y_last) == 16
    np.testing.assert_allclose(t_last.log_probs.numpy(),
                               combine_log_probs(z_last, rule="arithmetic", temperature=3.0),
                               atol=1e-5)
    again = next(iter(online.epoch(0)))
    assert torch.equal(again[0], x)  # an epoch's views are reproducible
    assert not torch.equal(next(iter(online.epoch(1)))[0], x)  # the next epoch's are new


def test_arm_run_records_curves_skips_when_done_and_resumes(data, tmp_path, monkeypatch):
    cfg_data, ds = data
    url = str(tmp_path / "v.zarr")
    write_logits(teachers(), ds, url, views=Views(count=3, augment="shift=1"), device="cpu")
    cfg = ArmConfig(arm="views", data=cfg_data, student="mlp:16", store=url, epochs=2,
                    batch_size=32, temperature=2.0, loss="mse")
    whole = run_arm(cfg, tmp_path / "whole")
    assert whole["steps"] == 2 * 3 and len(whole["history"]) == 2
    assert {"val_errors", "test_errors", "seconds"} <= set(whole["history"][0])
    assert whole["history"][0]["val_errors"] <= 16 and whole["config"]["loss"] == "mse"
    assert run_arm(cfg, tmp_path / "whole") == whole  # finished: read back, not rerun

    real = patient._epoch
    calls = []

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(patient, "_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_arm(cfg, tmp_path / "cut")
    monkeypatch.setattr(patient, "_epoch", real)
    resumed = run_arm(cfg, tmp_path / "cut")
    strip = [{k: v for k, v in h.items() if "seconds" not in k} for h in resumed["history"]]
    assert strip == [{k: v for k, v in h.items() if "seconds" not in k}
                     for h in whole["history"]]
    other = ArmConfig(arm="views", data=cfg_data, student="mlp:16", store=url, epochs=3,
                      batch_size=32)
    (tmp_path / "cut" / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="saved by another run configuration"):
        run_arm(other, tmp_path / "cut")
    (tmp_path / "cut" / "state.pt").write_bytes(b"not a checkpoint")  # a torn or foreign file
    with pytest.raises(CheckpointError, match="state.pt' is not a softtargets or torch "
                       "checkpoint.*move that run directory away"):
        run_arm(cfg, tmp_path / "cut")


def test_online_arm_and_hard_arm_run(data, tmp_path):
    cfg_data, ds = data
    paths = []
    split = load_split(cfg_data)
    for i, m in enumerate(teachers()):
        path = tmp_path / f"t{i}.pt"
        save_checkpoint(path, model=m, spec=m.spec, config={}, dataset=split.identity(),
                        class_names=split.class_names, metrics={})
        paths.append(str(path))
    cfg = ArmConfig(arm="online", data=cfg_data, student="mlp:16", teachers=tuple(paths),
                    epochs=1, batch_size=40, mix_kind="cutmix")
    m = run_arm(cfg, tmp_path / "online")
    assert m["steps"] == 2 and 0 < m["teacher_seconds"] < m["stage2_seconds"]
    assert m["stage2_cpu_seconds"] > 0 and m["history"][0]["cpu_seconds"] > 0
    assert json.loads((tmp_path / "online" / "metrics.json").read_text())["arm"] == "online"
    # the run's student as its last epoch left it: its test errors are the history's last
    student = patient.load_student(patient.load_run_state(tmp_path / "online"), split)
    test = load_split(cfg_data.for_test())
    assert evaluate(student, test)["test_errors"] == m["history"][-1]["test_errors"]
    with pytest.raises(ConfigError, match="arm 'online' runs the teachers"):
        ArmConfig(arm="online", data=cfg_data)
    with pytest.raises(ConfigError, match="arm must be one of"):
        ArmConfig(arm="teacher", data=cfg_data)
