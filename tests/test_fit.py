"""The generic training loop: mid-epoch checkpoints, and a resumed run equal to an unbroken one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from softtargets.datasets import from_tensors
from softtargets.errors import CheckpointError, ConfigError
from softtargets.read.fit import Checkpointer, FitConfig, fit_student
from softtargets.write import write_logits


def setup(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = rng.integers(0, 4, 60)
    data = from_tensors(x, y, num_classes=4, name="toy")
    torch.manual_seed(1)
    write_logits(nn.Linear(6, 4), data, tmp_path / "t.zarr", chunk_rows=16, device="cpu")
    return data, str(tmp_path / "t.zarr")


def student() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 4))


class Killed(Exception):
    pass


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch, loader):
    data, store = setup(tmp_path)
    cfg = FitConfig(temperature=2.0, alpha=0.7, epochs=2, lr=0.05, batch_size=8, loader=loader)
    whole = student()
    first = fit_student(whole, data, store, cfg, checkpoint=str(tmp_path / "a.pt"),
                        checkpoint_every=3)

    save = Checkpointer.save

    def killed_after(self, state):  # 8 batches an epoch: dies after epoch 1, batch 6
        save(self, state)
        if (state["position"]["epoch"], state["position"]["delivered"]) == (1, 6):
            raise Killed
    monkeypatch.setattr(Checkpointer, "save", killed_after)
    with pytest.raises(Killed):
        fit_student(student(), data, store, cfg, checkpoint=str(tmp_path / "b.pt"),
                    checkpoint_every=3)
    monkeypatch.setattr(Checkpointer, "save", save)
    again = student()  # a new process: fresh weights, restored from the checkpoint
    metrics = fit_student(again, data, store, cfg, checkpoint=str(tmp_path / "b.pt"),
                          checkpoint_every=3, resume=True)
    for a, b in zip(whole.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # the running loss of the cut epoch is saved too: the same per-epoch losses
    assert metrics["train_losses"] == first["train_losses"] and len(first["train_losses"]) == 2


def test_resume_with_other_settings_is_refused(tmp_path):
    data, store = setup(tmp_path)
    cfg = FitConfig(temperature=2.0, alpha=0.7, epochs=1, batch_size=8, loader="memory")
    fit_student(student(), data, store, cfg, checkpoint=str(tmp_path / "c.pt"))
    other = FitConfig(temperature=4.0, alpha=0.7, epochs=1, batch_size=8, loader="memory")
    with pytest.raises(ConfigError, match=r"cannot resume from '.*c\.pt': it was saved with "
                                          r"other settings \(temperature differ\)"):
        fit_student(student(), data, store, other, checkpoint=str(tmp_path / "c.pt"),
                    resume=True)
    with pytest.raises(ConfigError, match="--checkpoint-every must be >= 1 batches, got 0"):
        fit_student(student(), data, store, cfg, checkpoint=str(tmp_path / "d.pt"),
                    checkpoint_every=0)


def test_resume_from_a_foreign_file_is_one_line(tmp_path):
    data, store = setup(tmp_path)
    cfg = FitConfig(temperature=2.0, alpha=0.7, epochs=1, batch_size=8, loader="memory")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"'.*junk\.pt' is not a softtargets or torch "
                                              r"checkpoint: .*; move it away to train afresh"):
        fit_student(student(), data, store, cfg, checkpoint=str(tmp_path / "junk.pt"),
                    resume=True)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"cannot resume from '.*other\.pt': it is not a "
                                              r"training state of softtargets \(no config\)"):
        fit_student(student(), data, store, cfg, checkpoint=str(tmp_path / "other.pt"),
                    resume=True)
