"""The BLIP-2 image encoders (``vlft.models.eva_vit``): configs, freezing, precision and
gradient checkpointing, on the tiny encoder."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import copy
import logging

import pytest
import torch
from torch import nn
from transformers import Blip2VisionModel

from vlft.models.eva_vit import VISION_ENCODERS, Fp32LayerNorm, prepare_vision_encoder, vision_config


def tiny_vit(seed: int = 0) -> Blip2VisionModel:
    torch.manual_seed(seed)
    vit = Blip2VisionModel(vision_config("tiny"))
    with torch.no_grad():  # HF initialises the q/v biases to 0; make them matter
        for layer in vit.encoder.layers:
            layer.self_attn.qkv.bias.normal_()
            layer.self_attn.qkv.bias[32:64] = 0
    return vit


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_eva_clip_g_numbers():
    cfg = vision_config("eva_clip_g")  # the config only: ViT-g itself is 1B parameters
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (1408, 39, 16, 6144)
    assert (cfg.patch_size, cfg.image_size, cfg.layer_norm_eps, cfg.hidden_act, cfg.qkv_bias) == (14, 224, 1e-6, "gelu", True)
    assert vision_config("eva_clip_g", 364).image_size == 364
    assert vision_config("eva_clip_g", image_size=224, attention_dropout=0.1).attention_dropout == 0.1


def test_clip_l_and_tiny_numbers():
    clip = vision_config("clip_L")
    assert (clip.hidden_size, clip.num_hidden_layers, clip.num_attention_heads, clip.intermediate_size) == (1024, 23, 16, 4096)
    assert (clip.patch_size, clip.layer_norm_eps) == (14, 1e-5)
    tiny = vision_config("tiny")
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads, tiny.intermediate_size) == (32, 2, 4, 64)
    assert (tiny.patch_size, tiny.image_size) == (8, 32)


def test_unknown_encoder_names_nearest_first():
    with pytest.raises(KeyError, match=r"'eva_clip'.*\['eva_clip_g'") as err:
        vision_config("eva_clip")
    for name in VISION_ENCODERS:
        assert name in str(err.value)


def test_tiny_forward_shapes():
    out = tiny_vit().eval()(pixels(3))
    assert out.last_hidden_state.shape == (3, 1 + 16, 32)  # [CLS] + (32/8)^2 patches
    assert out.pooler_output.shape == (3, 32)


def test_freeze_leaves_post_layernorm_trainable_and_stays_in_eval():
    vit = tiny_vit()
    prepare_vision_encoder(vit, freeze_vit=True, vit_precision="fp32")
    assert sorted(n for n, p in vit.named_parameters() if p.requires_grad) == ["post_layernorm.bias", "post_layernorm.weight"]
    outer = nn.ModuleDict({"vit": vit, "head": nn.Linear(32, 2)})
    outer.train()
    assert outer.training and outer["head"].training
    assert not any(m.training for m in vit.modules())
    clone = copy.deepcopy(outer).train()  # the override follows a copy, bound to the copy
    assert not clone["vit"].training and clone["head"].training
    assert vit._vlft_frozen


def test_precision_is_validated():
    with pytest.raises(ValueError, match=r"vit_precision.*'fp8'"):
        prepare_vision_encoder(tiny_vit(), vit_precision="fp8")


def test_bf16_frozen_forward_is_fp32_and_backward_reaches_later_layers():
    reference = tiny_vit().eval()
    vit = tiny_vit()
    keys = list(vit.state_dict())
    prepare_vision_encoder(vit, freeze_vit=True, vit_precision="bf16")
    assert list(vit.state_dict()) == keys  # the LayerNorm class swap keeps the names
    assert isinstance(vit.post_layernorm, Fp32LayerNorm)
    assert vit.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert vit.encoder.layers[1].mlp.fc2.weight.dtype == torch.bfloat16
    assert vit.post_layernorm.weight.dtype == torch.float32

    head = nn.Linear(32, 2)
    x = pixels()  # fp32: the patch embedding casts it to its own dtype
    features = vit(x).last_hidden_state
    assert features.dtype == torch.float32
    with torch.no_grad():
        expected = reference(x).last_hidden_state
    assert torch.allclose(features, expected, atol=0.15), (features - expected).abs().max()
    head(features).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert vit.post_layernorm.weight.grad is not None and vit.post_layernorm.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in vit.named_parameters() if not n.startswith("post_layernorm."))


def test_trainable_vit_stays_fp32_with_a_warning(caplog):
    vit = tiny_vit()
    with caplog.at_level(logging.WARNING, logger="vlft.models.eva_vit"):
        prepare_vision_encoder(vit, freeze_vit=False, vit_precision="fp16")
    assert "stays fp32" in caplog.text
    assert all(p.dtype == torch.float32 and p.requires_grad for p in vit.parameters())
    vit.train()
    assert vit.training


def _forward_backward(vit: Blip2VisionModel, x: torch.Tensor):
    calls = []
    # checkpointing wraps the block's forward, so its submodules' (pre-)hooks see the
    # recompute (a forward hook may not: the recompute stops once it has what backward needs)
    hook = vit.encoder.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    out = vit(x).last_hidden_state
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    hook.remove()
    return out.detach(), {n: p.grad.clone() for n, p in vit.named_parameters()}, len(calls)


def test_grad_checkpointing_matches_plain_backward():
    plain, checkpointed = tiny_vit(), tiny_vit()
    prepare_vision_encoder(plain, freeze_vit=False, vit_precision="fp32")
    prepare_vision_encoder(checkpointed, freeze_vit=False, vit_precision="fp32", use_grad_checkpoint=True)
    assert checkpointed.encoder.gradient_checkpointing and not plain.encoder.gradient_checkpointing
    x = pixels()
    out_a, grads_a, calls_a = _forward_backward(plain.train(), x)
    out_b, grads_b, calls_b = _forward_backward(checkpointed.train(), x)
    assert (calls_a, calls_b) == (1, 2)  # checkpointing re-runs the block in backward
    assert torch.allclose(out_a, out_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6), name
