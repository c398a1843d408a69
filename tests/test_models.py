import pytest
import torch

from softtargets.errors import CheckpointError
from softtargets.recipes.hinton2015.models import (MLP, ModelSpec, apply_max_norm, load_checkpoint, save_checkpoint)


def test_mlp_shapes_and_layers():
    spec = ModelSpec(hidden=(1200, 1200), dropout=0.5, input_dropout=0.2)
    model = MLP(spec)
    assert spec.describe() == "mlp 784-1200-1200-10"
    assert model(torch.zeros(3, 28, 28)).shape == (3, 10)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(1200, 784), (1200, 1200), (10, 1200)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 3


def test_max_norm_caps_each_units_incoming_weights():
    model = MLP(ModelSpec(hidden=(8,), classes=3, inputs=4))
    with torch.no_grad():
        model.net[0].weight.copy_(torch.tensor([[3.0, 4.0, 0, 0]] * 8))  # norm 5
        model.net[0].weight[0] = torch.tensor([0.3, 0.4, 0, 0])  # norm 0.5, untouched
    apply_max_norm(model, 2.0)
    norms = model.net[0].weight.norm(dim=1)
    assert norms[0].item() == pytest.approx(0.5)
    assert torch.allclose(norms[1:], torch.full((7,), 2.0))
    assert torch.allclose(model.net[0].weight[1], torch.tensor([1.2, 1.6, 0, 0]))


def _save(path, spec, **kw):
    return save_checkpoint(path, model=MLP(spec), spec=spec, config={"seed": 0},
                           dataset={"name": "mnist"}, class_names=tuple("abcdefghij"[:spec.classes]),
                           metrics={}, **kw)


def test_checkpoint_round_trip(tmp_path):
    spec = ModelSpec(hidden=(16,), classes=10)
    sha = _save(tmp_path / "t.pt", spec)
    ck = load_checkpoint(tmp_path / "t.pt", expect_classes=10)
    assert ck.spec == spec and ck.sha256 == sha and sha.startswith("sha256:")
    assert not ck.model.training and ck.dataset == {"name": "mnist"}


def test_wrong_class_count(tmp_path):
    _save(tmp_path / "t.pt", ModelSpec(hidden=(16,), classes=5))
    with pytest.raises(CheckpointError, match="predicts 5 classes but the dataset has 10"):
        load_checkpoint(tmp_path / "t.pt", expect_classes=10)


def test_weights_of_another_architecture(tmp_path):
    spec = ModelSpec(hidden=(16,))
    _save(tmp_path / "t.pt", spec)
    payload = torch.load(tmp_path / "t.pt", weights_only=True)
    payload["model"]["hidden"] = [32]  # claims another width than its weights have
    torch.save(payload, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="weights do not fit architecture mlp 784-32-10"):
        load_checkpoint(tmp_path / "t.pt")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found; train one"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="is not a softtargets checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"'.*junk.pt' is not a softtargets or torch "
                       r"checkpoint: the safe loader \(weights only\) cannot read it"):
        load_checkpoint(tmp_path / "junk.pt")


def test_random_bytes_and_pickles_are_not_checkpoints_and_never_loaded_unsafely(tmp_path):
    import pickle
    import random
    import warnings
    (tmp_path / "r.pt").write_bytes(random.Random(0).randbytes(4000))
    (tmp_path / "p.pt").write_bytes(pickle.dumps(object, protocol=4))
    for name in ("r.pt", "p.pt"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's pickle-protocol warning is not shown either
            with pytest.raises(CheckpointError) as info:
                load_checkpoint(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"'{tmp_path / name}' is not a softtargets or torch checkpoint: "
                                  "the safe loader (weights only) cannot read it (Unpickling")
        assert message.endswith("; pass a checkpoint written by `softtargets train-teacher`")
        assert "False" not in message and "\n" not in message


def test_cnn_teacher_shapes_round_trip_and_bad_specs(tmp_path):
    from softtargets.recipes.hinton2015.models import build
    spec = ModelSpec(arch="cnn", hidden=(4, 8, 16), dropout=0.2)
    model = build(spec).eval()
    assert spec.describe() == "cnn 784-4-8-16-10"
    x = torch.rand(5, 784)
    assert model(x).shape == (5, 10)
    torch.testing.assert_close(model(x), model(x.reshape(5, 1, 28, 28)))  # flat or image input
    assert model.net[-1].out_features == 10  # the output layer, as for MLPs (bias shift)
    save_checkpoint(tmp_path / "c.pt", model=model, spec=spec, config={}, dataset={},
                    class_names=tuple("abcdefghij"), metrics={})
    again = load_checkpoint(tmp_path / "c.pt").model.eval()
    torch.testing.assert_close(again(x), model(x))
    with pytest.raises(CheckpointError, match=r"hidden=\(c1, c2, fc\)"):
        build(ModelSpec(arch="cnn", hidden=(4, 8)))
    with pytest.raises(CheckpointError, match=r"unknown architecture 'rnn'; allowed: \['mlp', 'cnn'\]"):
        build(ModelSpec(arch="rnn"))
