"""LAVIS BLIP-2 checkpoints <-> vlft names (``vlft.models.convert.lavis_blip2``), on
tiny transformers BLIP-2 models with vlft's layout (HF model under ``blip2.``, the ITG
head and ``temp`` beside it)."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import logging

import pytest
import torch
from torch import nn
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from vlft.models.convert.lavis_blip import interpolate_pos_embed
from vlft.models.convert.lavis_blip2 import (LoadReport, convert_lavis_blip2, is_lavis_blip2, load_lavis_blip2,
                                             to_lavis_blip2)

VOCAB, HIDDEN = 40, 32
OPT = dict(model_type="opt", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, vocab_size=50,
           word_embed_proj_dim=16, max_position_embeddings=32)
T5 = dict(model_type="t5", d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, vocab_size=50, decoder_start_token_id=0)


def blip2_config(image_size: int = 32, queries: int = 8, text_input: bool = True, text_config=None) -> Blip2Config:
    vision = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=8)
    qformer = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   encoder_hidden_size=HIDDEN, use_qformer_text_input=text_input, vocab_size=VOCAB)
    extra = {"text_config": text_config} if text_config else {}
    return Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=queries, image_text_hidden_size=16, **extra)


class ItgHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.decoder = nn.Linear(HIDDEN, VOCAB)


class Stage1(nn.Module):
    """vlft's ``blip2`` layout."""

    def __init__(self, seed: int, **config):
        super().__init__()
        torch.manual_seed(seed)
        self.blip2 = Blip2ForImageTextRetrieval(blip2_config(**config))
        self.itg_head = ItgHead()
        self.itg_head.decoder.weight = self.blip2.embeddings.word_embeddings.weight
        self.temp = nn.Parameter(torch.tensor(0.07))
        randomize(self, seed)


class Stage2(nn.Module):
    """vlft's ``blip2_opt`` / ``blip2_t5`` layout."""

    def __init__(self, seed: int, text_config, **config):
        super().__init__()
        torch.manual_seed(seed)
        self.blip2 = Blip2ForConditionalGeneration(blip2_config(text_input=False, text_config=text_config, **config))
        randomize(self, seed)


def randomize(model: nn.Module, seed: int) -> None:
    """Distinct random values everywhere (HF zero-initialises biases), keeping the ViT's
    key bias at 0 as LAVIS has none."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.randn(param.shape, generator=g))
            if name.endswith("self_attn.qkv.bias"):
                param[HIDDEN:2 * HIDDEN] = 0


def assert_same_weights(a: nn.Module, b: nn.Module, keys=None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in keys or sa:
        assert torch.equal(sa[key], sb[key]), key


# --------------------------------------------------------------------------- key map
def test_stage1_lavis_names():
    lavis = to_lavis_blip2(Stage1(0).state_dict())
    expected = ["visual_encoder.cls_token", "visual_encoder.pos_embed", "visual_encoder.patch_embed.proj.weight",
                "visual_encoder.blocks.1.norm1.weight", "visual_encoder.blocks.0.attn.qkv.weight",
                "visual_encoder.blocks.0.attn.q_bias", "visual_encoder.blocks.0.attn.v_bias",
                "visual_encoder.blocks.0.attn.proj.bias", "visual_encoder.blocks.0.mlp.fc2.weight", "ln_vision.weight",
                "query_tokens", "Qformer.bert.embeddings.word_embeddings.weight", "Qformer.bert.embeddings.LayerNorm.bias",
                "Qformer.bert.encoder.layer.0.attention.self.query.weight",
                "Qformer.bert.encoder.layer.0.crossattention.self.value.bias",
                "Qformer.bert.encoder.layer.0.crossattention.output.LayerNorm.weight",
                "Qformer.bert.encoder.layer.1.intermediate.dense.weight", "Qformer.bert.encoder.layer.1.output_query.dense.bias",
                "Qformer.cls.predictions.transform.dense.weight", "Qformer.cls.predictions.transform.LayerNorm.weight",
                "Qformer.cls.predictions.decoder.weight", "Qformer.cls.predictions.decoder.bias", "Qformer.cls.predictions.bias",
                "vision_proj.weight", "text_proj.bias", "itm_head.weight", "temp"]
    assert set(expected) <= set(lavis)
    assert not any(k.startswith(("blip2.", "itg_head.")) or "qkv.bias" in k for k in lavis)
    assert torch.equal(lavis["Qformer.cls.predictions.decoder.weight"], lavis["Qformer.bert.embeddings.word_embeddings.weight"])


def test_qkv_bias_is_q_zero_v():
    q, v = torch.full((4,), 1.0), torch.full((4,), 2.0)
    state = {"visual_encoder.blocks.0.attn.q_bias": q, "visual_encoder.blocks.0.attn.v_bias": v,
             "visual_encoder.blocks.0.attn.qkv.weight": torch.zeros(12, 4),
             "visual_encoder.blocks.1.attn.qkv.weight": torch.zeros(12, 4),  # a block without biases
             "Qformer.bert.embeddings.position_ids": torch.arange(4)[None]}
    converted, dropped = convert_lavis_blip2(state)
    qkv_bias = converted["blip2.vision_model.encoder.layers.0.self_attn.qkv.bias"]
    assert torch.equal(qkv_bias, torch.tensor([1.0] * 4 + [0.0] * 4 + [2.0] * 4))
    assert "blip2.vision_model.encoder.layers.1.self_attn.qkv.bias" not in converted
    assert dropped == ["Qformer.bert.embeddings.position_ids"]
    back = to_lavis_blip2(converted)
    assert torch.equal(back["visual_encoder.blocks.0.attn.q_bias"], q) and torch.equal(back["visual_encoder.blocks.0.attn.v_bias"], v)
    assert "visual_encoder.blocks.1.attn.q_bias" not in back


def test_nonzero_key_bias_warns(caplog):
    state = {"blip2.vision_model.encoder.layers.0.self_attn.qkv.bias": torch.ones(12)}
    with caplog.at_level(logging.WARNING, logger="vlft.models.convert.lavis_blip2"):
        back = to_lavis_blip2(state)
    assert "key bias" in caplog.text and set(back) == {"visual_encoder.blocks.0.attn.q_bias", "visual_encoder.blocks.0.attn.v_bias"}


def test_is_lavis_blip2():
    lavis = to_lavis_blip2(Stage1(0).state_dict())
    assert is_lavis_blip2(lavis) and is_lavis_blip2({"model": lavis})
    assert is_lavis_blip2({"query_tokens": torch.zeros(1), "opt_proj.weight": torch.zeros(1)})
    assert not is_lavis_blip2(Stage1(0).state_dict())  # vlft names
    assert not is_lavis_blip2(Stage1(0).blip2.state_dict())  # HF names (query_tokens, vision_model.*)
    assert not is_lavis_blip2({"visual_encoder.cls_token": torch.zeros(1), "text_decoder.cls.x": torch.zeros(1)})  # BLIP-1


# --------------------------------------------------------------------------- loading
def test_stage1_round_trip_through_a_lavis_file(tmp_path):
    source = Stage1(0)
    lavis = to_lavis_blip2(source.state_dict())
    lavis["Qformer.bert.embeddings.position_ids"] = torch.arange(32)[None]  # LAVIS saves BERT's buffer
    path = tmp_path / "blip2_lavis.pth"
    torch.save({"model": lavis, "epoch": 3}, path)

    target = Stage1(1)
    report = load_lavis_blip2(target, path)
    assert isinstance(report, LoadReport)
    assert report.missing == [] and report.unexpected == []
    assert report.dropped == ["Qformer.bert.embeddings.position_ids"]
    # per block q_bias + v_bias -> one qkv.bias; the LM bias has two LAVIS names; position_ids dropped
    assert report.loaded == len(source.state_dict()) == len(lavis) - 2 - 1 - 1
    assert_same_weights(source, target)
    assert target.itg_head.decoder.weight is target.blip2.embeddings.word_embeddings.weight  # still tied
    assert "0 missing" in report.summary() and "1 dropped" in report.summary()


def test_trainable_only_checkpoint_leaves_the_vit_alone(caplog):
    source, target = Stage1(0), Stage1(1)
    vit_before = {k: v.clone() for k, v in target.blip2.vision_model.state_dict().items()}
    lavis = {k: v for k, v in to_lavis_blip2(source.state_dict()).items()
             if k.startswith(("Qformer.", "query_tokens", "vision_proj.", "text_proj."))}
    with caplog.at_level(logging.WARNING, logger="vlft.models.convert.lavis_blip2"):
        report = load_lavis_blip2(target, {"model": lavis})
    vit_keys = {"blip2.vision_model." + k for k in vit_before}
    assert set(report.missing) == vit_keys | {"blip2.itm_head.weight", "blip2.itm_head.bias", "temp"}
    assert report.unexpected == []
    assert "keep their current values" in caplog.text
    for key, value in target.blip2.vision_model.state_dict().items():
        assert torch.equal(value, vit_before[key]), key
    assert_same_weights(source, target, keys=[k for k in source.state_dict() if ".qformer." in k or k.startswith("itg_head.")])


def test_position_embedding_is_interpolated():
    source, target = Stage1(0, image_size=32), Stage1(1, image_size=48)  # 4x4 -> 6x6 patches
    report = load_lavis_blip2(target, to_lavis_blip2(source.state_dict()))
    key = "blip2.vision_model.embeddings.position_embedding"
    old, new = source.state_dict()[key], target.state_dict()[key]
    assert new.shape == (1, 37, HIDDEN) and report.missing == []
    assert torch.equal(new, interpolate_pos_embed(old, 36))
    assert torch.equal(new[:, 0], old[:, 0])  # the [CLS] position is kept


@pytest.mark.parametrize("llm,text_config", [("opt", OPT), ("t5", T5)])
def test_stage2_round_trip(llm, text_config, tmp_path):
    source = Stage2(0, text_config)
    lavis = to_lavis_blip2(source.state_dict())
    assert f"{llm}_proj.weight" in lavis and f"{llm}_model.lm_head.weight" in lavis
    assert not any(k.startswith(("blip2.", "opt_" if llm == "t5" else "t5_")) for k in lavis)
    if llm == "t5":  # every name of T5's tied embedding is written, as LAVIS's state dict has them
        names = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
        assert all(torch.equal(lavis["t5_model." + n], lavis["t5_model.shared.weight"]) for n in names)
    else:
        assert "opt_model.model.decoder.embed_tokens.weight" in lavis
    torch.save({"model": lavis}, tmp_path / "ckpt.pth")
    target = Stage2(1, text_config)
    report = load_lavis_blip2(target, tmp_path / "ckpt.pth")
    assert report.missing == [] and report.unexpected == []
    assert_same_weights(source, target)
    lm = target.blip2.language_model
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight  # ties survive the load


def test_t5_embedding_names_alone_fill_the_tie():
    source, target = Stage2(0, T5), Stage2(1, T5)
    lavis = to_lavis_blip2(source.state_dict())
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        del lavis["t5_model." + name]
    report = load_lavis_blip2(target, lavis)
    assert report.missing == []  # the other names are the same tensor
    assert torch.equal(target.blip2.language_model.lm_head.weight, source.blip2.language_model.shared.weight)


def test_tied_names_with_different_values_raise():
    lavis = to_lavis_blip2(Stage2(0, T5).state_dict())
    lavis["t5_model.lm_head.weight"] = lavis["t5_model.lm_head.weight"] + 1  # e.g. Flan-T5's untied head
    with pytest.raises(ValueError, match="tied"):
        load_lavis_blip2(Stage2(1, T5), lavis)


def test_stage1_checkpoint_into_stage2_reports_unused_keys(caplog):
    source, target = Stage1(0), Stage2(1, OPT)
    with caplog.at_level(logging.INFO, logger="vlft.models.convert.lavis_blip2"):
        report = load_lavis_blip2(target, {"model": to_lavis_blip2(source.state_dict())})
    unexpected = set(report.unexpected)
    for key in ["itg_head.dense.weight", "itg_head.decoder.bias", "temp", "blip2.itm_head.weight", "blip2.text_projection.weight",
                "blip2.vision_projection.bias", "blip2.embeddings.word_embeddings.weight",
                "blip2.qformer.encoder.layer.0.intermediate.dense.weight", "blip2.qformer.encoder.layer.1.output.LayerNorm.bias"]:
        assert key in unexpected, key
    assert all(k.startswith(("blip2.language_projection.", "blip2.language_model.")) for k in report.missing)
    assert "no place in" in caplog.text and "itg_head" in caplog.text
    shared = [k for k in target.state_dict() if k.startswith(("blip2.vision_model.", "blip2.qformer.", "blip2.query_tokens"))]
    source_state, target_state = source.state_dict(), target.state_dict()
    assert shared and all(torch.equal(source_state[k], target_state[k]) for k in shared)


def test_shape_mismatch_raises():
    lavis = to_lavis_blip2(Stage1(0, queries=8).state_dict())
    with pytest.raises(ValueError, match=r"blip2\.query_tokens: checkpoint \(1, 8, 32\) vs model \(1, 4, 32\)"):
        load_lavis_blip2(Stage1(1, queries=4), lavis)
