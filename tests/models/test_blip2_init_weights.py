"""LAVIS's initial weights for BLIP-2 pre-training (``vlft.models.convert.lavis_blip2``):
the EVA ViT from ``eva_vit_g.pth`` (``load_eva_vit``) and the stage-1 Q-Former from BERT
(``init_qformer_from_bert``), on tiny models."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
from omegaconf import OmegaConf
from transformers import BertConfig, BertForMaskedLM, BertModel, Blip2VisionModel

import vlft.models  # noqa: F401  (registers the models)
from vlft.common.registry import registry
from vlft.models.blip.blip_caption import load_tokenizer
from vlft.models.convert.lavis_blip import interpolate_pos_embed
from vlft.models.convert.lavis_blip2 import LoadReport, init_qformer_from_bert, load_eva_vit
from vlft.models.eva_vit import vision_config

HIDDEN = 32


def tiny_stage1():
    cls = registry.get_model_class("blip2")
    return cls.from_config(OmegaConf.load(cls.default_config_path("tiny")).model)


def tiny_bert(layers: int = 2, mlm: bool = True, seed: int = 0):
    vocab = len(load_tokenizer("shapes_qa")) - 1  # the Q-Former has one more row: LAVIS's [DEC]
    config = BertConfig(hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                        vocab_size=vocab, max_position_embeddings=40)
    torch.manual_seed(seed)
    bert = BertForMaskedLM(config) if mlm else BertModel(config)
    with torch.no_grad():  # distinct values everywhere (HF zero-initialises biases)
        for param in bert.parameters():
            param.normal_()
    return bert


def snapshot(module: torch.nn.Module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- Q-Former from BERT
def test_qformer_from_a_saved_bert(tmp_path):
    bert = tiny_bert()
    bert.save_pretrained(tmp_path)
    model = tiny_stage1()
    before = snapshot(model)
    report = init_qformer_from_bert(model.blip2, str(tmp_path), itg_head=model.itg_head)
    assert isinstance(report, LoadReport)

    b, q, after = bert.state_dict(), model.blip2.state_dict(), model.state_dict()
    vocab = b["bert.embeddings.word_embeddings.weight"].shape[0]
    words = q["embeddings.word_embeddings.weight"]
    assert words.shape[0] == vocab + 1
    assert torch.equal(words[:vocab], b["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(words[vocab:], before["blip2.embeddings.word_embeddings.weight"][vocab:])  # [DEC] row untouched
    assert torch.equal(q["embeddings.position_embeddings.weight"], b["bert.embeddings.position_embeddings.weight"][:32])
    for part in ("weight", "bias"):
        assert torch.equal(q[f"qformer.layernorm.{part}"], b[f"bert.embeddings.LayerNorm.{part}"])
    for n in range(2):
        ql, bl = f"qformer.encoder.layer.{n}.", f"bert.encoder.layer.{n}."
        for part in ("weight", "bias"):
            for proj in ("query", "key", "value"):
                assert torch.equal(q[f"{ql}attention.attention.{proj}.{part}"], b[f"{bl}attention.self.{proj}.{part}"])
            for sub in ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
                        "output.LayerNorm"):
                assert torch.equal(q[f"{ql}{sub}.{part}"], b[f"{bl}{sub}.{part}"]), sub
            # the query FFN is a copy of the text FFN
            for text, query in (("intermediate.dense", "intermediate_query.dense"), ("output.dense", "output_query.dense"),
                                ("output.LayerNorm", "output_query.LayerNorm")):
                assert torch.equal(q[f"{ql}{query}.{part}"], q[f"{ql}{text}.{part}"])
    # cross-attention (layer 0 only, frequency 2) and everything outside the Q-Former untouched
    cross = [k for k in after if ".crossattention." in k]
    assert cross and all(torch.equal(after[k], before[k]) for k in cross)
    assert not any(".crossattention." in k for k in q if k.startswith("qformer.encoder.layer.1."))
    for k in after:
        if k.startswith(("blip2.vision_model.", "blip2.query_tokens", "blip2.vision_projection.", "blip2.text_projection.",
                         "blip2.itm_head.", "temp")):
            assert torch.equal(after[k], before[k]), k
    # the ITG head: BERT's MLM transform and bias (first rows), decoder still the word embeddings
    for part in ("weight", "bias"):
        assert torch.equal(after[f"itg_head.dense.{part}"], b[f"cls.predictions.transform.dense.{part}"])
        assert torch.equal(after[f"itg_head.norm.{part}"], b[f"cls.predictions.transform.LayerNorm.{part}"])
    assert torch.equal(after["itg_head.decoder.bias"][:vocab], b["cls.predictions.bias"])
    assert torch.equal(after["itg_head.decoder.bias"][vocab:], before["itg_head.decoder.bias"][vocab:])
    assert model.itg_head.decoder.weight is model.blip2.embeddings.word_embeddings.weight

    assert report.unexpected == []
    assert sorted(report.missing) == sorted(k for k in q if ".crossattention." in k)
    assert "bert.embeddings.token_type_embeddings.weight" not in report.dropped  # names lose "bert."
    assert {"embeddings.token_type_embeddings.weight", "cls.predictions.decoder.weight"} <= set(report.dropped)
    # word + position embeddings, layernorm (2), 2 layers x (6 attention + 4 output + 2x2 intermediate + 2x4 output), head (5)
    assert report.loaded == 2 + 2 + 2 * (6 + 4 + 4 + 8) + 5


def test_qformer_from_a_bert_module_without_head_and_deeper():
    bert = tiny_bert(layers=3, mlm=False)
    model = tiny_stage1()
    head_before = snapshot(model.itg_head)
    report = init_qformer_from_bert(model.blip2, bert, itg_head=model.itg_head)
    assert report.unexpected and all(k.startswith("encoder.layer.2.") for k in report.unexpected)
    assert {"pooler.dense.weight", "embeddings.token_type_embeddings.weight"} <= set(report.dropped)
    assert {"itg_head.dense.weight", "itg_head.norm.bias", "itg_head.decoder.bias"} <= set(report.missing)
    assert "itg_head.decoder.weight" not in report.missing  # the word embeddings, which were filled
    for key in ("dense.weight", "norm.bias", "decoder.bias"):
        assert torch.equal(model.itg_head.state_dict()[key], head_before[key])
    assert torch.equal(model.blip2.qformer.encoder.layer[1].output_query.dense.weight, bert.encoder.layer[1].output.dense.weight)


def test_qformer_from_a_state_dict_shape_mismatch_raises():
    state = tiny_bert().state_dict()
    state["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(48, HIDDEN)
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight"):
        init_qformer_from_bert(tiny_stage1().blip2, state)


# --------------------------------------------------------------------------- EVA ViT
def eva_state(vision: Blip2VisionModel):
    """``vision``'s weights in eva_vit_g.pth's bare layout."""
    eva = {}
    for key, value in vision.state_dict().items():
        if key.startswith("post_layernorm."):  # LAVIS's ln_vision: not in eva_vit_g.pth
            continue
        key = (key.replace("embeddings.class_embedding", "cls_token").replace("embeddings.position_embedding", "pos_embed")
               .replace("embeddings.patch_embedding.", "patch_embed.proj.").replace("encoder.layers.", "blocks.")
               .replace("layer_norm", "norm").replace("self_attn.projection.", "attn.proj.").replace("self_attn.", "attn."))
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            eva[key.replace("qkv.bias", "q_bias")], eva[key.replace("qkv.bias", "v_bias")] = q, v
            continue
        eva[key] = value
    return eva


def test_eva_vit_from_a_file(tmp_path):
    torch.manual_seed(0)
    source = Blip2VisionModel(vision_config("tiny", image_size=48, num_hidden_layers=3))  # 6x6 patches, one extra block
    with torch.no_grad():
        for param in source.parameters():
            param.normal_()
    eva = eva_state(source)
    assert "blocks.2.attn.q_bias" in eva and "blocks.0.norm1.weight" in eva and "cls_token" in eva
    eva["norm.weight"], eva["norm.bias"] = torch.ones(HIDDEN), torch.zeros(HIDDEN)
    path = tmp_path / "eva_vit_g.pth"
    torch.save(eva, path)

    target = Blip2VisionModel(vision_config("tiny"))  # 32 px, 2 blocks
    post_before = snapshot(target.post_layernorm)
    report = load_eva_vit(target, path)

    assert report.missing == ["post_layernorm.weight", "post_layernorm.bias"]
    assert set(report.unexpected) == {k for k in eva if k.startswith(("blocks.2.", "norm."))}
    s, t = source.state_dict(), target.state_dict()
    assert report.loaded == len([k for k in t if not k.startswith("post_layernorm.")])
    for key in t:
        if key.startswith("post_layernorm."):
            assert torch.equal(t[key], post_before[key.split(".", 1)[1]])
        elif key == "embeddings.position_embedding":
            assert s[key].shape == (1, 37, HIDDEN) and t[key].shape == (1, 17, HIDDEN)
            assert torch.equal(t[key], interpolate_pos_embed(s[key], 16))
            assert torch.equal(t[key][:, 0], s[key][:, 0])
        elif key.endswith("self_attn.qkv.bias"):  # EVA has no key bias
            q, k, v = t[key].chunk(3)
            sq, _, sv = s[key].chunk(3)
            assert torch.equal(q, sq) and torch.equal(v, sv) and not k.any()
        else:
            assert torch.equal(t[key], s[key]), key


def test_eva_vit_patch_size_mismatch_raises():
    eva = eva_state(Blip2VisionModel(vision_config("tiny", patch_size=4, image_size=16)))
    with pytest.raises(ValueError, match="patch_embedding"):
        load_eva_vit(Blip2VisionModel(vision_config("tiny")), eva)
