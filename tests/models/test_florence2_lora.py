"""Florence-2 LoRA: presets and regexes per tower, the error for names that match nothing
(the seed's remote-code list), and adapters that plain transformers + peft restore."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import json
import logging
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from vlft.common.config import ConfigError
from vlft.datasets.synthetic_shapes import make_scene
from vlft.models.adapters import apply_finetuning, base_model, export
from vlft.models.florence2.lora import PRESETS, count_matches, entry_regex, resolve_targets
from vlft.models.florence2.model import Florence2
from vlft.processors.florence2 import Florence2ImageEvalProcessor

SEED_LIST = ["q_proj", "o_proj", "k_proj", "v_proj", "linear", "Conv2d", "lm_head", "fc2"]


def tiny():
    torch.manual_seed(0)
    return Florence2.from_config(OmegaConf.load("configs/models/florence2/tiny.yaml").model)


@pytest.fixture(scope="module")
def model():
    return tiny()


def test_presets_cover_each_tower(model):
    # 1 encoder layer (q, k, v, out, fc1, fc2) + 1 decoder layer (self and cross attention, fc1, fc2)
    assert count_matches(model, PRESETS["florence2_language"]) == {"language": 16}
    # 4 DaViT blocks x (window qkv/proj, channel qkv/proj, two ffns x fc1/fc2)
    assert count_matches(model, PRESETS["florence2_vision"]) == {"vision": 32}
    assert count_matches(model, PRESETS["florence2_all"]) == {"vision": 32, "projector": 1, "language": 16}
    # a bare name matches in both towers
    assert count_matches(model, entry_regex("fc2")) == {"vision": 8, "language": 2}


def test_start_up_log_reports_matches_per_tower(model, caplog):
    with caplog.at_level(logging.INFO, logger="vlft.models.florence2.lora"):
        regex = resolve_targets(model, ["florence2_language", "fc2", r"model\.multi_modal_projector\..*"])
    assert "LoRA target florence2_language: language 16" in caplog.text
    assert "LoRA target fc2: vision 8, language 2" in caplog.text
    # the projector's regex also matches its norm and embedding containers: only its 3 layers are kept
    assert "LoRA target model\\.multi_modal_projector\\..*: projector 3" in caplog.text
    assert count_matches(model, regex) == {"vision": 8, "projector": 3, "language": 16}


def test_the_seed_list_names_what_matches_nothing(model):
    with pytest.raises(ConfigError) as err:
        resolve_targets(model, SEED_LIST)
    message = str(err.value)
    failed = message.split(" match")[0]
    assert all(name in failed for name in ("o_proj", "linear", "Conv2d"))
    assert not any(name in failed for name in ("q_proj", "lm_head", "fc2"))
    assert "out_proj" in message and "florence2_language" in message and "remote-code" in message
    with pytest.raises(ConfigError, match="spatial_block match"):  # a block, not a layer
        resolve_targets(model, [r"model\.vision_tower\.blocks\.0\.0\.spatial_block"])
    with pytest.raises(ConfigError, match="valid regex"):
        resolve_targets(model, ["q_proj("])


def test_adapter_restores_with_plain_transformers_and_peft(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, Florence2ForConditionalGeneration

    model = tiny()
    cfg = OmegaConf.create({"peft": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0,
                                     "target_modules": ["florence2_language", "qkv", "lm_head"]}})
    peft_model = apply_finetuning(model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # adapters start as a no-op (B = 0): make them matter
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    out = export(peft_model, tmp_path)
    assert set(out) == {"adapter", "hf_base", "hf_model"}  # the base the adapter expects is vlft's hf_base/
    saved = json.loads((out["adapter"] / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "hf_base")
    assert saved["auto_mapping"]["base_model_class"] == "Florence2ForConditionalGeneration"

    image = Florence2ImageEvalProcessor(64)(make_scene(0)["image"])[None]
    ours = base_model(peft_model)
    inputs = dict(pixel_values=image, **ours.encoder_inputs(image, ["<OD>"]), decoder_input_ids=torch.tensor([[2, 0, 5]]))
    with torch.no_grad():
        expected = ours.hf(**inputs).logits
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plain = PeftModel.from_pretrained(Florence2ForConditionalGeneration.from_pretrained(out["hf_base"]),
                                              str(out["adapter"])).eval()
        assert not [w for w in caught if "missing adapter keys" in str(w.message)]
        assert torch.allclose(plain(**inputs).logits, expected, atol=1e-5)
        reference = Florence2ForConditionalGeneration.from_pretrained(out["hf_base"]).eval()
        assert not torch.allclose(reference(**inputs).logits, expected, atol=1e-3)  # the adapter changed the model
        merged = AutoModelForImageTextToText.from_pretrained(out["hf_model"]).eval()
        assert torch.allclose(merged(**inputs).logits, expected, atol=1e-5)
