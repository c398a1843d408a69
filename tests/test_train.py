"""recipes/hinton2015/train.py: the built-in student checkpoints as it goes, and a run killed
mid-epoch resumes to the same weights and metrics as a run never stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from softtargets.config import StudentTrainConfig
from softtargets.datasets.idx import IDXDataset
from softtargets.format.store import StoreWriter
from softtargets.read.loop import Checkpointer
from softtargets.recipes.hinton2015.train import train_student

REPO = Path(__file__).resolve().parents[1]


def random_store(url: Path, data_cfg) -> str:
    data = IDXDataset("mnist", data_dir=data_cfg.data_dir)
    logits = np.random.default_rng(0).normal(size=(len(data), 10)).astype(np.float32) * 3
    w = StoreWriter.create(str(url), n=len(data), class_names=data.class_names,
                           dataset=data.identity(), teacher={}, config={}, chunk_rows=16)
    for i in range(w.num_chunks):
        sl = w.chunk_slice(i)
        w.write_chunk(i, sample_ids=np.arange(sl.start, sl.stop), logits=logits[sl])
    w.finalize()
    return str(url)


def same_run(a: Path, b: Path) -> None:
    """Equal student weights and metrics (all but wall times) in two output folders."""
    wa, wb = (torch.load(d / "student.pt", weights_only=False)["state_dict"] for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        m.pop("seconds")
        for row in m["history"]:
            row.pop("seconds")
    assert ma == mb


class Killed(Exception):
    pass


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_a_student_stopped_mid_epoch_resumes_to_the_same_weights(tiny_data, tmp_path,
                                                                 monkeypatch, loader):
    store = random_store(tmp_path / "s.zarr", tiny_data)
    cfg = StudentTrainConfig(data=tiny_data, store=store, hidden=(16,), epochs=2, batch_size=16,
                             lr=0.05, temperature=3.0, alpha=0.5, loader=loader, mixup=0.3)
    train_student(cfg, out_dir=str(tmp_path / "whole"), progress=False, checkpoint_every=4)
    save = Checkpointer.save

    def killed_after(self, state):  # 6 steps an epoch: stops after step 4 of epoch 2
        save(self, state)
        if (state["position"]["epoch"], state["position"]["delivered"]) == (1, 4):
            raise Killed
    monkeypatch.setattr(Checkpointer, "save", killed_after)
    with pytest.raises(Killed):
        train_student(cfg, out_dir=str(tmp_path / "cut"), progress=False, checkpoint_every=4)
    monkeypatch.setattr(Checkpointer, "save", save)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    train_student(cfg, out_dir=str(tmp_path / "cut"), progress=False, checkpoint_every=4,
                  resume=True)
    same_run(tmp_path / "whole", tmp_path / "cut")


def test_student_command_killed_mid_epoch_resumes_bit_for_bit(tiny_data, tmp_path):
    store = random_store(tmp_path / "s.zarr", tiny_data)
    args = ["student", "--dataset", "mnist", "--data-dir", tiny_data.data_dir, "--store", store,
            "--hidden", "16", "--epochs", "2", "--batch-size", "16", "-T", "3", "--alpha", "0.5",
            "--loader", "stream", "--checkpoint-every", "4", "--threads", "1", "--quiet"]
    run_cli(*args, "--out", tmp_path / "whole")
    cut = tmp_path / "cut"
    # every student step slowed by half a second (tests/slow.py: torch's global forward hooks),
    # so the kill lands between the first mid-epoch save and the next
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "slow.py"), "0.5", *args,
                             "--out", str(cut)], cwd=REPO, env=os.environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not (cut / "train-state.pt").exists() or torch.load(
                cut / "train-state.pt", weights_only=True)["position"]["delivered"] != 4:
            assert proc.poll() is None and time.monotonic() - t0 < 120, proc.stderr.read()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)  # before the next save, 4 slowed steps later
        proc.wait()
    state = torch.load(cut / "train-state.pt", weights_only=True)
    assert state["position"]["epoch"] == 0 and not (cut / "metrics.json").exists()
    assert state["position"]["rows"] == 96 and state["history"] == []
    run_cli(*args, "--out", cut, "--resume")
    same_run(tmp_path / "whole", cut)
