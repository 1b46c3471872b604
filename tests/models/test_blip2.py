"""BLIP-2 on the tiny model types: the stage-1 losses and their masks, features,
matching, the stage-2 inputs, generation, answer ranking, the frozen bf16 ViT, LoRA on
the language model, LAVIS checkpoint import and HF export."""
from __future__ import annotations

from tests import helpers  # (sets HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch

import vlft.models  # noqa: F401  (registers the models)
from vlft.common.registry import registry
from vlft.datasets.synthetic_shapes import make_scene

CAPTIONS = ["a red circle to the left of a blue square", "a green triangle to the left of a red square",
            "a blue square to the left of a green circle", "a red triangle to the left of a red circle"]


def tiny(name: str, seed: int = 0, **overrides):
    """In training mode, as ``from_config`` leaves it."""
    cls = registry.get_model_class(name)
    cfg = helpers.tiny_cfg(cls, **overrides)
    torch.manual_seed(seed)
    return cls.from_config(cfg)


def sharpen(model, seed: int = 0, std: float = 0.3):
    """Larger random Q-Former-side weights, so that features, similarities and captions
    depend on the image and the text."""
    return helpers.sharpen(model, seed, std, only=("qformer", "projection", "embeddings", "query_tokens"))


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    from torchvision.transforms.functional import to_tensor

    return torch.stack([to_tensor(make_scene(i, image_size=size)["image"]) for i in range(n)])


def batch(n: int = 4):
    return {"image": images(n), "text_input": CAPTIONS[:n], "image_id": torch.arange(n)}


# ---------------------------------------------------------------- stage 1
def test_stage1_losses_and_gradients():
    model = tiny("blip2").train()
    out = model(batch())
    assert set(out) == {"loss", "loss_itc", "loss_itm", "loss_itg"}
    assert torch.isclose(out["loss"], out["loss_itc"] + out["loss_itm"] + out["loss_itg"])
    out["loss"].backward()
    assert model.temp.grad is not None and model.blip2.query_tokens.grad.abs().sum() > 0
    assert model.itg_head.dense.weight.grad.abs().sum() > 0
    vit = model.blip2.vision_model
    assert all(p.grad is None for n, p in vit.named_parameters() if not n.startswith("post_layernorm"))
    assert vit.post_layernorm.weight.grad is not None  # LAVIS's ln_vision trains
    assert not vit.training  # the frozen ViT stays in eval mode


def test_itg_mask_hides_text_from_queries_and_the_future():
    model = tiny("blip2").eval()
    vit, _ = model.encode_image(images(1))
    tok = model.tokenize(["a red circle to the left of a blue square"])
    ids, atts = tok.input_ids.clone(), tok.attention_mask
    base = model.encode_multimodal(vit, ids, atts, causal_text=True)
    changed = ids.clone()
    changed[0, 5] = changed[0, 2]  # a later token changes
    other = model.encode_multimodal(vit, changed, atts, causal_text=True)
    q = model.num_query
    assert torch.allclose(base[:, :q], other[:, :q], atol=1e-6)  # queries never see the text
    assert torch.allclose(base[:, q:q + 5], other[:, q:q + 5], atol=1e-6)  # earlier tokens do not see it
    assert not torch.allclose(base[:, q + 5], other[:, q + 5])
    # without the causal mask the queries do see the text (ITM)
    full = model.encode_multimodal(vit, ids, atts)
    assert not torch.allclose(full[:, :q], base[:, :q])


def test_itc_never_uses_the_same_image_as_a_negative():
    from vlft.models.blip2.blip2_qformer import Blip2Qformer, _sample_negatives

    same = Blip2Qformer.same_image(torch.tensor([0, 0, 1, 2]), 4, 4, torch.device("cpu"))
    assert same.tolist()[0] == [True, True, False, False]
    assert torch.equal(Blip2Qformer.same_image(["a", "a", "b", "c"], 4, 4, torch.device("cpu")), same)
    assert torch.equal(Blip2Qformer.same_image(None, 4, 4, torch.device("cpu")), torch.eye(4, dtype=torch.bool))
    sim = torch.randn(4, 4)
    for _ in range(20):
        neg = _sample_negatives(sim, same)
        assert not same[torch.arange(4), neg].any()


def test_features_and_matching_shapes():
    model = tiny("blip2_feature_extractor").eval()
    s = batch(2)
    image = model.extract_features(s, mode="image")
    text = model.extract_features(s, mode="text")
    multi = model.extract_features(s, mode="multimodal")
    assert image["image_embeds"].shape == (2, 4, 32) and image["image_embeds_proj"].shape == (2, 4, 16)
    assert torch.allclose(image["image_embeds_proj"].norm(dim=-1), torch.ones(2, 4), atol=1e-5)
    # LAVIS's text features: every position of the batch's longest text, projected ([:, 0] is [CLS])
    assert text["text_embeds_proj"].shape[::2] == (2, 16) and multi["multimodal_embeds"].shape == (2, 4, 32)
    assert text["text_embeds_proj"].shape[1] == text["text_embeds"].shape[1] < model.max_txt_len
    with pytest.raises(ValueError, match="mode"):
        model.extract_features(s, mode="audio")
    itm = tiny("blip2_image_text_matching").eval()
    assert itm(s, match_head="itm").shape == (2, 2)
    sim = itm(s, match_head="itc")
    feats = itm.retrieval_image_features(s["image"])["feat"]
    text_feat = itm.retrieval_text_features(s["text_input"])["feat"]
    assert torch.allclose(sim, itm.retrieval_similarity(feats, text_feat).diagonal(), atol=1e-5)


def test_frozen_vit_in_bf16_with_grad_checkpointing_trains():
    model = tiny("blip2", vit_precision="bf16", use_grad_checkpoint=True).train()
    vit = model.blip2.vision_model
    assert vit.encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert vit.post_layernorm.weight.dtype == torch.float32
    out = model(batch())
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.blip2.query_tokens.grad.abs().sum() > 0


def test_stage1_hf_export_matches(tmp_path):
    from transformers import Blip2ForImageTextRetrieval

    model = tiny("blip2").eval()
    s = batch(2)
    hf = Blip2ForImageTextRetrieval.from_pretrained(model.save_hf(str(tmp_path / "hf"))).eval()
    tok = model.tokenize(s["text_input"])
    with torch.no_grad():
        itm = hf(pixel_values=s["image"], input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                 use_image_text_matching_head=True).logits_per_image
    assert torch.allclose(itm, model(s, match_head="itm"), atol=1e-5)


def test_stage1_lavis_checkpoint_round_trip(tmp_path):
    from vlft.models.convert.lavis_blip2 import to_lavis_blip2

    source = tiny("blip2", seed=1).eval()
    lavis = to_lavis_blip2(source.state_dict())
    assert "Qformer.bert.encoder.layer.0.attention.self.query.weight" in lavis and "ln_vision.weight" in lavis
    torch.save({"model": lavis}, tmp_path / "blip2_lavis.pth")
    target = tiny("blip2", seed=2, load_pretrained=True, pretrained=str(tmp_path / "blip2_lavis.pth")).eval()
    s = batch(2)
    assert torch.allclose(target(s, match_head="itm"), source(s, match_head="itm"), atol=1e-6)


# ---------------------------------------------------------------- stage 2
@pytest.mark.parametrize("name", ["blip2_opt", "blip2_t5"])
def test_stage2_trains_only_qformer_side(name):
    model = tiny(name).train()
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"query_tokens", "qformer", "language_projection", "vision_model"}  # vision: ln_vision only
    out = model(batch(2))
    out["loss"].backward()
    assert model.blip2.language_projection.weight.grad.abs().sum() > 0


def test_opt_inputs_mask_queries_prompt_and_padding():
    model = tiny("blip2_opt", prompt="a photo of").eval()
    sources, targets = model.sources_targets({"text_input": ["a photo of a red circle", "a blue square"]})
    assert sources == ["a photo of", "a photo of"] and targets == ["a red circle", "a blue square"]
    query = torch.zeros(2, 4, 32)
    inputs = model.lm_inputs(query, sources, targets)
    labels = inputs["labels"]
    learned = [model.tokenizer.decode(row[row != -100]) for row in labels]
    assert learned == ["a red circle </s>", "a blue square </s>"]  # only the caption and its end are learned
    assert (labels[:, :4] == -100).all() and inputs["inputs_embeds"].shape[1] == labels.shape[1]
    qa = model.sources_targets({"text_input": ["what shape?"], "text_output": ["square"]}, prompt="Question: {} Short answer:")
    assert qa == (["Question: what shape? Short answer:"], ["square"])


def train_steps(model, samples, steps: int, lr: float = 3e-3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(samples)["loss"].backward()
        opt.step()
    return model.eval()


def test_opt_learns_each_images_caption():
    """Unfrozen tiny OPT: 150 steps on two images, then greedy decoding writes each
    image's caption (the queries carry the image) and ranking picks each image's caption."""
    model = train_steps(tiny("blip2_opt", freeze_llm=False), {"image": images(2), "text_input": CAPTIONS[:2]}, 150)
    s = {"image": images(2), "text_input": ["", ""]}
    assert model.generate(s, num_beams=1, max_length=12) == CAPTIONS[:2]
    assert model.predict_answers(s, inference_method="rank", answer_list=CAPTIONS[:2], prompt="") == CAPTIONS[:2]


def test_t5_learns_answers_to_questions():
    """Unfrozen tiny T5 on question / answer pairs (``text_output``): the prompt-formatted
    question goes to the encoder after the queries, the answer is decoded."""
    questions, answers = ["what colour is the left shape?", "what shape is on the right?"], ["red", "square"]
    samples = {"image": images(2), "text_input": questions, "text_output": answers}
    model = train_steps(tiny("blip2_t5", freeze_llm=False, prompt="Question: {} Short answer:"), samples, 60)
    s = {"image": images(2), "text_input": questions}
    assert model.predict_answers(s, max_len=3) == answers
    assert model.predict_answers(s, inference_method="rank", answer_list=["square", "red", "blue"]) == answers


def test_rank_needs_an_answer_list():
    model = tiny("blip2_t5").eval()
    with pytest.raises(ValueError, match="answer_list"):
        model.predict_answers({"image": images(1), "text_input": ["what?"]}, inference_method="rank")


def test_lora_on_the_language_model():
    from vlft.models.adapters import apply_peft

    model = apply_peft(tiny("blip2_opt"), {"method": "lora", "target_modules": ["q_proj", "v_proj"], "r": 4})
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all("language_model" in n for n in lora)
    out = model(batch(2))
    out["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("name", ["blip2_opt", "blip2_t5"])
def test_stage2_hf_export_generates_the_same(name, tmp_path):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    model = tiny(name, seed=3).eval()
    with torch.no_grad():  # sharper random weights, so that outputs depend on the image
        for p in model.blip2.language_projection.parameters():
            p.mul_(20)
    out = model.save_hf(str(tmp_path / "hf"))
    hf = Blip2ForConditionalGeneration.from_pretrained(out).eval()
    processor = Blip2Processor.from_pretrained(out)
    inputs = processor(images=[make_scene(i, image_size=32)["image"] for i in range(2)], text=["", ""], return_tensors="pt")
    s = {"image": inputs["pixel_values"], "text_input": ["", ""]}
    # min_length counts as in LAVIS 1.0.2 (the prompt's BOS / T5's decoder start too): 2 forces 1 new token
    ours = model.generate(s, num_beams=1, max_length=6, min_length=2)
    ids = hf.generate(pixel_values=s["image"], input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                      max_new_tokens=6, min_new_tokens=1, num_beams=1, do_sample=False)
    from vlft.models.blip2.blip2_base import decode_texts  # LAVIS's text from ids (transformers 4.26's cleanup)

    theirs = decode_texts(processor.tokenizer, ids if not model.decoder_only else ids[:, inputs["input_ids"].shape[1]:])
    assert theirs == ours


def test_stage2_loads_a_lavis_stage1_checkpoint(tmp_path, caplog):
    """LAVIS's pretrain_stage2 starts from the stage-1 weights: the Q-Former side loads;
    the ITM / ITG / text parts have no place and are reported, not fatal."""
    from vlft.models.convert.lavis_blip2 import to_lavis_blip2

    stage1 = tiny("blip2", seed=4)
    torch.save({"model": to_lavis_blip2(stage1.state_dict())}, tmp_path / "stage1.pth")
    stage2 = tiny("blip2_opt", seed=5)
    missing, unexpected = stage2.load_checkpoint(str(tmp_path / "stage1.pth"))
    assert torch.equal(stage2.blip2.query_tokens, stage1.blip2.query_tokens)
    assert torch.equal(stage2.blip2.qformer.encoder.layer[0].crossattention.attention.key.weight,
                       stage1.blip2.qformer.encoder.layer[0].crossattention.attention.key.weight)
    assert any("itm_head" in k for k in unexpected)
    assert any("language_model" in k for k in missing)


@pytest.mark.parametrize("name", ["blip2", "blip2_opt"])
def test_fp16_frozen_parts_under_bf16_autocast(name):
    """LAVIS's fp16 ViT (and fp16 OPT) with run.amp: bf16: the frozen parts run in their own
    dtype (autocast refuses to mix fp16 and bf16 in one op)."""
    extra = {"llm_precision": "fp16"} if name == "blip2_opt" else {}
    model = tiny(name, vit_precision="fp16", **extra).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch(2))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.blip2.query_tokens.grad.abs().sum() > 0
    if name == "blip2_opt":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert len(model.eval().generate(batch(2), num_beams=2, max_length=3)) == 2
