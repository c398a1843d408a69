"""Any user's teacher: TorchScript, torch.export archives, module:factory + state dict, transforms."""

import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from softtargets.datasets.idx_files import load_split
from softtargets.errors import CheckpointError, ConfigError
from softtargets.format.store import LogitStore
from softtargets.write.teachers import detect_kind, import_object, load_teacher

from conftest import run_cli as run

# torch 2.13 deprecates TorchScript but still loads it; users still have such files
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    def cnn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 5, stride=3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, 10))

    def seven():
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))

    def not_a_module():
        return 3

    def to_image(x):
        return x.view(-1, 1, 28, 28)

    def three_d(x):
        return x.view(-1, 1, 784)
""")


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "st_user_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("st_user_nets", None)
    import st_user_nets
    return st_user_nets


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


def stage1(tiny_data, tmp_path, *teacher_args, ok=True):
    return run("teacher-logits", "--dataset", "mnist", "--data-dir", tiny_data.data_dir,
               "--store", tmp_path / "s.zarr", "--quiet", "--overwrite", *teacher_args, ok=ok)


def expected(model, tiny_data, transform=lambda x: x):
    with torch.no_grad():
        x = torch.from_numpy(load_split(tiny_data).inputs())
        return model(transform(x)).numpy().astype(np.float16)


def test_torchscript_teacher(tiny_data, tmp_path):
    model = mlp()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.ts")
    assert detect_kind(str(tmp_path / "m.ts"), None) == "torchscript"
    stage1(tiny_data, tmp_path, "--teacher", tmp_path / "m.ts")
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    np.testing.assert_array_equal(store.read_all()[1], expected(model, tiny_data))
    t = store.meta.teacher
    assert t["kind"] == "torchscript" and t["checkpoint_sha256"].startswith("sha256:")
    assert "ensemble" not in store.meta.extra and store.meta.version == 1


def test_export_archive_teacher(tiny_data, tmp_path):
    model = mlp()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.zeros(4, 784),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "m.pt2")
    stage1(tiny_data, tmp_path, "--teacher", tmp_path / "m.pt2", "--batch-size", 40)
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    np.testing.assert_allclose(store.read_all()[1].astype(np.float32),
                               expected(model, tiny_data).astype(np.float32), atol=2e-3)
    assert store.meta.teacher["kind"] == "export"


def test_factory_with_state_dict_and_transform(tiny_data, tmp_path, nets):
    model = nets.cnn().eval()
    torch.save(model.state_dict(), tmp_path / "cnn.pt")
    stage1(tiny_data, tmp_path, "--teacher", tmp_path / "cnn.pt", "--factory",
           "st_user_nets:cnn", "--transform", "st_user_nets:to_image")
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    np.testing.assert_allclose(store.read_all()[1].astype(np.float32),
                               expected(model, tiny_data, nets.to_image).astype(np.float32),
                               atol=1e-3)
    t = store.meta.teacher
    assert t["kind"] == "factory" and t["factory"] == "st_user_nets:cnn"
    assert t["transform"] == "st_user_nets:to_image"


def test_ensemble_of_different_kinds(tiny_data, tmp_path, nets):
    model = mlp()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.ts")
    stage1(tiny_data, tmp_path, "--teacher", tmp_path / "m.ts", "--teacher", tmp_path / "m.ts")
    store = LogitStore.open(str(tmp_path / "s.zarr"))
    assert [m["kind"] for m in store.meta.extra["ensemble"]["members"]] == ["torchscript"] * 2


def test_wrong_output_shape_or_class_count(tiny_data, tmp_path, nets):
    torch.save(nets.seven().state_dict(), tmp_path / "seven.pt")
    res = stage1(tiny_data, tmp_path, "--teacher", tmp_path / "seven.pt", "--factory",
                 "st_user_nets:seven", ok=False)
    assert res.exit_code == 1 and "predicts 7 classes but dataset mnist has 10" in res.output
    model = mlp()
    torch.jit.save(torch.jit.script(model), tmp_path / "m.ts")
    res = stage1(tiny_data, tmp_path, "--teacher", tmp_path / "m.ts", "--transform",
                 "st_user_nets:three_d", ok=False)
    assert res.exit_code == 1
    assert "returned (2, 1, 10) for a batch of 2; a teacher must return logits of shape " \
           "(batch, C)" in res.output
    torch.save(nets.cnn().state_dict(), tmp_path / "cnn.pt")  # a CNN fed flat inputs
    res = stage1(tiny_data, tmp_path, "--teacher", tmp_path / "cnn.pt", "--factory",
                 "st_user_nets:cnn", ok=False)
    assert res.exit_code == 1 and "failed on a batch of 2 inputs (2, 784)" in res.output


def test_bad_factory_and_transform_references(tiny_data, tmp_path, nets):
    torch.save(mlp().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="must be 'module:name'"):
        import_object("no_colon", what="--factory")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_mod_x'"):
        load_teacher(str(tmp_path / "w.pt"), factory="no_such_mod_x:f")
    with pytest.raises(ConfigError, match="returned int, not an nn.Module"):
        load_teacher(str(tmp_path / "w.pt"), factory="st_user_nets:not_a_module")
    with pytest.raises(CheckpointError, match="does not fit the module built by"):
        load_teacher(str(tmp_path / "w.pt"), factory="st_user_nets:cnn")
    torch.save(nets.cnn().state_dict(), tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="--transform 'st_user_nets:nope': module "
                                          "'st_user_nets' has no 'nope'"):
        load_teacher(str(tmp_path / "c.pt"), factory="st_user_nets:cnn",
                     transform="st_user_nets:nope")
    with pytest.raises(CheckpointError, match="not found"):
        load_teacher(str(tmp_path / "missing.pt"))
