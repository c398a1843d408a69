"""Stage 2 of views stores: streamed view replay, ensembles of views, and mixup of stored targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from stage1_helpers import make_teacher

from softtargets.format import ensemble
from softtargets.config import EnsembleLogitsConfig, LogitsConfig, StudentTrainConfig
from softtargets.datasets.idx_files import load_split
from softtargets.errors import ConfigError, StoreError, StoreMismatchError
from softtargets.datasets.idx import IDXDataset
from softtargets.read import StreamingDistillDataset
from softtargets.write.ensemble_run import write_ensemble_logits
from softtargets.read.batch import DenseTarget
from softtargets.recipes.hinton2015.mixup import Mixup, mix_log_probs
from softtargets.recipes.hinton2015.models import load_checkpoint
from softtargets.format.store import read_meta
from softtargets.write.idx_teacher import write_teacher_logits
from softtargets.recipes.hinton2015.train import train_student
from softtargets.read.view_loader import ViewData
from softtargets.augment.views import AugmentSpec, apply_views, choose_views

AUG = "shift=2,rotate=8,flip=1"


def _views_store(tmp_path: Path, data, *, views: int = 3) -> tuple[str, str]:
    teacher = str(make_teacher(tmp_path / "teacher.pt", data))
    cfg = LogitsConfig(data=data, teacher=teacher, store=str(tmp_path / "v.zarr"), chunk_rows=8,
                       device="cpu", views=views, augment=AUG, view_seed=2)
    write_teacher_logits(cfg, progress=False)
    return teacher, cfg.store


def test_choose_views_is_a_function_of_seed_epoch_and_id() -> None:
    ids = np.arange(1000)
    v = choose_views(ids, views=4, seed=1, epoch=0)
    np.testing.assert_array_equal(v[::-1], choose_views(ids[::-1], views=4, seed=1, epoch=0))
    np.testing.assert_array_equal(v[500:], choose_views(ids[500:], views=4, seed=1, epoch=0))
    assert np.bincount(v, minlength=4).min() > 200  # roughly uniform over the 4 views
    assert (v != choose_views(ids, views=4, seed=1, epoch=1)).mean() > 0.6
    assert (v != choose_views(ids, views=4, seed=2, epoch=0)).mean() > 0.6


def test_streamed_replay_gives_the_stored_logits_and_every_row_once(tmp_path, tiny_data):
    teacher, url = _views_store(tmp_path, tiny_data)
    split = load_split(tiny_data)
    model = load_checkpoint(teacher).model.eval()
    stream = StreamingDistillDataset(IDXDataset.from_split(split), url, batch_size=20, seed=4,
                                     view="replay", buffer_chunks=2, with_ids=True)
    memory = ViewData(split, url)
    for epoch in range(2):
        seen = []
        stream.set_epoch(epoch)
        for ids, x, y, t in stream:
            t = t.logits
            with torch.no_grad():  # the teacher on the rebuilt input: the stored logits exactly
                again = model(x.flatten(1)).numpy().astype(np.float16)
            np.testing.assert_array_equal(again, t.numpy())
            v = choose_views(ids.numpy(), views=3, seed=4, epoch=epoch)
            np.testing.assert_array_equal(  # the same view as the in-memory loader replays
                t.numpy(), memory.view_logits[ids.numpy(), v])
            np.testing.assert_array_equal(y.numpy(), split.labels[ids.numpy()])
            seen += ids.tolist()
        assert sorted(seen) == list(range(96))


def test_replay_refuses_a_store_without_views_or_of_other_data(tmp_path, tiny_data):
    import dataclasses
    teacher = str(make_teacher(tmp_path / "teacher.pt", tiny_data))
    plain = LogitsConfig(data=tiny_data, teacher=teacher, store=str(tmp_path / "p.zarr"),
                         device="cpu")
    write_teacher_logits(plain, progress=False)
    split = load_split(tiny_data)
    with pytest.raises(ConfigError, match="holds no augmented views .* view='replay' needs"):
        StreamingDistillDataset(IDXDataset.from_split(split), plain.store, view="replay")
    _, url = _views_store(tmp_path, tiny_data)
    test_split = load_split(dataclasses.replace(tiny_data, split="test"))
    with pytest.raises(StoreMismatchError, match="test"):
        ViewData(test_split, url)


def test_ensemble_views_store_every_member_and_combine_at_any_t(tmp_path, tiny_data):
    teachers = [str(make_teacher(tmp_path / f"t{i}.pt", tiny_data, seed=i)) for i in range(2)]
    cfg = EnsembleLogitsConfig(data=tiny_data, teachers=tuple(teachers),
                               store=str(tmp_path / "e.zarr"), chunk_rows=16, device="cpu",
                               views=3, augment=AUG, view_seed=1)
    meta = write_ensemble_logits(cfg, progress=False)
    group = read_meta(cfg.store)[1]
    mv = group["member_view_logits"][:]  # (M, N, V, C)
    assert mv.shape == (2, 96, 3, 10) and meta.extra["views"]["views"] == 3
    np.testing.assert_array_equal(group["member_logits"][:], mv[:, :, 0])  # view 0
    split = load_split(tiny_data)
    spec = AugmentSpec.from_json(meta.extra["views"]["augment"])
    params = group["view_params"][:]
    for m, path in enumerate(teachers):  # each member re-run on each rebuilt view
        model = load_checkpoint(path).model.eval()
        for v in range(3):
            with torch.no_grad():
                z = model(apply_views(split.images, params[:, v], spec=spec)).numpy()
            np.testing.assert_array_equal(z.astype(np.float16), mv[m, :, v])
    for rule, t in (("arithmetic", 4.0), ("geometric", 2.0)):
        data = ViewData(split, cfg.store, temperature=t, rule=rule)
        assert data.log_probs and data.rule == rule
        idx = np.arange(10)
        v = data.draw_views(epoch=1, seed=0)[:10]
        want = ensemble.combine_log_probs(mv[:, idx, v].astype(np.float64), rule=rule,
                                          temperature=t)
        np.testing.assert_allclose(data.target(idx, v).numpy(), want, rtol=1e-6, atol=1e-6)
    m = train_student(StudentTrainConfig(data=tiny_data, store=cfg.store, hidden=(16,), epochs=1,
                                         temperature=4.0, combine="geometric"),
                      out_dir=str(tmp_path / "s"), progress=False)
    assert m["source"]["combine"] == {"rule": "geometric", "members": 2}
    with pytest.raises(ConfigError, match="cannot be combined with --store-combined-only"):
        EnsembleLogitsConfig(teachers=tuple(teachers), views=2, combine="geometric",
                             combined_only=True)
    (Path(cfg.store) / "member_view_logits" / "c" / "1" / "1" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"e.zarr': chunk 1 \(rows 16..31\) of "
                       r"'member_view_logits': rows \[16, 17, 18, 19, 20\] are missing or invalid"):
        ViewData(split, cfg.store, temperature=4.0)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("array", ["view_logits", "view_params"])
def test_a_damaged_view_chunk_is_named_by_every_loader(tmp_path, tiny_data, array):
    _, url = _views_store(tmp_path, tiny_data)
    _flip_a_byte(Path(url) / array / "c" / "1" / "0" / "0")
    line = (f"Error: StoreError: store '{url}': chunk 1 (rows 8..15) of '{array}' cannot be "
            "decoded, the stored bytes are damaged: Stored and computed crc32c checksum do not "
            "match.")
    outputs = set()
    for loader in (("--loader", "memory"), ("--loader", "stream", "--loader-workers", 0),
                   ("--loader", "stream", "--loader-workers", 2)):
        res = run_cli("student", "--dataset", "mnist", "--data-dir", tiny_data.data_dir,
                      "--store", url, "--hidden", 8, "--epochs", 1, "--out", tmp_path / "s",
                      "--quiet", *loader, ok=False)
        assert res.exit_code == 1 and res.output.startswith(line), res.output
        outputs.add(res.output)
    assert len(outputs) == 1 and outputs.pop().count("\n") == 1  # one line, the same each time


def test_a_deleted_view_chunk_is_reported_as_such_not_as_divergence(tmp_path, tiny_data):
    _, url = _views_store(tmp_path, tiny_data)
    (Path(url) / "view_logits" / "c" / "1" / "0" / "0").unlink()
    res = run_cli("student", "--dataset", "mnist", "--data-dir", tiny_data.data_dir, "--store",
                  url, "--hidden", 8, "--epochs", 1, "--out", tmp_path / "s", ok=False)
    assert res.exit_code == 1
    assert res.output == (f"Error: StoreError: store '{url}': chunk 1 (rows 8..15) of "
                          "'view_logits' is missing (c/1/0/0); the chunk was never written or "
                          "was deleted\n")


# --- mixup -------------------------------------------------------------------------------------

def test_mix_log_probs_by_hand() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    out = mix_log_probs(p.log(), torch.tensor([1, 0]), 0.25).exp()
    want = torch.tensor([[0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.2 + 0.75 * 0.1, 0.25 * 0.1 + 0.75 * 0.8],
                         [0.25 * 0.1 + 0.75 * 0.7, 0.25 * 0.1 + 0.75 * 0.2, 0.25 * 0.8 + 0.75 * 0.1]])
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(mix_log_probs(p.log(), torch.tensor([1, 0]), 1.0).exp(), p)


def test_mixup_mixes_inputs_labels_and_targets_with_one_coefficient() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.arange(6) % 3
    logits = torch.randn(6, 3, generator=g)
    clean = images.flatten(1).float() / 255  # (6, 16), as the student loop scales them
    mixup = Mixup(alpha=0.4, temperature=2.0, classes=3, seed=7)
    x, y, t = mixup(clean, labels, DenseTarget(2.0, logits=logits), epoch=0, step=1)
    x2, _, _ = mixup(clean, labels, DenseTarget(2.0, logits=logits), epoch=0, step=1)
    torch.testing.assert_close(x, x2)  # a function of (seed, epoch, step)
    assert not torch.allclose(x, mixup(clean, labels, None, epoch=0, step=2)[0])
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    p = torch.softmax(logits / 2.0, dim=1)
    # lam and the partner j of row 0 from its input (least squares over the candidates j)
    found = None
    for j in range(6):
        diff = clean[0] - clean[j]
        if diff.abs().max() < 1e-6:
            continue
        lam = float(((x[0] - clean[j]) @ diff) / (diff @ diff))
        if torch.allclose(x[0], lam * clean[0] + (1 - lam) * clean[j], atol=1e-5):
            found = (lam, j)
            break
    assert found is not None
    lam, j = found
    torch.testing.assert_close(y[0], lam * onehot[0] + (1 - lam) * onehot[j])
    assert t.temperature == 2.0 and t.logits is None
    torch.testing.assert_close(t.log_probs[0].exp(), lam * p[0] + (1 - lam) * p[j])
    assert not torch.allclose(x, clean)  # it did mix
    hard = mixup(clean, labels, None, epoch=0, step=1)  # hard labels only: the same mixing
    torch.testing.assert_close(hard[0], x)
    assert hard[2] is None
    with pytest.raises(ConfigError, match="mixup alpha must be > 0"):
        Mixup(alpha=0, temperature=1, classes=3, seed=0)
    with pytest.raises(ConfigError, match="mixup must be >= 0"):
        StudentTrainConfig(mixup=-1)
