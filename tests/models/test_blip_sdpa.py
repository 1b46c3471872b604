"""``model.attn_implementation: sdpa`` computes BLIP's attention with one SDPA call:
the same losses (within 1e-6 in fp32), gradients and captions as transformers' eager
attention."""
import copy

import pytest
import torch
from transformers.models.blip.modeling_blip import BlipAttention

from vlft.common.config import Config, ConfigError
from vlft.models import load_model
from vlft.models.blip.sdpa import SdpaBlipAttention, SdpaBlipTextSelfAttention, set_blip_attention
from tests.helpers import REPO

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TEXTS = ["a red circle to the left of a blue square", "a green triangle", "a blue square above a red circle"]
SAMPLES = {
    "blip_caption": {"image": IMAGES, "text_input": TEXTS},
    "blip_vqa": {"image": IMAGES, "text_input": ["what colour?", "which shape?", "is it left?"],
                 "answer": ["red", "triangle", "yes"], "weight": torch.ones(3), "n_answers": torch.ones(3, dtype=torch.long)},
    "blip_retrieval": {"image": IMAGES, "text_input": TEXTS, "image_id": torch.arange(3)},
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_sdpa_gives_the_eager_loss_and_gradients(name):
    torch.manual_seed(0)
    eager = load_model(name, "tiny").eval()  # eval: dropout off, so both compute one function
    sdpa = copy.deepcopy(eager)
    assert set_blip_attention(sdpa, "sdpa") > 0
    losses, grads = [], []
    for model in (eager, sdpa):
        torch.manual_seed(1)
        loss = model(SAMPLES[name])["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert abs(losses[0] - losses[1]) < 1e-6, losses
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:  # relative: a random tiny retrieval model has gradients of order 1e9
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6), n


def test_sdpa_captions_equal_eager_and_the_swap_goes_back():
    torch.manual_seed(0)
    eager = load_model("blip_caption", "tiny", is_eval=True)
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # spread, so that images get different captions
    sdpa = copy.deepcopy(eager)
    set_blip_attention(sdpa, "sdpa")
    kinds = {type(m) for m in sdpa.modules()}
    assert SdpaBlipAttention in kinds and SdpaBlipTextSelfAttention in kinds
    for beams in (1, 3):
        ours = sdpa.generate({"image": IMAGES}, num_beams=beams, max_length=12, min_length=2)
        assert ours == eager.generate({"image": IMAGES}, num_beams=beams, max_length=12, min_length=2)
    set_blip_attention(sdpa, "eager")
    assert BlipAttention in {type(m) for m in sdpa.modules()} and SdpaBlipAttention not in {type(m) for m in sdpa.modules()}


def test_the_config_key_reaches_the_model_and_is_validated(tmp_path):
    from vlft.models.adapters import apply_finetuning
    from vlft.common.registry import registry

    project = str(REPO / "projects" / "demo" / "caption_shapes.yaml")
    cfg = Config.from_file(project, options=["model.attn_implementation=sdpa"])
    model = apply_finetuning(registry.get_model_class("blip_caption").from_config(cfg.model_cfg), cfg.model_cfg)
    assert any(isinstance(m, SdpaBlipAttention) for m in model.modules())
    with pytest.raises(ConfigError, match="model.attn_implementation must be one of eager, sdpa, got 'flash'"):
        Config.from_file(project, options=["model.attn_implementation=flash"])
