"""MiniGPT4-Qwen weights: the reference's get_lora (its key names) and the generic
model.peft both save -> load -> merge with equal losses; the export reloads from its own
model.yaml; a released MiniGPT4Qwen / LAVIS BLIP-2 .pth loads by key map with a report."""
from __future__ import annotations

import tests.helpers  # noqa: F401

import pytest
import torch
from omegaconf import OmegaConf

from tests.models.test_minigpt4qwen import build, chat_batch
from vlft.runners.checkpoint import atomic_save, model_state


def perturb(model, names=None):
    """Move the trainable (or the named) weights off their initialisation, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (p.requires_grad if names is None else any(name.startswith(n) for n in names)):
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


def loss(model, batch=None):
    model.eval()
    with torch.no_grad():
        return model(batch or chat_batch())["loss"]


def test_get_lora_keeps_the_reference_names_saves_loads_and_merges(tmp_path):
    from vlft.chat import load_chat_model

    lora = build(get_lora=True)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert {"llm_proj.weight", "llm_proj.bias",
            "llm_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"} <= trainable
    assert all(n.startswith("llm_proj.") or ".lora_" in n for n in trainable)
    perturb(lora)
    path = atomic_save({"model": model_state(lora)}, tmp_path / "ckpt.pth")
    fresh = build(get_lora=True)
    fresh.load_checkpoint(str(path))
    assert torch.equal(loss(fresh), loss(lora))

    out = lora.save_hf(str(tmp_path / "export"))
    assert (out / "llm_adapter" / "adapter_config.json").is_file() and (out / "visual.safetensors").is_file()
    merged, _ = load_chat_model(str(out / "model.yaml"))
    assert not hasattr(merged.llm_model, "peft_config")
    assert torch.allclose(loss(merged), loss(lora), atol=1e-5)
    kept, _ = load_chat_model(str(lora.save_hf(str(tmp_path / "unmerged"), merge_lora=False) / "model.yaml"))
    assert hasattr(kept.llm_model, "peft_config") and torch.equal(loss(kept), loss(lora))


def test_generic_peft_exports_adapter_and_merged_model(tmp_path):
    from vlft.chat import load_chat_model
    from vlft.models.adapters import apply_finetuning, export

    peft = {"peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}}
    model = apply_finetuning(build(), OmegaConf.create(peft))
    perturb(model)
    paths = export(model, tmp_path)
    assert (paths["adapter"] / "adapter_config.json").is_file()
    merged, _ = load_chat_model(str(paths["hf_model"] / "model.yaml"))
    assert torch.allclose(loss(merged), loss(model), atol=1e-5)


def test_released_checkpoint_and_lavis_blip2_names_load_with_a_report(tmp_path, caplog):
    from vlft.models.convert.minigpt4qwen import to_reference_checkpoint

    source = build()
    perturb(source, ["qformer.", "query_tokens", "vision_model.post_layernorm", "llm_proj."])
    reference = to_reference_checkpoint({k: v for k, v in source.state_dict().items() if not k.startswith("llm_model.")})
    assert {"Qformer.bert.encoder.layer.0.attention.self.query.weight", "ln_vision.weight", "query_tokens",
            "llm_proj.weight", "visual_encoder.blocks.0.attn.q_bias"} <= set(reference)
    extra = {"t5_proj.weight": torch.zeros(4, 32), "Qformer.bert.embeddings.word_embeddings.weight": torch.zeros(8, 32)}
    path = atomic_save({"model": {**reference, **extra}, "epoch": 3}, tmp_path / "minigpt4qwen_released.pth")

    fresh = build()
    with caplog.at_level("INFO"):
        missing, unexpected = fresh.load_checkpoint(str(path))
    assert set(unexpected) == {"language_projection.weight", "embeddings.word_embeddings.weight"}  # no place here
    assert missing and all(k.startswith("llm_model.") for k in missing)  # the frozen LLM keeps its weights
    assert "by module" in caplog.text
    own, want = fresh.state_dict(), source.state_dict()
    for key in ("qformer.encoder.layer.0.attention.attention.query.weight", "query_tokens", "llm_proj.weight",
                "vision_model.post_layernorm.weight", "vision_model.encoder.layers.1.self_attn.qkv.bias"):
        assert torch.equal(own[key], want[key]), key
    assert torch.equal(loss(fresh), loss(source))

    # the same file as `pretrained` (LAVIS's BLIP-2 checkpoint) in the model section
    again = build(load_pretrained=True, pretrained=str(path))
    assert torch.equal(again.state_dict()["query_tokens"], want["query_tokens"])


def test_reference_lora_keys_need_get_lora(tmp_path):
    lora = build(get_lora=True)
    perturb(lora)
    state = model_state(lora)
    assert any(k.startswith("llm_model.base_model.model.") and ".lora_B." in k for k in state)
    path = atomic_save({"model": state}, tmp_path / "lora.pth")
    with pytest.raises(ValueError, match=r"LoRA weights on \['q_proj', 'v_proj'\].*get_lora: true"):
        build().load_checkpoint(str(path))
    again = build(get_lora=True, load_finetuned=True, finetuned=str(path))  # loaded after LoRA is added
    assert torch.equal(loss(again), loss(lora))
