"""Florence-2 (``florence2``, tiny type): the inputs and loss agree with transformers'
processor and model, quantise -> text -> parse round trip, malformed outputs counted,
the box-score rule, batched generation, export to transformers, frozen half-precision
parts."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
from omegaconf import OmegaConf

from vlft.datasets.synthetic_shapes import make_scene
from vlft.models.florence2.tokenizer import BART_SPECIALS, florence_tokens
from vlft.processors.florence2 import (TASK_PROMPTS, TASK_PROMPTS_WITH_INPUT, Florence2ImageEvalProcessor,
                                       boxes_to_text, construct_prompt, dequantize, parse_boxes,
                                       post_process_generation, quantize)
from vlft.zoo import load_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("florence2", "tiny", is_eval=True)


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(i, image_size=64)["image"] for i in range(3)]


@pytest.fixture(scope="module")
def hf_processor(model):
    return model.processor(64)


def tiny_cfg(**overrides):
    cfg = OmegaConf.load("configs/models/florence2/tiny.yaml").model
    cfg.update(overrides)
    return cfg


def test_tokenizer_is_bart_plus_florence_tokens(model):
    tok = model.tokenizer
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == BART_SPECIALS
    assert len(florence_tokens()) == 1024 and florence_tokens()[4] == "<loc_0>"
    ids = tok("red circle<loc_7><loc_999>", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids[-2:]) == ["<loc_7>", "<loc_999>"]
    assert tok.decode(ids) == "red circle<loc_7><loc_999>"
    assert tok.image_token == "<image>" and tok.image_token_id == model.image_token_id == len(tok) - 1


def test_prompts_match_transformers(hf_processor):
    for task in TASK_PROMPTS:
        assert construct_prompt(task) == hf_processor._construct_prompts(task)[0] == TASK_PROMPTS[task]
    for task in TASK_PROMPTS_WITH_INPUT:
        assert construct_prompt(f"{task}a red circle") == hf_processor._construct_prompts(f"{task}a red circle")[0]
    assert construct_prompt("free text") == "free text"
    with pytest.raises(ValueError, match="exactly '<OD>'"):
        construct_prompt("<OD> extra")


def test_inputs_and_loss_match_transformers(model, scenes, hf_processor):
    prompts, targets = ["<OD>", "<CAPTION_TO_PHRASE_GROUNDING>a red circle"], ["red circle<loc_1><loc_2><loc_3><loc_4>", "a"]
    ours_pixels = torch.stack([Florence2ImageEvalProcessor(64)(im) for im in scenes[:2]])
    ref = hf_processor(text=prompts, images=scenes[:2], return_tensors="pt", padding=True)
    assert model.num_image_tokens(64, 64) == 5 and model.num_image_tokens(768, 768) == 577
    ours = model.encoder_inputs(ours_pixels, prompts)
    assert torch.equal(ours["input_ids"], ref["input_ids"]) and torch.equal(ours["attention_mask"], ref["attention_mask"])
    assert torch.allclose(ours_pixels, ref["pixel_values"], atol=1e-4)
    labels = hf_processor.tokenizer(targets, return_tensors="pt", padding=True)
    labels = labels.input_ids.masked_fill(labels.attention_mask == 0, -100)
    with torch.no_grad():
        expected = model.hf(**ref, labels=labels).loss
        got = model({"image": ours_pixels, "text_input": prompts, "text_output": targets})["loss"]
    assert torch.allclose(got, expected, atol=1e-5)


def test_quantise_text_parse_round_trip(hf_processor):
    boxes, size = [[3.2, 10.0, 40.7, 63.9], [0.0, 0.0, 64.0, 64.0]], (64, 48)
    text = boxes_to_text(["red circle", "blue square"], boxes, size)
    bins = quantize(boxes, size)
    # transformers quantises the same way (floor, clamp to 0..999)
    assert torch.equal(bins, hf_processor.post_processor.quantize(torch.tensor(boxes), size).long())
    assert text == "red circle<loc_50><loc_208><loc_635><loc_999>blue square<loc_0><loc_0><loc_999><loc_999>"
    parsed = parse_boxes(text, size)
    assert parsed.labels == ["red circle", "blue square"] and not parsed.malformed
    # bin centres: within half a bin of the truth (except the clamped edge at 64)
    assert parsed.boxes[0] == pytest.approx([3.232, 10.008, 40.672, 47.976], abs=1e-9)
    bin_size = [64 / 1000, 48 / 1000, 64 / 1000]
    assert all(abs(a - b) <= 0.5 * w + 1e-9 for a, b, w in zip(parsed.boxes[0][:3], boxes[0][:3], bin_size))
    # the native post-processing truncates the same centres to ints
    native = hf_processor.post_process_generation(text, task="<OD>", image_size=size)["<OD>"]
    assert native["labels"] == parsed.labels
    assert native["bboxes"] == [[int(v) for v in b] for b in parsed.boxes]
    ours = post_process_generation(text, "<OD>", size)["<OD>"]
    assert ours["bboxes"] == parsed.boxes and ours["malformed"] == {}
    # one label and 8 loc tokens: two boxes, as transformers reads it
    two = parse_boxes("car<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>", (1000, 1000))
    assert two.labels == ["car", "car"] and two.boxes[1] == [5.5, 6.5, 7.5, 8.5]
    assert dequantize([[0, 0, 999, 999]], (1000, 1000)).tolist() == [[0.5, 0.5, 999.5, 999.5]]


@pytest.mark.parametrize("text, boxes, malformed", [
    ("red circle<loc_1><loc_2><loc_3>", 0, {"incomplete_box": 1}),
    ("red circle<loc_1><loc_2><loc_3><loc_4><loc_5>", 1, {"incomplete_box": 1}),
    ("", 0, {"empty_output": 1}),
    ("</s>", 0, {"empty_output": 1}),
    ("<loc_1><loc_2><loc_3><loc_4>", 0, {"empty_label": 1}),
    ("a red circle", 0, {"text_without_box": 1}),
    ("cat<loc_9><loc_9><loc_1><loc_1>dog<loc_1><loc_1><loc_5><loc_5>", 1, {"inverted_box": 1}),
    ("cat<loc_1><loc_1><loc_5><loc_5>trailing words", 1, {"text_without_box": 1}),
])
def test_malformed_outputs_are_counted(text, boxes, malformed):
    parsed = parse_boxes(text, (100, 100))
    assert len(parsed.boxes) == boxes and dict(parsed.malformed) == malformed


def test_box_score_is_the_mean_probability_of_its_tokens(model, scenes):
    image = torch.stack([Florence2ImageEvalProcessor(64)(im) for im in scenes[:1]])
    tok = model.tokenizer
    target = "red circle<loc_10><loc_20><loc_300><loc_400>blue square<loc_500><loc_20><loc_900><loc_400>"
    ids = [2] + tok(target).input_ids  # decoder start, <s> ... </s>
    seqs = torch.tensor([ids])
    inputs = model.encoder_inputs(image, ["<OD>"])
    out = model.read_boxes({"image": image, "orig_size": torch.tensor([[640.0, 480.0]])}, inputs, seqs)[0]
    assert out["labels"] == ["red circle", "blue square"] and not out["malformed"]
    assert out["bboxes"][0] == pytest.approx([6.72, 9.84, 192.32, 192.24])
    with torch.no_grad():
        logits = model.hf(pixel_values=image, **inputs, decoder_input_ids=seqs[:, :-1]).logits
    logp = torch.log_softmax(logits.float(), -1)[0].gather(-1, seqs[0, 1:, None]).squeeze(-1)
    n_label = len(tok("red circle", add_special_tokens=False).input_ids)
    first = list(range(1, 1 + n_label + 4))  # after <s>: the label's tokens and its four loc tokens
    assert out["scores"][0] == pytest.approx(float(logp[first].mean().exp()), rel=1e-5)
    assert 0 < out["scores"][1] < 1


def test_batched_generation_matches_one_image_at_a_time(model, scenes):
    vis = Florence2ImageEvalProcessor(64)
    batch = {"image": torch.stack([vis(im) for im in scenes]), "prompt": ["<OD>", "<CAPTION>", "<OD>"]}
    together = model.generate(batch, num_beams=3, max_length=12)
    alone = [model.generate({"image": batch["image"][i:i + 1], "prompt": [p]}, num_beams=3, max_length=12)[0]
             for i, p in enumerate(batch["prompt"])]
    assert together == alone and all(isinstance(t, str) for t in together)


def test_save_hf_loads_in_transformers(model, scenes, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model.save_hf(str(tmp_path / "hf"))
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf").eval()
    inputs = processor(text=["<OD>"], images=scenes[:1], return_tensors="pt")
    with torch.no_grad():
        dec = torch.tensor([[2, 0]])
        assert torch.allclose(loaded(**inputs, decoder_input_ids=dec).logits,
                              model.hf(**inputs, decoder_input_ids=dec).logits, atol=1e-6)
    assert processor.post_process_generation("red circle<loc_0><loc_0><loc_500><loc_500>", task="<OD>",
                                             image_size=(64, 64))["<OD>"]["labels"] == ["red circle"]


def test_frozen_vision_in_half_precision_trains_the_rest(scenes):
    from vlft.models.florence2.model import Florence2

    m = Florence2.from_config(tiny_cfg(freeze_vision=True, vision_precision="bf16", freeze_projector=True))
    vision = list(m.model.vision_tower.parameters())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in vision)
    assert all(not p.requires_grad for p in m.model.multi_modal_projector.parameters())
    m.train()
    assert not m.model.vision_tower.training and m.model.language_model.training
    image = torch.stack([Florence2ImageEvalProcessor(64)(im) for im in scenes[:2]])
    batch = {"image": image, "text_input": ["a red circle", "a blue square"]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and m.lm_head.weight.grad is not None
    with pytest.raises(ValueError, match="vision_precision must be one of"):
        Florence2.from_config(tiny_cfg(freeze_vision=True, vision_precision="int8"))
    with pytest.raises(ValueError, match="trust_remote_code is not used"):
        Florence2.from_config(tiny_cfg(trust_remote_code=True))


def test_gradient_checkpointing_gives_the_same_gradients(scenes):
    from vlft.models.florence2.model import Florence2

    image = torch.stack([Florence2ImageEvalProcessor(64)(im) for im in scenes[:2]])
    batch = {"image": image, "text_input": ["a red circle", "a blue square"]}
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        m = Florence2.from_config(tiny_cfg(use_grad_checkpoint=flag)).train()
        m(batch)["loss"].backward()
        grads.append(m.model.language_model.encoder.layers[0].fc1.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_tiny_tokenizer_is_rebuilt_identically(model, tmp_path, monkeypatch):
    from vlft.models.florence2.tokenizer import tiny_tokenizer

    monkeypatch.setenv("VLFT_CACHE_ROOT", str(tmp_path))
    fresh = tiny_tokenizer()
    assert list((tmp_path / "tokenizers").glob("florence2_tiny_*/tokenizer_config.json"))
    assert fresh.get_vocab() == model.tokenizer.get_vocab() and fresh.image_token_id == model.image_token_id


def test_loc_tokens_start_ordered(model):
    table = model.model.language_model.shared.weight
    ids = model.tokenizer.convert_tokens_to_ids(["<loc_100>", "<loc_101>", "<loc_900>"])
    near = torch.cosine_similarity(table[ids[0]], table[ids[1]], dim=0)
    far = torch.cosine_similarity(table[ids[0]], table[ids[2]], dim=0)
    assert near > 0.9 and far < near - 0.3
