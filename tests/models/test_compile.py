"""``model.compile`` compiles the named submodules in place: same losses, same
parameter names (checkpoints, LoRA targets), clear errors for a wrong name."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from vlft.common.config import Config, ConfigError
from vlft.models import load_model
from vlft.models.adapters import apply_finetuning, compile_modules
from tests.helpers import REPO

SAMPLES = {"image": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
           "text_input": ["a red circle", "a blue square to the left of a green triangle"]}


def test_compiled_vision_tower_gives_the_same_loss_and_names():
    torch._dynamo.reset()
    torch.manual_seed(0)
    plain = load_model("blip_caption", "tiny").eval()
    compiled = copy.deepcopy(plain)
    # the "eager" backend: dynamo traces and runs the graph without generating code (seconds, no compiler)
    compile_modules(compiled, OmegaConf.create({"modules": ["blip.vision_model"], "backend": "eager"}))
    assert compiled.blip.vision_model._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert torch.allclose(compiled(SAMPLES)["loss"], plain(SAMPLES)["loss"], atol=1e-6)


def test_compile_errors_name_the_module_and_the_option():
    model = load_model("blip_caption", "tiny")
    with pytest.raises(ConfigError, match="no module 'blip.vision_modle'.*did you mean 'blip.vision_model'"):
        compile_modules(model, ["blip.vision_modle"])
    with pytest.raises(ConfigError, match="unknown key model.compile.moude; did you mean 'mode'"):
        compile_modules(model, {"modules": ["blip.vision_model"], "moude": "max-autotune"})


def test_the_config_key_reaches_the_model():
    from vlft.common.registry import registry

    torch._dynamo.reset()
    cfg = Config.from_file(str(REPO / "projects" / "demo" / "caption_shapes.yaml"),
                           options=["model.compile={modules: [blip.vision_model], backend: eager}"])
    model = apply_finetuning(registry.get_model_class("blip_caption").from_config(cfg.model_cfg), cfg.model_cfg)
    assert model.blip.vision_model._compiled_call_impl is not None
