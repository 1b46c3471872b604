import os

import pytest
import torch
from safetensors.torch import save_file

from vlft.runners import checkpoint as ckpt_io
from tests.helpers import toy_plugin

ToyRegressor = toy_plugin().ToyRegressor


def test_atomic_save_keeps_the_old_file_when_a_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth"
    ckpt_io.atomic_save({"model": {"w": torch.ones(2)}}, path)

    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.atomic_save({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(ckpt_io.read(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]  # no temporary left behind


def test_trainable_only_checkpoint_loads_on_top_of_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    trained = ToyRegressor(frozen_encoder=True)
    state = ckpt_io.model_state(trained)
    assert not any(k.startswith("encoder.") for k in state)  # frozen weights are not saved
    assert "head.weight" in state and "norm.bias" in state
    ckpt_io.atomic_save({"model": state}, tmp_path / "c.pth")

    torch.manual_seed(1)
    pretrained = ToyRegressor(frozen_encoder=True)  # stands for "loaded from the hub"
    encoder_before = pretrained.encoder[0].weight.clone()
    missing, unexpected = pretrained.load_checkpoint(tmp_path / "c.pth")
    assert torch.equal(pretrained.encoder[0].weight, encoder_before)  # LAVIS #153: not clobbered
    assert torch.equal(pretrained.head.weight, trained.head.weight)
    assert set(missing) == {"encoder.0.weight", "encoder.0.bias"} and unexpected == []


def test_wrong_checkpoint_is_refused_with_a_reason(tmp_path):
    model = ToyRegressor()
    with pytest.raises(KeyError, match="lacks"):
        ckpt_io.load_model_weights(model, {"model": {"visual_encoder.cls_token": torch.zeros(1)}})
    with pytest.raises(ValueError, match="head.weight: checkpoint"):
        ckpt_io.load_model_weights(model, {"head.weight": torch.zeros(3, 3)})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt_io.read(tmp_path / "missing.pth")


def test_only_weights_only_loadable_files_are_accepted(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": {}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(RuntimeError, match="weights-only"):
        ckpt_io.read(tmp_path / "evil.pth")


def test_safetensors_and_lavis_wrapped_files_load(tmp_path):
    model = ToyRegressor()
    save_file({"head.weight": torch.full((1, 16), 2.0)}, str(tmp_path / "w.safetensors"))
    ckpt_io.load_model_weights(model, tmp_path / "w.safetensors")
    assert torch.all(model.head.weight == 2.0)
    torch.save({"model": {"head.bias": torch.tensor([3.0])}}, tmp_path / "lavis.pth")
    ckpt_io.load_model_weights(model, tmp_path / "lavis.pth")
    assert model.head.bias.item() == 3.0
