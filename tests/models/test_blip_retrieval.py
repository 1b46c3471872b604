"""BLIP retrieval / ITM / feature extraction (``blip_retrieval``, ``blip_image_text_matching``,
``blip_feature_extractor``) on the tiny types: LAVIS's ITC (momentum distillation, queues,
image-id positives) and ITM (hard negatives) against hand computations, the momentum and
queue updates, the retrieval task's interface, matching and features, and LAVIS checkpoints."""
from __future__ import annotations

from tests.helpers import sharpen, tiny_model  # (sets HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
import torch.nn.functional as F

import vlft.models  # noqa: F401  (registers the models)
from vlft.models.blip.blip_momentum import global_image_ids, sample_negatives
from vlft.models.blip.blip_retrieval import (BlipFeatureExtractor, BlipImageTextMatching, BlipRetrieval,
                                             retrieval_scores)
from vlft.models.convert.lavis_blip import load_lavis_blip, to_lavis_blip
from vlft.runners.checkpoint import atomic_save, model_state

CAPTIONS = ["a red circle", "a blue square left of a green triangle", "a green circle", "a red square"]


def tiny(cls=BlipRetrieval, seed: int = 0, **overrides) -> BlipRetrieval:
    return tiny_model(cls, seed, **overrides)


def images(n: int = 4, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def batch(ids=("a.jpg", "b.jpg", "a.jpg", "c.jpg")) -> dict:
    return {"image": images(len(ids)), "text_input": CAPTIONS[: len(ids)], "image_id": list(ids)}


def perturb_momentum(model, seed: int = 3) -> None:
    """Momentum encoders different from the online ones (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in model.momentum_model.buffers():
            if b.is_floating_point():
                b.add_(torch.randn(b.shape, generator=g) * 0.05)


# ---------------------------------------------------------------- ITC
def test_itc_loss_is_lavis_momentum_distillation_with_image_id_positives_across_the_queue():
    model = sharpen(tiny())
    perturb_momentum(model)
    ids = global_image_ids(["a.jpg", "b.jpg", "a.jpg", "c.jpg"], torch.device("cpu"))
    model.idx_queue[0, 5] = ids[0]  # a queued caption of a.jpg: a positive for rows 0 and 2
    samples = batch()
    out = model(samples)  # eval mode: no momentum update, no enqueue

    with torch.no_grad():
        text = model.tokenize(CAPTIONS)
        image_feat = model.image_feat(model.encode_image(samples["image"]))
        text_feat = model.text_feat(model.encode_text(text.input_ids, text.attention_mask))
        m = model.momentum_model
        image_feat_m = F.normalize(m["vision_proj"](m["vision_model"](pixel_values=samples["image"]).last_hidden_state[:, 0]), dim=-1)
        text_feat_m = F.normalize(m["text_proj"](m["text_encoder"](input_ids=text.input_ids, attention_mask=text.attention_mask)
                                                .last_hidden_state[:, 0]), dim=-1)
        image_all = torch.cat([image_feat_m.t(), model.image_queue], 1)
        text_all = torch.cat([text_feat_m.t(), model.text_queue], 1)
        idx_all = torch.cat([ids.view(1, -1), model.idx_queue], 1)
        pos = (ids.view(-1, 1) == idx_all).float()
        truth = pos / pos.sum(1, keepdim=True)
        alpha, temp = 0.4, model.temp
        i2t_t = alpha * F.softmax(image_feat_m @ text_all / temp, 1) + (1 - alpha) * truth
        t2i_t = alpha * F.softmax(text_feat_m @ image_all / temp, 1) + (1 - alpha) * truth
        loss_i2t = -(F.log_softmax(image_feat @ text_all / temp, 1) * i2t_t).sum(1).mean()
        loss_t2i = -(F.log_softmax(text_feat @ image_all / temp, 1) * t2i_t).sum(1).mean()
    assert pos[0].sum() == pos[2].sum() == 3 and pos[1].sum() == 1  # two in the batch + one in the queue
    torch.testing.assert_close(out["loss_itc"], (loss_i2t + loss_t2i) / 2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["loss_itc"] + out["loss_itm"])


def test_alpha_ramps_up_over_two_epochs_when_the_batch_says_where_training_is():
    model = tiny()
    assert model.alpha_now({}) == 0.4  # vlft's runners add no epoch / iters: alpha as configured
    assert model.alpha_now({"epoch": 0, "iters": 25, "num_iters_per_epoch": 100}) == pytest.approx(0.4 * 25 / 200)
    assert model.alpha_now({"epoch": 1, "iters": 50, "num_iters_per_epoch": 100}) == pytest.approx(0.4 * 150 / 200)
    assert model.alpha_now({"epoch": 3, "iters": 0, "num_iters_per_epoch": 100}) == pytest.approx(0.4)


def test_a_training_step_updates_momentum_encoders_and_queues_as_lavis():
    model = sharpen(tiny())
    perturb_momentum(model)
    before = {k: v.clone() for k, v in model.momentum_model.state_dict().items()}
    online = {name: {k: v.detach().clone() for k, v in getattr(model.blip, name).named_parameters()}
              for name in model.momentum_model}
    model.train()
    samples = batch()
    model(samples)
    for name, module in model.momentum_model.items():
        for key, value in module.named_buffers():
            if key in online[name]:
                expected = before[f"{name}.{key}"] * 0.995 + online[name][key] * (1.0 - 0.995)
                assert torch.equal(value, expected), (name, key)
    # the queues hold the step's momentum features (computed after the update) and image ids
    model.eval()
    with torch.no_grad():
        m = model.momentum_model
        feat_m = F.normalize(m["vision_proj"](m["vision_model"](pixel_values=samples["image"]).last_hidden_state[:, 0]), dim=-1)
    torch.testing.assert_close(model.image_queue[:, :4], feat_m.t(), rtol=0, atol=1e-6)
    assert torch.equal(model.idx_queue[0, :4], global_image_ids(samples["image_id"], torch.device("cpu")))
    assert int(model.queue_ptr) == 4
    # eval-mode forward (validation losses) changes neither
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(samples)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_the_queue_wraps_around_a_batch_that_does_not_divide_it():
    model = tiny()  # queue of 16
    feats = [F.normalize(torch.randn(3, 16), dim=-1) for _ in range(6)]
    for i, f in enumerate(feats):
        model.enqueue(f, f, torch.full((3,), i))
    assert int(model.queue_ptr) == 18 % 16
    torch.testing.assert_close(model.image_queue[:, :2], feats[5][1:].t())  # the 6th batch's last two wrapped
    torch.testing.assert_close(model.image_queue[:, 15], feats[5][0])
    assert model.idx_queue[0].tolist()[:2] == [5, 5] and model.idx_queue[0, 14] == 4


def test_string_and_integer_image_ids_give_stable_codes():
    cpu = torch.device("cpu")
    assert global_image_ids(["x.jpg", "y.jpg", "x.jpg"], cpu).tolist()[0] == global_image_ids(["x.jpg"], cpu).item()
    codes = global_image_ids(["x.jpg", "y.jpg", "x.jpg"], cpu)
    assert codes[0] == codes[2] != codes[1] and (codes >= 0).all()
    assert global_image_ids([3, 7], cpu).tolist() == [3, 7]
    assert global_image_ids(torch.tensor([[4], [4]]), cpu).tolist() == [4, 4]
    import numpy as np

    assert global_image_ids([np.int64(9)], cpu).tolist() == [9]
    with pytest.raises(KeyError, match="image_id"):
        tiny()({"image": images(2), "text_input": CAPTIONS[:2]})


# ---------------------------------------------------------------- ITM
def test_itm_loss_uses_lavis_negatives_drawn_row_by_row_images_first():
    model = sharpen(tiny())
    samples = batch()
    torch.manual_seed(11)
    out = model(samples)

    with torch.no_grad():
        ids = global_image_ids(samples["image_id"], torch.device("cpu"))
        text = model.tokenize(CAPTIONS)
        enc_ids = text.input_ids.clone()
        enc_ids[:, 0] = model.enc_token_id
        image_embeds = model.encode_image(samples["image"])
        image_feat = model.image_feat(image_embeds)
        text_feat = model.text_feat(model.encode_text(text.input_ids, text.attention_mask))
        same = ids.view(-1, 1) == ids.view(1, -1)
        w_i2t = F.softmax(image_feat @ text_feat.t() / model.temp, 1).masked_fill(same, 0)
        w_t2i = F.softmax(text_feat @ image_feat.t() / model.temp, 1).masked_fill(same, 0)
        torch.manual_seed(11)
        neg_img = [torch.multinomial(w_t2i[b], 1).item() for b in range(4)]
        neg_txt = [torch.multinomial(w_i2t[b], 1).item() for b in range(4)]
        assert all(ids[b] != ids[neg_img[b]] and ids[b] != ids[neg_txt[b]] for b in range(4))

        def cls_state(i, t):
            states = model.blip.text_encoder(input_ids=enc_ids[t:t + 1], attention_mask=text.attention_mask[t:t + 1],
                                             encoder_hidden_states=image_embeds[i:i + 1]).last_hidden_state
            return states[0, 0]

        pairs = [(b, b) for b in range(4)] + [(neg_img[b], b) for b in range(4)] + [(b, neg_txt[b]) for b in range(4)]
        logits = model.blip.itm_head(torch.stack([cls_state(i, t) for i, t in pairs]))
        expected = F.cross_entropy(logits, torch.tensor([1] * 4 + [0] * 8))
    torch.testing.assert_close(out["loss_itm"], expected, rtol=1e-5, atol=1e-5)


def test_negative_sampling_never_draws_a_zero_weight_and_falls_back_to_uniform():
    torch.manual_seed(0)
    weights = torch.tensor([[0.0, 0.7, 0.3], [0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])
    draws = torch.stack([sample_negatives(weights) for _ in range(200)])
    assert (draws[:, 0] != 0).all() and (draws[:, 1] != 1).all()
    assert set(draws[:, 2].tolist()) == {0, 1, 2}  # every column shows the same image: LAVIS would raise
    model = tiny()
    out = model({"image": images(2), "text_input": CAPTIONS[:2], "image_id": ["same", "same"]})
    assert torch.isfinite(out["loss"])


def test_negative_all_rank_on_one_process_matches_the_per_rank_negatives():
    a, b = sharpen(tiny()), sharpen(tiny(negative_all_rank=True))
    torch.manual_seed(4)
    loss_a = a(batch())["loss"]
    torch.manual_seed(4)
    assert torch.equal(loss_a, b(batch())["loss"])


# ---------------------------------------------------------------- evaluation interfaces
def test_retrieval_interface_scores_as_lavis_compute_sim_matrix():
    from vlft.tasks.retrieval import RetrievalTask

    model = sharpen(tiny())
    imgs = images(3, seed=5)
    seen = {}
    hook = model.blip.text_encoder.register_forward_pre_hook(
        lambda m, a, kw: seen.setdefault("first", []).append(kw["input_ids"][:, 0].clone()) if kw.get("encoder_hidden_states") is not None else None,
        with_kwargs=True)
    dense = retrieval_scores(model, imgs, CAPTIONS)
    hook.remove()
    assert all((ids == model.enc_token_id).all() for ids in seen["first"])  # ITM text starts with [ENC]
    feats = model.retrieval_image_features(imgs)
    text = model.retrieval_text_features(CAPTIONS)
    assert feats["embeds"].shape == (3, 17, 32) and feats["feat"].shape == (3, 16) and text["feat"].shape == (4, 16)
    assert text["ids"].shape == (4, 20) and (text["ids"][:, 0] == model.tokenizer.cls_token_id).all()  # max_length padding
    torch.testing.assert_close(dense["sim"], feats["feat"] @ text["feat"].t())
    assert dense["itm"].abs().max() > 1  # the raw "match" logit, not a probability
    # padding to max_length (retrieval) or to the longest text (matching) gives the same logit
    torch.testing.assert_close(dense["itm"][1, 2], model.match({"image": imgs[1:2], "text_input": CAPTIONS[2:3]})[0, 1],
                               rtol=1e-5, atol=1e-5)

    class Data(torch.utils.data.Dataset):
        text, img2txt, txt2img = CAPTIONS, {0: [0], 1: [1], 2: [2, 3]}, {0: 0, 1: 1, 2: 2, 3: 2}

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"image": imgs[i], "index": i}

    loader = torch.utils.data.DataLoader(Data(), batch_size=2)
    scores = RetrievalTask(k_test=2).evaluation(model, loader, dataset=Data())[0]
    score = dense["score"].numpy()
    top_txt = dense["sim"].topk(2, dim=1).indices
    for i in range(3):
        for t in range(4):
            expected = score[i, t] if t in top_txt[i].tolist() else -100.0
            assert scores["score_i2t"][i, t] == pytest.approx(expected, abs=1e-5)


def test_match_heads_and_extract_features_follow_lavis():
    model = sharpen(tiny(BlipImageTextMatching))
    samples = {"image": images(2), "text_input": CAPTIONS[:2]}
    itm = model(samples, match_head="itm")
    itc = model(samples, match_head="itc")
    assert itm.shape == (2, 2) and itc.shape == (2, 2)
    text = model.tokenize(CAPTIONS[:2], padding="longest")
    feats = model.extract_features(samples, mode="image")
    txt = model.extract_features(samples, mode="text")
    torch.testing.assert_close(itc, feats.image_embeds_proj[:, 0] @ txt.text_embeds_proj[:, 0].t())
    assert set(feats.keys()) == {"image_embeds", "image_embeds_proj"} and feats.text_embeds is None
    assert feats.image_embeds_proj.shape == (2, 17, 16)
    torch.testing.assert_close(feats.image_embeds_proj.norm(dim=-1), torch.ones(2, 17))
    assert txt.text_embeds.shape == (2, text.input_ids.shape[1], 32) and set(txt) == {"text_embeds", "text_embeds_proj"}
    mm = model.extract_features(samples)  # multimodal: the [ENC] text over the image, as LAVIS's default
    assert set(mm) == {"image_embeds", "multimodal_embeds"}
    torch.testing.assert_close(model.blip.itm_head(mm.multimodal_embeds[:, 0]), itm)
    with pytest.raises(ValueError, match="mode"):
        model.extract_features(samples, mode="audio")
    with pytest.raises(ValueError, match="match_head"):
        model(samples, match_head="itg")
    fe = tiny(BlipFeatureExtractor)
    assert fe.queue_size == 0 and not hasattr(fe, "momentum_model")
    assert torch.isfinite(fe.train()(batch())["loss"])  # trains in-batch, without momentum distillation


def test_save_hf_reloads_as_transformers_blip_for_image_text_retrieval(tmp_path):
    from transformers import BlipForImageTextRetrieval

    model = sharpen(tiny(BlipImageTextMatching))
    out = model.save_hf(str(tmp_path / "hf"))
    hf = BlipForImageTextRetrieval.from_pretrained(out).eval()
    text = model.tokenize(CAPTIONS[:2], padding="longest")
    with torch.no_grad():
        theirs = hf(input_ids=model.with_enc(text.input_ids), attention_mask=text.attention_mask, pixel_values=images(2)).itm_score
    torch.testing.assert_close(theirs, model(  # transformers' ITM, given [ENC] ids, is LAVIS's
        {"image": images(2), "text_input": CAPTIONS[:2]}, match_head="itm"), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- weights
def trained(seed: int = 0):
    """A tiny retrieval model after one step (momentum != online, queue filled)."""
    model = sharpen(tiny(seed=seed))
    perturb_momentum(model)
    model.train()
    model(batch())
    return model.eval()


def test_lavis_checkpoint_round_trip_keeps_every_tensor_and_output(tmp_path):
    source = trained()
    lavis = to_lavis_blip(source.state_dict())
    for name in ("visual_encoder.blocks.0.attn.qkv.weight", "visual_encoder.pos_embed", "visual_encoder.norm.weight",
                 "visual_encoder_m.patch_embed.proj.weight", "text_encoder.encoder.layer.1.crossattention.self.query.weight",
                 "text_encoder_m.embeddings.word_embeddings.weight", "vision_proj.weight", "text_proj_m.bias",
                 "itm_head.weight", "temp", "image_queue", "text_queue", "idx_queue", "queue_ptr"):
        assert name in lavis, name
    assert not any(k.startswith(("blip.", "momentum_model.")) for k in lavis)
    path = atomic_save({"model": lavis}, tmp_path / "blip_coco_retrieval.pth")

    fresh = tiny(seed=7)
    report = load_lavis_blip(fresh, str(path))
    assert report.missing == [] and report.unexpected == [] and report.dropped == []
    for key, value in source.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    torch.manual_seed(0)
    expected = source(batch())["loss"]
    torch.manual_seed(0)
    assert torch.equal(expected, fresh(batch())["loss"])
    # from_config with LAVIS's rule: load_finetuned reads only `finetuned` (pretrained need not exist)
    again = tiny(seed=8, load_finetuned=True, finetuned=str(path), load_pretrained=True, pretrained=str(tmp_path / "absent.pth"))
    assert torch.equal(again.blip.itm_head.weight, source.blip.itm_head.weight) and int(again.queue_ptr) == 0


def test_a_pretraining_checkpoint_fills_a_retrieval_model_and_reports_the_rest(tmp_path):
    source = trained()
    lavis = to_lavis_blip(source.state_dict())
    del lavis["idx_queue"]  # BLIP pre-training has no id queue ...
    lavis["image_queue"] = torch.randn(16, 32)  # ... and another queue size here
    lavis["text_decoder.cls.predictions.bias"] = torch.zeros(5)  # a part retrieval does not have
    lavis["text_encoder.embeddings.position_ids"] = torch.arange(32)[None]
    lavis["text_encoder.encoder.layer.5.output.dense.weight"] = torch.zeros(32, 64)  # deeper than the model
    fresh = tiny(seed=7)
    report = load_lavis_blip(fresh, {"model": lavis})
    assert sorted(report.missing) == ["idx_queue", "image_queue"]
    assert report.unexpected == ["text_encoder.encoder.layer.5.output.dense.weight"]
    assert set(report.dropped) == {"image_queue", "text_decoder.cls.predictions.bias", "text_encoder.embeddings.position_ids"}

    # an ITM model has no momentum encoders or queues: they are dropped, nothing is unexpected
    itm = tiny(BlipImageTextMatching, seed=7)
    report = load_lavis_blip(itm, {"model": to_lavis_blip(source.state_dict())})
    assert report.missing == [] and report.unexpected == []
    assert any(k.startswith("visual_encoder_m.") for k in report.dropped) and "image_queue" in report.dropped

    # without momentum encoders in the file, they start as copies of the loaded online ones
    online_only = {k: v for k, v in to_lavis_blip(source.state_dict()).items() if "_m." not in k}
    fresh = tiny(seed=9)
    fresh.load_checkpoint({"model": online_only})
    for key, value in fresh.blip.vision_model.named_parameters():
        assert torch.equal(dict(fresh.momentum_model["vision_model"].named_buffers())[key], value)


def test_a_lavis_checkpoint_at_another_image_size_has_its_position_embeddings_resized():
    big = tiny(seed=0, image_size=48)
    small = tiny(seed=1)
    report = load_lavis_blip(small, {"model": to_lavis_blip(big.state_dict())})
    assert report.missing == [] and report.unexpected == []
    assert small.momentum_model["vision_model"].embeddings.position_embedding.shape == (1, 17, 32)
    assert torch.equal(small.blip.vision_model.embeddings.position_embedding[:, 0], big.blip.vision_model.embeddings.position_embedding[:, 0])


def test_momentum_encoders_and_queues_are_buffers_saved_with_the_model_and_not_broadcast_by_ddp():
    model = tiny()
    params = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("momentum_model.") for n in params)
    saved = model_state(model)
    assert "momentum_model.text_encoder.embeddings.word_embeddings.weight" in saved and "idx_queue" in saved
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    assert {"image_queue", "text_queue", "idx_queue", "queue_ptr",
            "momentum_model.vision_model.encoder.layers.0.self_attn.qkv.weight"} <= ignored
    assert all(not n.startswith("blip.") for n in ignored)
    # transformers' names, so layer-wise LR decay finds the ViT blocks
    assert "blip.vision_model.encoder.layers.1.self_attn.qkv.weight" in params


def test_vit_gradient_checkpointing_covers_the_last_blocks_and_keeps_the_gradients():
    plain, ckpt = tiny(seed=0), tiny(seed=0, vit_grad_ckpt=True, vit_ckpt_layer=1)
    layers = ckpt.blip.vision_model.encoder.layers
    assert [layer.gradient_checkpointing for layer in layers] == [False, True]
    grads = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(3)
        model(batch())["loss"].backward()
        grads.append(model.blip.vision_model.encoder.layers[1].self_attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
