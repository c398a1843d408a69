"""Augmented views through the public API: write_logits(views=Views(...)) on RGB float images
with a teacher defined here, resume after SIGKILL and two torchrun ranks bit-identical, and
stage 2 replaying the stored views (DistillDataset, StreamingDistillDataset) under DataLoader
workers, the rebuilt input giving the stored logits back."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from stage1_helpers import REPO, chunk_files, wait_for
from torch import nn
from torch.utils.data import DataLoader
from write_helpers import CHUNK, N, VIEWS, write

from softtargets import (AugmentSpec, DistillDataset, SoftTargets, StreamingDistillDataset,
                         Views, write_logits)
from softtargets.augment.views import augment_images, choose_views, draw_params
from softtargets.datasets import TokenSequences, from_tensors
from softtargets.errors import ConfigError, DatasetError, IncompleteStoreError
from softtargets.format import ensemble
from softtargets.format.store import read_meta
from softtargets.write import TopK

HELPERS = REPO / "tests" / "write_helpers.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
       "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}


class SmallCNN(nn.Module):
    """The test's teacher: 3x16x16 RGB floats -> 5 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.head = nn.Linear(4 * 7 * 7, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1)) * 3.0


def small_data(n: int = 24):
    rng = np.random.default_rng(1)
    images = rng.random((n, 3, 16, 16)).astype(np.float32)
    return from_tensors(images, rng.integers(0, 5, n), num_classes=5, name="rgb16"), images


def small_teacher(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def views_store(path, *, members: int = 1, views: Views | None = None):
    data, images = small_data()
    teachers = [small_teacher(s) for s in range(members)] if members > 1 else small_teacher()
    views = views or Views(count=3, augment="shift=2,rotate=10,scale=1.2,flip=1", seed=7)
    meta = write_logits(teachers, data, str(path), views=views, chunk_rows=8, batch_size=9,
                        device="cpu")
    return meta, data, images, views


def test_views_option_round_trips_and_refuses_bad_values():
    v = Views(count=4, augment="shift=1,flip=1", seed=3, clean_view0=False)
    assert v.spec == AugmentSpec(shift=1, flip=1, clean_view0=False) and not v.clean_view0
    assert Views.from_json(json.loads(json.dumps(v.to_json()))) == v
    assert Views(count=2, augment=AugmentSpec(clean_view0=False)).clean_view0 is False
    with pytest.raises(ConfigError, match="Views count must be an integer >= 1, got 0"):
        Views(count=0)
    with pytest.raises(ConfigError, match="Views augment must be an AugmentSpec"):
        Views(count=2, augment=3)
    with pytest.raises(ConfigError, match="unknown keys \\['views'\\]"):
        Views.from_json({"views": 2})


def test_rgb_images_are_shifted_and_flipped_exactly():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 3, 6, 5)).astype(np.uint8)
    params = np.array([[1, -2, 0, 1, 1], [0, 0, 0, 1, 0]], np.float32)  # dy=1, dx=-2, flip
    out = augment_images(rgb, params).numpy()  # (2, 3, 6, 5)
    flipped = rgb[0, :, :, ::-1] / np.float32(255)
    want = np.zeros((3, 6, 5), np.float32)
    want[:, 1:, :3] = flipped[:, :5, 2:]  # moved down 1 and left 2, zero fill
    np.testing.assert_array_equal(out[0], want)
    np.testing.assert_array_equal(out[1], rgb[1] / np.float32(255))  # a clean view
    floats = rgb.astype(np.float32)  # float pixels are taken as they are
    np.testing.assert_array_equal(augment_images(floats, params).numpy()[1], floats[1])


def test_write_logits_stores_every_view_of_rgb_floats(tmp_path):
    meta, data, images, views = views_store(tmp_path / "v.zarr")
    assert meta.complete and meta.extra["views"] == views.info()
    assert meta.extra["views"]["views"] == 3
    targets = SoftTargets(str(tmp_path / "v.zarr"), view="replay")
    params = targets.view_params(np.arange(24))  # (24, 3, 5)
    np.testing.assert_array_equal(params, draw_params(views.spec, seed=7,
                                                      sample_ids=np.arange(24), views=3))
    model = small_teacher()
    stored = targets.batch(np.arange(24)).logits  # (24, 3, 5) float16
    for v in range(3):  # each view's logits are the teacher's on that view's input
        x = augment_images(images, params[:, v], spec=views.spec)
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(stored[:, v].float().numpy(), want, rtol=1e-3, atol=1e-3)
    # view 0 is clean: the row's logits are the teacher's on the plain images
    np.testing.assert_array_equal(SoftTargets(str(tmp_path / "v.zarr"))[5].logits,
                                  stored[5, 0])


def test_distill_dataset_replays_views_under_two_workers(tmp_path):
    _, data, images, views = views_store(tmp_path / "v.zarr")
    targets = SoftTargets(str(tmp_path / "v.zarr"), temperature=2.0, view="replay")
    train = DistillDataset(data, targets, seed=3)
    model = small_teacher()
    stored = targets.batch(np.arange(24)).logits  # (24, V, C)
    for epoch in (0, 1):
        train.set_epoch(epoch)
        loader = DataLoader(train, batch_size=8, num_workers=2,
                            collate_fn=DistillDataset.collate)
        xs, ts = zip(*[(x, t.logits) for x, _, t in loader])
        x, t = torch.cat(xs), torch.cat(ts)  # rows in order: (24, 3, 16, 16), (24, 5)
        v = choose_views(np.arange(24), views=3, seed=3, epoch=epoch)
        assert torch.equal(t, stored[np.arange(24), v])
        with torch.no_grad():  # the teacher on the replayed input: the stored view's logits
            again = model(x).numpy()
        np.testing.assert_allclose(again, t.float().numpy(), rtol=1e-3, atol=1e-3)
        assert not torch.equal(x, torch.from_numpy(images))  # augmented, not the plain input
    assert (choose_views(np.arange(24), views=3, seed=3, epoch=0)
            != choose_views(np.arange(24), views=3, seed=3, epoch=1)).any()


def test_streaming_replay_of_an_ensemble_under_two_workers(tmp_path):
    _, data, _, views = views_store(tmp_path / "e.zarr", members=2)
    url = str(tmp_path / "e.zarr")
    memory = SoftTargets(url, temperature=2.0, view="replay", rule="geometric")
    stream = StreamingDistillDataset(data, url, temperature=2.0, rule="geometric",
                                     view="replay", batch_size=5, seed=4, with_ids=True)
    stream.set_epoch(1)
    seen = []
    for ids, x, _, target in stream.loader(num_workers=2):
        v = choose_views(ids.numpy(), views=3, seed=4, epoch=1)
        logp = memory.batch(ids.numpy()).log_probs[np.arange(len(ids)), v]  # (B, C)
        assert torch.equal(target.log_probs, logp)
        params = memory.view_params(ids.numpy())[np.arange(len(ids)), v]
        want = augment_images(data.take(ids.numpy())[0], params, spec=views.spec)
        assert torch.equal(x, want)
        seen += ids.tolist()
    assert sorted(seen) == list(range(24))
    # the combination of one view is the ensemble rule over the members' logits of that view
    z = np.stack([small_teacher(s)(augment_images(data.inputs(slice(0, 1)), memory.view_params(
        [0])[:, 2], spec=views.spec)).detach().numpy() for s in range(2)])  # (2, 1, C)
    np.testing.assert_allclose(memory.batch([0]).log_probs[0, 2].numpy(),
                               ensemble.combine_log_probs(z, rule="geometric",
                                                          temperature=2.0)[0], atol=2e-3)


def test_mc_dropout_views_keep_every_pass_view(tmp_path):
    data, _ = small_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 16 * 16, 5))
    meta = write_logits(model, data, str(tmp_path / "mc.zarr"), mc_dropout=2,
                        views=Views(count=2), chunk_rows=8, device="cpu")
    import zarr
    group = zarr.open_group(str(tmp_path / "mc.zarr"), mode="r")
    z = np.asarray(group["member_view_logits"])  # (2 passes, 24, 2 views, 5)
    assert z.shape == (2, 24, 2, 5) and not np.array_equal(z[0], z[1])
    np.testing.assert_array_equal(np.asarray(group["member_logits"]), z[:, :, 0])
    assert len(meta.extra["ensemble"]["members"]) == 2


@pytest.mark.parametrize("case, message", [
    ("tokens", "holds sequences of 4 positions .* augmented views need images"),
    ("hwc", r"looks like \(H, W, C\); views take \(C, H, W\)"),
    ("vectors", r"items have shape \(6,\); views take images"),
    ("topk", "a views store keeps every view's dense logits: views= needs Dense"),
    ("not-views", "views must be softtargets.Views"),
])
def test_views_of_what_is_not_an_image_are_refused_in_one_line(tmp_path, case, message):
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(5))
    kwargs = {"views": Views(count=2)}
    if case == "tokens":
        rng.integers(0, 5, 17).astype("<u2").tofile(tmp_path / "t.bin")
        data = TokenSequences(str(tmp_path / "t.bin"), seq_len=4, vocab_size=5)
    elif case == "hwc":
        data = from_tensors(rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8),
                            rng.integers(0, 5, 8), num_classes=5)
    elif case == "vectors":
        data = from_tensors(rng.random((8, 6)).astype(np.float32), rng.integers(0, 5, 8),
                            num_classes=5)
    else:
        data, _ = small_data()
        kwargs["targets"] = TopK(2)
        if case == "not-views":
            kwargs = {"views": 3}
    with pytest.raises((ConfigError, DatasetError), match=message) as e:
        write_logits(model, data, str(tmp_path / "s.zarr"), device="cpu", **kwargs)
    assert "\n" not in str(e.value) and not (tmp_path / "s.zarr").exists()


def test_replay_of_a_store_without_views_is_refused(tmp_path):
    data, _ = small_data()
    write_logits(small_teacher(), data, str(tmp_path / "p.zarr"), device="cpu")
    with pytest.raises(ConfigError, match="holds no augmented views .* view='replay' needs"):
        SoftTargets(str(tmp_path / "p.zarr"), view="replay")
    with pytest.raises(ConfigError, match="view_params needs every view"):
        SoftTargets(str(tmp_path / "p.zarr")).view_params([0])


def write_one_thread(store: str, kind: str, **kwargs):
    """write() with torch on one thread, as the subprocesses run (a convolution's float32
    sums may round differently on another thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return write(store, kind, **kwargs)
    finally:
        torch.set_num_threads(before)


def kill_after_three_units(store, kind: str) -> None:
    """Write `kind` to `store` in a subprocess with a slowed teacher; SIGKILL it once 3 units
    are written (of N // CHUNK)."""
    proc = subprocess.Popen([sys.executable, str(HELPERS), str(store), kind, "--slow", "0.1"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    units = store / "sample_id" / "c"
    try:
        wait_for(lambda: units.exists() and len(list(units.iterdir())) >= 3, what="3 units")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 3 <= len(list(units.iterdir())) < N // CHUNK


def test_views_resume_after_sigkill_is_bit_identical(tmp_path):
    write_one_thread(str(tmp_path / "ref.zarr"), "views")  # uninterrupted
    store = tmp_path / "s.zarr"
    kill_after_three_units(store, "views")
    with pytest.raises(IncompleteStoreError, match="is incomplete"):
        SoftTargets(str(store), view="replay")
    meta = write_one_thread(str(store), "views", resume=True)
    assert meta.complete and meta.extra["views"] == VIEWS.info()
    assert chunk_files(store) == chunk_files(tmp_path / "ref.zarr")  # every view array too
    assert any(k.startswith("view_logits/") for k in chunk_files(store))


def test_two_torchrun_ranks_write_the_views_one_process_writes(tmp_path):
    write_one_thread(str(tmp_path / "one.zarr"), "views")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(HELPERS), str(tmp_path / "two.zarr"),
                           "views"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = chunk_files(tmp_path / "two.zarr"), chunk_files(tmp_path / "one.zarr")
    assert two == one and len(two) == 12 * 9  # sample_id, logits, 2 view arrays, digests, inputs
    assert read_meta(str(tmp_path / "two.zarr"))[0].complete
