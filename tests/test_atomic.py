import json

import pytest

from softtargets.atomic import replacing, write_json


def test_write_json_writes_whole_file_and_makes_its_folder(tmp_path):
    path = write_json(tmp_path / "a" / "m.json", {"x": [1, 2]}, indent=1)
    assert path.read_text(encoding="utf-8") == '{\n "x": [\n  1,\n  2\n ]\n}\n'
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]


def test_replacing_renames_over_the_old_file(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"old")
    with replacing(path) as tmp:
        assert tmp == tmp_path / "t.bin.partial"
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not replaced before the block ends
    assert path.read_bytes() == b"new"
    assert not tmp.exists()


def test_replacing_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="half"):
        with replacing(path) as tmp:
            tmp.write_bytes(b"ha")
            raise ValueError("half written")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


def test_write_json_refuses_unserialisable_and_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(tmp_path / "m.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []
