"""BLIP pre-training (``blip_pretrain``) on the tiny type: the decoder's weight sharing with the
encoder (LAVIS's ``tie_encoder_decoder_weights``), the three losses against hand computations,
LAVIS checkpoints with tied names, and the DeiT / BERT starting points."""
from __future__ import annotations

from tests.helpers import sharpen, tiny_model  # (sets HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
import torch.nn.functional as F

import vlft.models  # noqa: F401  (registers the models)
from vlft.models.blip import blip_base
from vlft.models.blip.blip_pretrain import BlipPretrain
from vlft.models.convert.lavis_blip import init_text_from_bert, load_lavis_blip, load_vit_init, to_lavis_blip

CAPTIONS = ["a red circle", "a blue square left of a green triangle", "a green circle", "a red square"]


def tiny(seed: int = 0, **overrides) -> BlipPretrain:
    return tiny_model(BlipPretrain, seed, **overrides)


def samples(n: int = 4) -> dict:
    return {"image": torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)), "text_input": CAPTIONS[:n]}


def test_the_decoder_shares_everything_with_the_encoder_but_its_self_attention():
    model = tiny()
    enc, dec = model.blip.text_encoder, model.text_decoder
    assert dec.bert.embeddings is enc.embeddings
    assert dec.cls.predictions.decoder.weight is enc.embeddings.word_embeddings.weight
    for d, e in zip(dec.bert.encoder.layer, enc.encoder.layer):
        assert d.crossattention is e.crossattention and d.intermediate is e.intermediate and d.output is e.output
        assert d.attention is not e.attention
        assert d.attention.self.query.weight.data_ptr() != e.attention.self.query.weight.data_ptr()
    state = model.state_dict()  # LAVIS's state dicts list a tied tensor under each of its names
    assert torch.equal(state["text_decoder.bert.encoder.layer.0.crossattention.self.key.weight"],
                       state["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"])


def test_losses_are_lavis_itc_itm_and_lm():
    model = sharpen(tiny())
    s = samples()
    torch.manual_seed(5)
    out = model(s)
    assert set(out) == {"loss", "loss_itc", "loss_itm", "loss_lm"}
    torch.testing.assert_close(out["loss"], out["loss_itc"] + out["loss_itm"] + out["loss_lm"])
    with torch.no_grad():
        text = model.tokenize(CAPTIONS)
        image_embeds = model.encode_image(s["image"])
        image_feat = model.image_feat(image_embeds)
        text_feat = model.text_feat(model.encode_text(text.input_ids, text.attention_mask))
        image_feat_m = model.image_feat(model.encode_image(s["image"], momentum=True), momentum=True)
        text_feat_m = model.text_feat(model.encode_text(text.input_ids, text.attention_mask, momentum=True), momentum=True)
        image_all = torch.cat([image_feat_m.t(), model.image_queue], 1)
        text_all = torch.cat([text_feat_m.t(), model.text_queue], 1)
        truth = torch.zeros(4, 4 + 16)
        truth[:, :4] = torch.eye(4)  # pre-training: only the diagonal is positive
        sim_i2t, sim_t2i = image_feat @ text_all / model.temp, text_feat @ image_all / model.temp
        i2t_t = 0.4 * F.softmax(image_feat_m @ text_all / model.temp, 1) + 0.6 * truth
        t2i_t = 0.4 * F.softmax(text_feat_m @ image_all / model.temp, 1) + 0.6 * truth
        itc = (-(F.log_softmax(sim_i2t, 1) * i2t_t).sum(1).mean() - (F.log_softmax(sim_t2i, 1) * t2i_t).sum(1).mean()) / 2
        torch.testing.assert_close(out["loss_itc"], itc, rtol=1e-6, atol=1e-6)

        # ITM: weights softmax(sims over the batch's momentum columns) + 1e-4, diagonal zeroed
        w_t2i = F.softmax(sim_t2i[:, :4], 1) + 1e-4
        w_t2i.fill_diagonal_(0)
        w_i2t = F.softmax(sim_i2t[:, :4], 1) + 1e-4
        w_i2t.fill_diagonal_(0)
        torch.manual_seed(5)
        neg_img = [torch.multinomial(w_t2i[b], 1).item() for b in range(4)]
        neg_txt = [torch.multinomial(w_i2t[b], 1).item() for b in range(4)]
        enc_ids = model.with_enc(text.input_ids)
        ids = torch.cat([enc_ids, enc_ids, enc_ids[neg_txt]])
        atts = torch.cat([text.attention_mask, text.attention_mask, text.attention_mask[neg_txt]])
        imgs = torch.cat([image_embeds, image_embeds[neg_img], image_embeds])
        logits = model.blip.itm_head(model.encode_multimodal(ids, atts, imgs)[:, 0])
        torch.testing.assert_close(out["loss_itm"], F.cross_entropy(logits, torch.tensor([1] * 4 + [0] * 8)),
                                   rtol=1e-5, atol=1e-5)

        # LM: from [DEC], causal, label smoothing 0.1, padding ignored
        dec_ids = text.input_ids.clone()
        dec_ids[:, 0] = model.tokenizer.bos_token_id
        lm_logits = model.text_decoder(input_ids=dec_ids, attention_mask=text.attention_mask,
                                       encoder_hidden_states=image_embeds).logits
        labels = dec_ids.masked_fill(dec_ids == model.tokenizer.pad_token_id, -100)[:, 1:]
        lm = F.cross_entropy(lm_logits[:, :-1].reshape(-1, lm_logits.shape[-1]), labels.reshape(-1), label_smoothing=0.1)
        torch.testing.assert_close(out["loss_lm"], lm, rtol=1e-6, atol=1e-6)
        # causal: a later token does not change an earlier position's logits
        changed = dec_ids.clone()
        changed[0, 3] = 7
        again = model.text_decoder(input_ids=changed, attention_mask=text.attention_mask, encoder_hidden_states=image_embeds).logits
        torch.testing.assert_close(again[0, :3], lm_logits[0, :3])


def test_use_image_ids_makes_captions_of_one_image_positives(monkeypatch):
    model = tiny(use_image_ids=True)
    assert hasattr(model, "idx_queue") and not hasattr(tiny(), "idx_queue")  # LAVIS's pre-training has none
    seen = []
    monkeypatch.setattr(blip_base, "sample_negatives", lambda w: seen.append(w.clone()) or torch.zeros(len(w), dtype=torch.long))
    model({**samples(), "image_id": ["a", "b", "a", "c"]})
    assert seen[0][0, 2] == 0 and seen[0][2, 0] == 0 and seen[0][0, 1] > 0  # the same image is never a negative
    with pytest.raises(KeyError, match="image_id"):
        model(samples())


def test_training_and_backward_reach_every_part_and_a_step_moves_the_momentum_encoders():
    model = tiny().train()
    model(samples())["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("blip.vision_model.encoder.layers.0.self_attn.qkv.weight", "blip.text_encoder.encoder.layer.0.attention.self.query.weight",
                 "text_decoder.bert.encoder.layer.0.attention.self.query.weight",  # the decoder's own self-attention
                 "blip.text_encoder.encoder.layer.1.crossattention.self.value.weight", "blip.itm_head.weight",
                 "blip.vision_proj.weight", "text_decoder.cls.predictions.transform.dense.weight", "temp"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert int(model.queue_ptr) == 4


def test_lavis_round_trip_with_the_tied_names_and_a_conflicting_tie_fails():
    source = sharpen(tiny())
    source.train()
    source(samples())
    lavis = to_lavis_blip(source.state_dict())
    for name in ("text_decoder.bert.encoder.layer.0.crossattention.self.query.weight", "text_decoder.cls.predictions.bias",
                 "text_decoder.bert.embeddings.word_embeddings.weight", "text_encoder_m.encoder.layer.1.output.dense.bias",
                 "visual_encoder_m.blocks.1.attn.qkv.weight", "image_queue", "queue_ptr"):
        assert name in lavis, name
    fresh = tiny(seed=3)
    report = load_lavis_blip(fresh, {"model": lavis})
    assert report.missing == [] and report.unexpected == [] and report.dropped == []
    for key, value in source.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert fresh.text_decoder.bert.embeddings is fresh.blip.text_encoder.embeddings  # ties survive the load
    lavis["text_decoder.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, 32)
    with pytest.raises(ValueError, match="tied"):
        load_lavis_blip(tiny(seed=4), {"model": lavis})


def test_deit_and_bert_starting_points_fill_the_vit_encoder_decoder_and_head(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    model = tiny()
    # a timm / DeiT-named ViT file (no prefix, a classifier head), at 48 px
    other = tiny(seed=1, image_size=48)
    vit = {k[len("visual_encoder."):]: v for k, v in to_lavis_blip(other.state_dict()).items() if k.startswith("visual_encoder.")}
    vit["head.weight"], vit["head.bias"] = torch.zeros(1000, 32), torch.zeros(1000)
    report = load_vit_init(model.blip.vision_model, {"model": vit})
    assert report.missing == [] and report.unexpected == [] and set(report.dropped) == {"head.weight", "head.bias"}
    assert torch.equal(model.blip.vision_model.encoder.layers[1].mlp.fc2.weight, other.blip.vision_model.encoder.layers[1].mlp.fc2.weight)

    torch.manual_seed(2)
    bert = BertForMaskedLM(BertConfig(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=32))
    cross_before = model.blip.text_encoder.encoder.layer[0].crossattention.self.query.weight.clone()
    report = init_text_from_bert(model, bert)
    assert report.unexpected == []
    enc, dec, b = model.blip.text_encoder, model.text_decoder, bert.bert
    assert torch.equal(enc.embeddings.word_embeddings.weight[:17], b.embeddings.word_embeddings.weight)
    assert torch.equal(enc.encoder.layer[1].attention.self.key.weight, b.encoder.layer[1].attention.self.key.weight)
    assert torch.equal(dec.bert.encoder.layer[1].attention.self.key.weight, b.encoder.layer[1].attention.self.key.weight)
    assert torch.equal(dec.cls.predictions.transform.dense.weight, bert.cls.predictions.transform.dense.weight)
    assert torch.equal(dec.cls.predictions.bias[:17], bert.cls.predictions.bias)
    assert torch.equal(enc.encoder.layer[0].crossattention.self.query.weight, cross_before)  # new in BLIP
    model.copy_to_momentum()
    assert torch.equal(model.momentum_model["text_encoder"].encoder.layer[1].attention.self.key.weight,
                       b.encoder.layer[1].attention.self.key.weight)
