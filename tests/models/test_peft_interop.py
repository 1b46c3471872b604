"""LoRA adapters that vlft exports load with plain transformers + peft, as a user does:
``PeftModel.from_pretrained(<transformers class>.from_pretrained(<run>/hf_base), <run>/adapter)``
with no "missing adapter keys" warning and the logits of vlft's model (BLIP caption / VQA,
BLIP-2 OPT / T5 and their LLMs alone, MiniGPT4-Qwen's LLM; Florence-2 is in
test_florence2_lora.py)."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import json
import logging
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from vlft.models.adapters import apply_finetuning, base_model, export

IDS = torch.tensor([[2, 5, 7, 9, 11, 4], [2, 6, 8, 10, 3, 1]])


def tiny(cls, model_type: str = "tiny", **overrides):
    torch.manual_seed(0)
    return cls.from_config(OmegaConf.merge(OmegaConf.load(cls.default_config_path(model_type)).model, overrides))


def with_lora(model, targets, **extra):
    """``model.peft`` as the config writes it, then LoRA B moved off 0 as training would."""
    cfg = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets, **extra}
    model = apply_finetuning(model, OmegaConf.create({"peft": cfg}))
    perturb(model)
    return model.eval()


def perturb(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def plain_peft(base, adapter):
    """PeftModel.from_pretrained, failing on the warning a mismatched adapter gives."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    return model


def pixels(n=2, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_blip_caption_adapter_loads_on_blip_for_conditional_generation(tmp_path):
    from transformers import BlipForConditionalGeneration

    from vlft.models.blip.blip_caption import BlipCaption

    model = with_lora(tiny(BlipCaption), ["qkv", "query", "value"])
    out = export(model, tmp_path)
    assert set(out) == {"adapter", "hf_base", "hf_model"}
    saved = json.loads((out["adapter"] / "adapter_config.json").read_text())
    assert saved["auto_mapping"]["base_model_class"] == "BlipForConditionalGeneration"
    assert saved["base_model_name_or_path"] == str(tmp_path / "hf_base")
    assert "BlipForConditionalGeneration.from_pretrained" in (out["adapter"] / "README.md").read_text()

    blip = base_model(model).blip
    text = base_model(model).tokenize(["a red circle", "a blue square left of a circle"])
    inputs = dict(pixel_values=pixels(), input_ids=text.input_ids, attention_mask=text.attention_mask)
    plain = plain_peft(BlipForConditionalGeneration.from_pretrained(out["hf_base"]), out["adapter"])
    with torch.no_grad():
        expected = blip(**inputs).logits
        close(plain(**inputs).logits, expected)
        untouched = BlipForConditionalGeneration.from_pretrained(out["hf_base"]).eval()
        assert not torch.allclose(untouched(**inputs).logits, expected, atol=1e-3)  # the adapter matters
        merged = BlipForConditionalGeneration.from_pretrained(out["hf_model"]).eval()
        close(merged(**inputs).logits, expected)


def test_blip_vqa_adapter_with_modules_to_save_loads_on_blip_for_question_answering(tmp_path):
    from transformers import BlipForQuestionAnswering

    from vlft.models.blip.blip_vqa import BlipVqa

    model = with_lora(tiny(BlipVqa), ["qkv", "query"], modules_to_save=["projection"])
    out = export(model, tmp_path)
    saved = json.loads((out["adapter"] / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["projection"] and saved["target_modules"] == ["qkv", "query"]
    plain = plain_peft(BlipForQuestionAnswering.from_pretrained(out["hf_base"]), out["adapter"])
    ours, theirs = base_model(model).blip, plain.base_model.model
    ids, mask = IDS % 40, torch.ones_like(IDS)
    with torch.no_grad():
        vision = [m.vision_model(pixel_values=pixels()).last_hidden_state for m in (ours, theirs)]
        close(vision[1], vision[0])
        encoded = [m.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=v).last_hidden_state
                   for m, v in zip((ours, theirs), vision)]
        close(encoded[1], encoded[0])
        logits = [m.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=e).logits
                  for m, e in zip((ours, theirs), encoded)]
        close(logits[1], logits[0])


@pytest.mark.parametrize("arch, targets", [("blip2_opt", ["q_proj", "v_proj", "qkv", "query"]),
                                           ("blip2_t5", ["q", "v", "qkv", "query"])])
def test_blip2_adapters_load_on_blip2_and_on_its_llm_alone(tmp_path, arch, targets):
    from transformers import Blip2ForConditionalGeneration

    from vlft.common.registry import registry

    # transformers runs post_layernorm at layer_norm_eps: give vlft's ViT that value (vlft.models.eva_vit)
    model = with_lora(tiny(registry.get_model_class(arch), vision_config={"post_layernorm_eps": 1e-6}), targets)
    out = export(model, tmp_path)
    assert {"adapter", "adapter_llm", "hf_base", "hf_model"} == set(out)
    llm_cfg = json.loads((out["adapter_llm"] / "adapter_config.json").read_text())
    assert llm_cfg["target_modules"] == sorted(targets[:2])  # only the LLM's layers
    assert ".language_model" in (out["adapter_llm"] / "README.md").read_text()

    ours = base_model(model).blip2
    vocab = ours.language_model.get_input_embeddings().num_embeddings  # the export may add an <image> row
    lm_inputs = dict(input_ids=IDS % vocab, attention_mask=torch.ones_like(IDS))
    if arch == "blip2_t5":
        lm_inputs["decoder_input_ids"] = IDS[:, :3] % vocab
    whole = plain_peft(Blip2ForConditionalGeneration.from_pretrained(out["hf_base"]), out["adapter"]).base_model.model
    llm = plain_peft(Blip2ForConditionalGeneration.from_pretrained(out["hf_base"]).language_model, out["adapter_llm"])
    with torch.no_grad():
        expected = ours.language_model(**lm_inputs).logits
        close(llm(**lm_inputs).logits[..., :vocab], expected)
        close(whole.language_model(**lm_inputs).logits[..., :vocab], expected)
        vision = ours.vision_model(pixel_values=pixels()).last_hidden_state
        close(whole.vision_model(pixel_values=pixels()).last_hidden_state, vision)
        query = ours.query_tokens.expand(2, -1, -1)
        close(whole.qformer(query_embeds=query, encoder_hidden_states=vision).last_hidden_state,
              ours.qformer(query_embeds=query, encoder_hidden_states=vision).last_hidden_state)


def minigpt4qwen(**overrides):
    from tests.models.test_minigpt4qwen import build

    return build(**overrides)


def llm_logits(llm, vocab):
    with torch.no_grad():
        return llm(input_ids=IDS % vocab, attention_mask=torch.ones_like(IDS)).logits


@pytest.mark.parametrize("how", ["model.peft", "get_lora"])
def test_minigpt4qwen_adapter_loads_on_the_plain_llm(tmp_path, how):
    from transformers import AutoModelForCausalLM

    if how == "get_lora":
        model = minigpt4qwen(get_lora=True, lora_target_modules=["q_proj", "v_proj"], lora_dropout=0.0).eval()
        perturb(model)
    else:
        model = with_lora(minigpt4qwen(), ["q_proj", "v_proj"])
    out = export(model, tmp_path)
    assert {"adapter", "hf_base"} <= set(out) and "adapter_vlft" not in out
    saved = json.loads((out["adapter"] / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "hf_base" / "llm")
    assert saved["auto_mapping"]["base_model_class"] == "Qwen2ForCausalLM"
    ours = base_model(model).llm_model
    vocab = ours.get_input_embeddings().num_embeddings
    plain = plain_peft(AutoModelForCausalLM.from_pretrained(tmp_path / "hf_base" / "llm"), out["adapter"])
    expected = llm_logits(ours, vocab)
    torch.testing.assert_close(llm_logits(plain, vocab), expected, rtol=1e-4, atol=1e-5)
    untouched = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_base" / "llm").eval()
    assert not torch.allclose(llm_logits(untouched, vocab), expected, atol=1e-3)


def test_lora_outside_every_transformers_part_is_kept_in_vlft_names(tmp_path, caplog):
    from peft import PeftModel

    # MiniGPT4-Qwen's vision side has no transformers base in its export: qkv LoRA stays vlft's
    model = with_lora(minigpt4qwen(), ["q_proj", "qkv"])
    with caplog.at_level(logging.WARNING, logger="vlft.models.peft_export"):
        out = export(model, tmp_path)
    assert {"adapter", "adapter_vlft", "hf_base"} <= set(out)
    assert "LoRA layers are in no transformers model" in caplog.text
    assert json.loads((out["adapter"] / "adapter_config.json").read_text())["target_modules"] == ["q_proj"]
    fresh = minigpt4qwen()
    vision = pixels(1)
    restored = PeftModel.from_pretrained(fresh, str(out["adapter_vlft"])).eval()
    with torch.no_grad():
        close(base_model(restored).encode_images(vision), base_model(model).encode_images(vision))


def test_a_vlft_native_model_keeps_its_adapter_in_vlft_names(tmp_path):
    from peft import PeftModel

    from vlft.models.blip.blip_nlvr import BlipNLVR

    model = with_lora(tiny(BlipNLVR), ["qkv"])  # no transformers class holds the whole model
    out = export(model, tmp_path)
    assert set(out) == {"adapter"}  # no save_hf: no hf_base, no hf_model
    assert "vlft's names" in (out["adapter"] / "README.md").read_text()
    restored = PeftModel.from_pretrained(tiny(BlipNLVR), str(out["adapter"])).eval()
    with torch.no_grad():
        close(base_model(restored).vision_model(pixel_values=pixels()).last_hidden_state,
              base_model(model).vision_model(pixel_values=pixels()).last_hidden_state)
