import hashlib

import pytest
import torch

from softtargets.errors import CheckpointError
from softtargets.torchfiles import file_sha256, safe_load, save_atomic


def test_save_atomic_writes_the_file_whole_and_leaves_no_partial(tmp_path):
    path = save_atomic({"w": torch.arange(3.0)}, tmp_path / "deep" / "state.pt")
    assert path == tmp_path / "deep" / "state.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]
    assert torch.equal(safe_load(path, fix="")["w"], torch.tensor([0.0, 1.0, 2.0]))
    save_atomic({"w": torch.zeros(1)}, path)  # replaces the old file
    assert torch.equal(safe_load(path, fix="")["w"], torch.zeros(1))


def test_safe_load_refuses_in_one_line_with_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*gone.pt' not found; train one first$"):
        safe_load(tmp_path / "gone.pt", fix="train one first")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a pickle")
    with pytest.raises(CheckpointError) as e:
        safe_load(tmp_path / "junk.pt", fix="pass another file")
    assert "\n" not in str(e.value) and str(e.value).endswith("; pass another file")
    assert "weights_only=False" not in str(e.value)


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(tmp_path / "f") == ("sha256:ba7816bf8f01cfea414140de5dae2223"
                                           "b00361a396177a9cb410ff61f20015ad")
