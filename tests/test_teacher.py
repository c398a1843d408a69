import numpy as np
import pytest
import torch

from softtargets.config import LogitsConfig
from softtargets.datasets.idx_files import load_split
from softtargets.errors import IncompleteStoreError
from softtargets.recipes.hinton2015.models import ModelSpec, build, save_checkpoint
from softtargets.format.store import LogitStore, StoreWriter, read_meta
from softtargets.write.idx_teacher import prepare_model, resolve_device, write_chunks, write_teacher_logits


@pytest.fixture
def teacher(tiny_data, tmp_path):
    split = load_split(tiny_data)
    torch.manual_seed(0)
    spec = ModelSpec(hidden=(16,))
    model = build(spec)
    path = tmp_path / "t.pt"
    save_checkpoint(path, model=model, spec=spec, config={}, dataset=split.identity(),
                    class_names=split.class_names, metrics={})
    return split, model.eval(), str(path)


def test_overlapped_stage1_writes_the_models_logits(teacher, tiny_data, tmp_path):
    split, model, path = teacher
    cfg = LogitsConfig(data=tiny_data, teacher=path, store=str(tmp_path / "s.zarr"),
                       batch_size=7, chunk_rows=20, device="cpu")
    meta = write_teacher_logits(cfg, progress=False)
    assert meta.complete and meta.config["batch_size"] == 7
    ids, logits = LogitStore.open(cfg.store).read_all()
    with torch.no_grad():
        want = model(torch.from_numpy(split.inputs())).numpy().astype(np.float16)
    assert np.array_equal(ids, np.arange(96)) and np.array_equal(logits, want)


def new_writer(split, url):
    return StoreWriter.create(url, n=len(split), class_names=split.class_names,
                              dataset=split.identity(), teacher={}, config={}, chunk_rows=20)


def test_write_chunks_computes_only_the_chunks_asked_for(teacher, tmp_path):
    split, model, _ = teacher
    writer = new_writer(split, str(tmp_path / "s.zarr"))
    write_chunks(writer.chunk_slice, writer.write_chunk, model, split, [3, 0], batch_size=8,
                 device=torch.device("cpu"))
    assert writer.written == {0, 3}
    with pytest.raises(IncompleteStoreError, match=r"chunks \[1, 2, 4\]"):
        writer.finalize()


def test_writer_thread_error_propagates_and_never_finalizes(teacher, tiny_data, tmp_path,
                                                            monkeypatch):
    split, model, path = teacher
    original = StoreWriter.write_unit  # what a write session calls for each whole chunk/shard

    def failing(self, index, **kw):
        if index == 2:
            raise OSError("disk full while writing chunk 2")
        original(self, index, **kw)

    monkeypatch.setattr(StoreWriter, "write_unit", failing)
    cfg = LogitsConfig(data=tiny_data, teacher=path, store=str(tmp_path / "s.zarr"),
                       batch_size=8, chunk_rows=20, device="cpu")
    with pytest.raises(OSError, match="disk full while writing chunk 2"):
        write_teacher_logits(cfg, progress=False)
    assert read_meta(cfg.store)[0].complete is False


def test_forward_error_stops_the_writer(teacher, tmp_path):
    split, _, _ = teacher
    writer = new_writer(split, str(tmp_path / "s.zarr"))

    class Broken(torch.nn.Module):
        calls = 0

        def forward(self, x):
            Broken.calls += 1
            if Broken.calls == 4:
                raise RuntimeError("CUDA out of memory (simulated)")
            return torch.zeros(len(x), 10)

    with pytest.raises(RuntimeError, match="out of memory"):
        write_chunks(writer.chunk_slice, writer.write_chunk, Broken(), split,
                     range(writer.num_chunks), batch_size=10,
                     device=torch.device("cpu"))
    assert writer.written <= {0}


def test_channels_last_option_keeps_results(teacher):
    split, model, _ = teacher
    same = prepare_model(model, resolve_device("cpu"), channels_last=True)
    x = torch.from_numpy(split.inputs(slice(0, 5)))
    assert torch.equal(same(x), model(x))
