"""The original microsoft/Florence-2 checkpoint layout (remote-code key names) loads
through vlft's key map, on a tiny checkpoint written with those names."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

from vlft.datasets.synthetic_shapes import make_scene
from vlft.models.convert.florence2 import (convert_original_state, hf_to_original_key, looks_original,
                                           original_to_hf_key, to_original_state)
from vlft.models.florence2.model import Florence2
from vlft.processors.florence2 import Florence2ImageEvalProcessor

TINY = "configs/models/florence2/tiny.yaml"


@pytest.fixture(scope="module")
def native():
    torch.manual_seed(0)
    return Florence2.from_config(OmegaConf.load(TINY).model).eval()


@pytest.fixture(scope="module")
def original_dir(native, tmp_path_factory):
    """A checkpoint folder as microsoft/Florence-2-* lays it out: its config.json (DaViT
    ``dim_embed``, BART text config), original key names, 1 row fewer (no ``<image>``)."""
    root = tmp_path_factory.mktemp("original")
    v = native.config.vision_config
    rows = len(native.tokenizer) - 1
    text = native.config.text_config.to_dict()
    text["vocab_size"] = rows
    config = {"model_type": "florence2", "auto_map": {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"},
              "vision_config": {"model_type": "davit", "dim_embed": list(v.embed_dim), "num_heads": list(v.num_heads),
                                "num_groups": list(v.num_groups), "depths": list(v.depths), "window_size": v.window_size,
                                "patch_size": list(v.patch_size), "patch_stride": list(v.patch_stride),
                                "patch_padding": list(v.patch_padding), "patch_prenorm": list(v.patch_prenorm),
                                "drop_path_rate": 0.0, "projection_dim": v.projection_dim,
                                "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
                                "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50}},
              "text_config": text}
    (root / "config.json").write_text(json.dumps(config))
    state = to_original_state(native.hf.state_dict())
    for key in ("language_model.model.shared.weight", "language_model.model.encoder.embed_tokens.weight",
                "language_model.model.decoder.embed_tokens.weight", "language_model.lm_head.weight"):
        state[key] = state[key][:rows].clone()
    state["language_model.final_logits_bias"] = state["language_model.final_logits_bias"][:, :rows]
    torch.save(state, root / "pytorch_model.bin")
    native.tokenizer.save_pretrained(root)
    return root


def logits(model, n_rows):
    image = Florence2ImageEvalProcessor(64)(make_scene(1)["image"])[None]
    inputs = model.encoder_inputs(image, ["<OD>"])
    with torch.no_grad():
        out = model.hf(pixel_values=image, **inputs, decoder_input_ids=torch.tensor([[2, 0, 9, 600]])).logits
    return out[..., :n_rows]


def test_key_map_is_a_bijection_on_every_key(native):
    keys = list(native.hf.state_dict())
    originals = [hf_to_original_key(k) for k in keys]
    assert not any(o.startswith("model.") for o in originals)
    assert [original_to_hf_key(o) for o in originals] == keys
    assert original_to_hf_key("vision_tower.blocks.0.0.spatial_block.window_attn.fn.qkv.weight") == \
        "model.vision_tower.blocks.0.0.spatial_block.window_attn.qkv.weight"
    assert original_to_hf_key("vision_tower.blocks.2.5.channel_block.ffn.fn.net.fc2.bias") == \
        "model.vision_tower.blocks.2.5.channel_block.ffn.fc2.bias"
    assert original_to_hf_key("image_projection") == "model.multi_modal_projector.image_projection.weight"


def test_original_folder_loads_with_the_same_logits(native, original_dir, caplog):
    cfg = OmegaConf.create({"arch": "florence2", "load_pretrained": True, "pretrained": str(original_dir),
                            "checkpoint_format": "auto", "image_size": 64})
    with caplog.at_level(logging.INFO):
        loaded = Florence2.from_config(cfg).eval()
    rows = len(native.tokenizer) - 1
    assert "1 dropped ['language_model.final_logits_bias'], 0 missing" in caplog.text and "0 unexpected" in caplog.text
    assert loaded.model.language_model.shared.num_embeddings == 1536  # 1477 tokens padded to a multiple of 64
    assert loaded.model.multi_modal_projector.image_projection.weight.shape == (32, 32)
    assert torch.allclose(logits(loaded, rows), logits(native, rows), atol=1e-5)


def test_unexpected_and_missing_keys_are_reported(native):
    state = to_original_state(native.hf.state_dict())
    assert looks_original(state) and not looks_original(native.hf.state_dict())
    fresh = Florence2.from_config(OmegaConf.load(TINY).model)
    bad = dict(state, **{"vision_tower.extra.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="vision_tower.extra.weight"):
        convert_original_state(bad, fresh.hf)
    partial = {k: v for k, v in state.items() if not k.startswith("image_proj_norm")}
    _, report = convert_original_state(partial, fresh.hf)
    assert report.missing == ["model.multi_modal_projector.image_proj_norm.weight",
                              "model.multi_modal_projector.image_proj_norm.bias"]
    # a weights file alone loads onto a built model through load_checkpoint
    fresh.load_checkpoint(state)
    rows = len(native.tokenizer)
    assert torch.allclose(logits(fresh, rows), logits(native, rows), atol=1e-5)
