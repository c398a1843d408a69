"""Stored mixed views (softtargets/augment/mix.py): the Mix option, its parameters drawn per
(seed, sample, view) only, the teacher's target belonging to the mixed input that stage 2
rebuilds (DistillDataset, StreamingDistillDataset), lam-weighted labels, and resume after
SIGKILL equal to an uninterrupted write."""

import json

import numpy as np
import pytest
import torch
from stage1_helpers import chunk_files
from test_views_api import kill_after_three_units, small_data, small_teacher, write_one_thread
from write_helpers import MIXED

from softtargets import (DistillDataset, LogitWriter, Mix, SoftTargets, StreamingDistillDataset,
                         Views, write_logits)
from softtargets.augment.mix import COLUMNS, draw_mix, mixed_images
from softtargets.augment.views import augment_images, choose_views, draw_params
from softtargets.errors import ConfigError, DatasetError


def mixed_store(path, kind: str, *, views: int = 4):
    data, images = small_data()
    spec = Views(count=views, augment="shift=2,flip=1", seed=3,
                 mix=Mix(kind=kind, alpha=1.0, prob=0.75))
    write_logits(small_teacher(), data, str(path), views=spec, chunk_rows=8, batch_size=9,
                 device="cpu")
    return data, images, spec


def test_mix_option_round_trips_and_refuses_bad_values():
    v = Views(count=4, augment="shift=1", mix=Mix(kind="cutmix", alpha=0.4, prob=0.5))
    assert Views.from_json(json.loads(json.dumps(v.to_json()))) == v
    assert v.param_names[5:11] == COLUMNS and v.param_names[11:] == tuple(
        f"mix.{n}" for n in ("dy", "dx", "angle", "scale", "flip"))
    with pytest.raises(ConfigError, match="Mix kind must be one of \\['mixup', 'cutmix'\\]"):
        Mix(kind="blend")
    with pytest.raises(ConfigError, match="Mix alpha .* must be in \\(0, 100\\], got 0"):
        Mix(alpha=0)
    with pytest.raises(ConfigError, match="Mix prob must be in \\[0, 1\\], got 2"):
        Mix(prob=2)
    with pytest.raises(ConfigError, match="Views mix must be softtargets.Mix"):
        Views(count=2, mix="mixup")


def test_parameters_depend_on_seed_sample_and_view_only():
    data, _ = small_data()
    views = Views(count=5, augment="shift=2,flip=1", seed=9,
                  mix=Mix(kind="cutmix", prob=0.75)).for_dataset(data)
    ids = np.arange(24)
    every = views.params(ids)  # (24, 5, 5 + 6 + 5)
    np.testing.assert_array_equal(views.params(ids[::-1][:7]), every[::-1][:7])  # any order
    np.testing.assert_array_equal(every[:, :, :5], draw_params(views.spec, seed=9,
                                                               sample_ids=ids, views=5))
    mix = every[:, :, 5:]
    assert (mix[:, 0, 0] == -1).all() and (mix[:, 0, 1] == 1).all()  # clean view 0: unmixed
    on = mix[:, 1:, 0] >= 0
    assert 0 < on.mean() < 1 and np.isin(mix[:, 1:, 0][on], ids).all()
    s, v = np.argwhere(mix[:, :, 0] >= 0)[0]
    partner = int(mix[s, v, 0])  # the partner's parameters are its own view v's
    np.testing.assert_array_equal(mix[s, v, 6:], draw_params(views.spec, seed=9,
                                                             sample_ids=[partner], views=5)[0, v])
    y0, x0, y1, x1 = mix[s, v, 2:6]
    assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
    with pytest.raises(ConfigError, match="draws partners among the dataset's sample ids"):
        Views(count=2, mix=Mix()).params(ids)


def test_mixup_input_and_labels_by_hand():
    a = np.full((1, 2, 2), 0.5, np.float32)
    b = np.ones((1, 2, 2), np.float32)
    clean = [0, 0, 0, 1, 0]
    params = np.array([clean + [7, 0.25, 0, 0, 0, 0] + clean], np.float32)
    x, lam, partner, py = mixed_images(a, params, spec=Views(count=1).spec, mix=Mix(),
                                       fetch=lambda ids: (b, np.array([2])))
    np.testing.assert_allclose(x.numpy(), np.full((1, 2, 2), 0.25 * 0.5 + 0.75))
    assert partner.tolist() == [7] and lam.tolist() == [0.25] and py.tolist() == [2]
    # cutmix box rows 0..1, columns 0..2 of a 2x2 image: half the pixels, lam 0.5
    params[0, 7:11] = (0.0, 0.0, 0.5, 1.0)
    x, lam, _, _ = mixed_images(a, params, spec=Views(count=1).spec, mix=Mix(kind="cutmix"),
                                fetch=lambda ids: (b, np.array([2])))
    np.testing.assert_array_equal(x.numpy()[0], [[1.0, 1.0], [0.5, 0.5]])
    assert lam.tolist() == [0.5]


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_distill_dataset_replays_the_teachers_mixed_input(tmp_path, kind):
    data, images, views = mixed_store(tmp_path / "m.zarr", kind)
    targets = SoftTargets(str(tmp_path / "m.zarr"), temperature=2.0, view="replay")
    assert targets.meta.extra["views"]["mix"] == views.mix.to_json()
    train = DistillDataset(data, targets, seed=1)
    train.set_epoch(2)
    x, y, t = DistillDataset.collate([train[i] for i in range(24)])  # (24, 3, 16, 16)
    with torch.no_grad():
        again = small_teacher()(x)
    np.testing.assert_allclose(again.numpy(), t.logits.float().numpy(), rtol=1e-3, atol=2e-3)
    v = choose_views(np.arange(24), views=4, seed=1, epoch=2)
    params = targets.view_params(np.arange(24))[np.arange(24), v]  # (24, P)
    mixed = params[:, 5] >= 0
    assert mixed.any() and (~mixed).any()
    plain = augment_images(images[~mixed], params[~mixed, :5], spec=views.spec)
    assert torch.equal(x[torch.from_numpy(~mixed)], plain)  # unmixed rows: the plain views
    labels = data.labels(slice(0, 24))
    assert y.shape == (24, 5) and torch.allclose(y.sum(1), torch.ones(24))
    assert (y[torch.from_numpy(~mixed)].argmax(1).numpy() == labels[~mixed]).all()
    row = int(np.flatnonzero(mixed)[0])
    partner = int(params[row, 5])
    assert y[row, labels[row]] >= (params[row, 6] if kind == "mixup" else 0) - 1e-6
    assert y[row, labels[partner]] > 0 or labels[partner] == labels[row]
    # a DataLoader batch fetched at once (__getitems__) replays the same mixed views
    xb, yb, tb = DistillDataset.collate(train.__getitems__(list(range(24))))
    assert torch.equal(xb, x) and torch.equal(yb, y) and torch.equal(tb.logits, t.logits)


def test_streamed_replay_equals_the_in_memory_replay(tmp_path):
    data, _, _ = mixed_store(tmp_path / "m.zarr", "mixup")
    url = str(tmp_path / "m.zarr")
    train = DistillDataset(data, SoftTargets(url, temperature=2.0, view="replay"), seed=4)
    train.set_epoch(1)
    stream = StreamingDistillDataset(data, url, temperature=2.0, view="replay", batch_size=5,
                                     seed=4, with_ids=True)
    stream.set_epoch(1)
    seen = []
    for ids, x, y, target in stream:
        xm, ym, tm = DistillDataset.collate([train[i] for i in ids.tolist()])
        assert torch.equal(x, xm) and torch.equal(y, ym) and torch.equal(target.logits,
                                                                         tm.logits)
        seen += ids.tolist()
    assert sorted(seen) == list(range(24))


def test_partner_missing_from_the_students_dataset_is_refused(tmp_path):
    data, images, views = mixed_store(tmp_path / "m.zarr", "mixup")
    meta_ids = np.arange(24)
    params = SoftTargets(str(tmp_path / "m.zarr"), view="replay").view_params(meta_ids)
    with pytest.raises(DatasetError, match="partner sample ids \\[99\\] are not in dataset"):
        from softtargets.read.convert import RowIndex
        RowIndex(meta_ids).checked(np.array([99]), name="rgb16")
    assert (params[:, :, 5] < 24).all()
    with pytest.raises(ConfigError, match="bind them with views.for_dataset"):
        LogitWriter(str(tmp_path / "w.zarr"), dataset=data, views=views)
    assert not (tmp_path / "w.zarr").exists()
    assert draw_mix(Mix(), views.spec, seed=0, sample_ids=[], views=2,
                    pool=np.arange(3)).shape == (0, 2, 11)


def test_mixed_views_resume_after_sigkill_is_bit_identical(tmp_path):
    write_one_thread(str(tmp_path / "ref.zarr"), "mixed")  # uninterrupted
    store = tmp_path / "s.zarr"
    kill_after_three_units(store, "mixed")
    meta = write_one_thread(str(store), "mixed", resume=True)
    assert meta.complete and meta.extra["views"] == MIXED.info()
    assert chunk_files(store) == chunk_files(tmp_path / "ref.zarr")
