"""BLIP VQA (``blip_vqa``) on the tiny model type: the zoo API, the weighted multi-answer
loss, generation and two-stage ranking, checkpoints (vlft and LAVIS-named), HF export and LoRA."""
from __future__ import annotations

from tests.helpers import sharpen, tiny_model, tiny_cfg  # (sets HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import vlft.models  # noqa: F401  (registers the models)
from vlft.datasets.synthetic_shapes import make_scene
from vlft.models.adapters import apply_peft
from vlft.models.blip.blip_caption import build_blip_config, load_tokenizer
from vlft.models.blip.blip_vqa import BlipVqa
from vlft.models.convert.lavis_blip import hf_to_lavis_key
from vlft.runners.checkpoint import atomic_save
from vlft.zoo import load_model_and_preprocess

QUESTIONS = ["what colour is the left shape?", "is there a red circle to the left of a blue square?"]
ANSWERS = ["red", "green", "yes"]  # two answers for the first question, one for the second
CANDIDATES = ["red", "green circle", "blue square", "yes", "no", "triangle"]  # distinct first words


def tiny(seed: int = 0, **overrides) -> BlipVqa:
    return tiny_model(BlipVqa, seed, **overrides)


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def batch(weights=(0.7, 0.3, 1.0)) -> dict:
    return {"image": images(2), "text_input": QUESTIONS, "answers": ANSWERS,
            "weights": torch.tensor(weights), "n_answers": torch.tensor([2, 1])}


def answer_logprob(model: BlipVqa, image: torch.Tensor, question: str, answer: str, smoothing: float = 0.0,
                   reduce_first: bool = False) -> torch.Tensor:
    """One question with one answer, unbatched and unpadded: the summed token cross-entropy
    (``smoothing``), or the first answer token's log-probability."""
    states, mask = model.encode_question(image[None], [question])
    ids = model.answer_ids([answer]).input_ids
    logits = model.blip.text_decoder(input_ids=ids, encoder_hidden_states=states, encoder_attention_mask=mask).logits[0]
    if reduce_first:
        return F.log_softmax(logits[0], -1)[ids[0, 1]]
    return F.cross_entropy(logits[:-1], ids[0, 1:], label_smoothing=smoothing, reduction="sum")


# ---------------------------------------------------------------- zoo API, tokens, loss
def test_load_model_and_preprocess_gives_the_tiny_model_and_question_processors():
    model, vis, txt = load_model_and_preprocess(name="blip_vqa", model_type="tiny", is_eval=True)
    assert isinstance(model, BlipVqa) and not model.training
    image = make_scene(0, image_size=64)["image"]
    assert vis["train"](image).shape == vis["eval"](image).shape == (3, 32, 32)
    assert txt["eval"]("What colour is the LEFT shape?") == "what colour is the left shape?"
    assert model.blip.text_decoder.label_smoothing == 0.1 == model.blip.config.text_config.label_smoothing
    answers = model.predict_answers({"image": vis["eval"](image).unsqueeze(0), "text_input": "what shape is on the right?"})
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_questions_start_with_enc_when_the_tokenizer_has_it_else_cls():
    model = tiny()
    tok = model.tokenizer
    assert model.enc_token_id is None  # the word-level shapes tokenizer has no [ENC]
    assert (model.question_ids(QUESTIONS).input_ids[:, 0] == tok.cls_token_id).all()
    answers = model.answer_ids(["red", "blue square"])
    assert (answers.input_ids[:, 0] == tok.bos_token_id).all()  # answers are decoded from [DEC]
    assert answers.input_ids[0, 2] == answers.input_ids[1, 3] == tok.sep_token_id  # ... and end with [SEP]

    # a BERT-style tokenizer with [ENC] (as BLIP's): LAVIS puts [ENC] where [CLS] was
    enc_tok = load_tokenizer("shapes_qa")
    enc_tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    from transformers import BlipForQuestionAnswering

    enc_model = BlipVqa(BlipForQuestionAnswering(build_blip_config(tiny_cfg(BlipVqa), enc_tok)), enc_tok).eval()
    enc_id = enc_tok.convert_tokens_to_ids("[ENC]")
    assert enc_model.enc_token_id == enc_id
    seen = {}
    handle = enc_model.blip.text_encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    enc_model.predict_answers({"image": images(2), "text_input": QUESTIONS}, max_len=4)
    handle.remove()
    plain = enc_tok(QUESTIONS, padding="longest", return_tensors="pt").input_ids
    assert (seen["input_ids"][:, 0] == enc_id).all() and torch.equal(seen["input_ids"][:, 1:], plain[:, 1:])


def test_loss_is_the_weighted_sum_of_per_answer_losses_over_the_batch_size():
    model = sharpen(tiny())
    loss = model(batch())["loss"]
    image = images(2)
    per_answer = [answer_logprob(model, image[b], QUESTIONS[b], a, smoothing=0.1)
                  for b, a in [(0, "red"), (0, "green"), (1, "yes")]]
    expected = (0.7 * per_answer[0] + 0.3 * per_answer[1] + 1.0 * per_answer[2]) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    unsmoothed = sum(w * answer_logprob(model, image[b], QUESTIONS[b], a)
                     for w, (b, a) in zip((0.7, 0.3, 1.0), [(0, "red"), (0, "green"), (1, "yes")])) / 2
    assert not torch.isclose(loss, unsmoothed)  # label smoothing 0.1 is in effect
    # the weights enter linearly, and LAVIS's singular key names work too
    lavis_keys = {"image": images(2), "text_input": QUESTIONS, "answer": ANSWERS, "weight": [0.7, 0.0, 1.0], "n_answers": [2, 1]}
    torch.testing.assert_close(model(lavis_keys)["loss"], (0.7 * per_answer[0] + per_answer[2]) / 2, rtol=1e-5, atol=1e-5)


def test_backward_reaches_vision_question_encoder_and_answer_decoder():
    model = tiny().train()
    model(batch())["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("blip.vision_model.embeddings.patch_embedding.weight",
                 "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight",
                 "blip.text_encoder.encoder.layer.1.attention.self.value.weight",
                 "blip.text_decoder.bert.encoder.layer.0.crossattention.self.query.weight",
                 "blip.text_decoder.cls.predictions.transform.dense.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_inconsistent_answer_fields_fail_with_a_clear_message():
    model = tiny()
    with pytest.raises(ValueError, match="n_answers"):
        model({**batch(), "n_answers": torch.tensor([1, 1])})
    with pytest.raises(KeyError, match="weights"):
        model({k: v for k, v in batch().items() if k != "weights"})


def test_a_few_steps_on_one_batch_make_the_ranked_answers_right():
    model = tiny().train()
    # the same question on two images: the answer must come from the image
    fixed = {"image": images(2, seed=3), "text_input": [QUESTIONS[0]] * 2, "answers": ["green", "red", "blue"],
             "weights": torch.tensor([0.8, 0.2, 1.0]), "n_answers": torch.tensor([2, 1])}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model(fixed)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < first / 2
    answers = ["red", "green", "blue", "circle", "square", "triangle", "yes", "no"]
    assert model.predict_answers(fixed, inference_method="rank", answer_list=answers) == ["green", "blue"]
    assert model.predict_answers(fixed, inference_method="generate") == ["green", "blue"]


# ---------------------------------------------------------------- generation
def test_generate_matches_transformers_generate_and_honours_the_decoding_arguments():
    model = sharpen(tiny())
    questions = ["what colour is the left shape?", "what shape is on the left?"]  # same length: no padding
    ids = model.question_ids(questions).input_ids
    for kw in (dict(num_beams=1, max_len=6, min_len=1), dict(num_beams=3, max_len=8, min_len=5)):
        ours = model.predict_answers({"image": images(2), "text_input": questions}, **kw)
        assert len(ours) == 2 and all(isinstance(a, str) for a in ours)
        raw = model.blip.generate(input_ids=ids, pixel_values=images(2), num_beams=kw["num_beams"],
                                  max_length=kw["max_len"], min_length=kw["min_len"])
        assert raw.shape[1] <= kw["max_len"] and (raw[:, 0] == model.tokenizer.bos_token_id).all()
        assert ours == [a.strip() for a in model.tokenizer.batch_decode(raw, skip_special_tokens=True)]
    long_ones = model.predict_answers({"image": images(2), "text_input": questions}, num_beams=3, max_len=8, min_len=7)
    assert long_ones != model.predict_answers({"image": images(2), "text_input": questions}, num_beams=3, max_len=3)


def test_answers_do_not_depend_on_the_padding_of_the_other_questions():
    model = sharpen(tiny())
    short, long = "what colour?", QUESTIONS[1]
    for kw in (dict(inference_method="generate", num_beams=3), dict(inference_method="rank", answer_list=CANDIDATES)):
        alone = model.predict_answers({"image": images(1), "text_input": [short]}, **kw)
        batched = model.predict_answers({"image": images(2), "text_input": [short, long]}, **kw)
        assert batched[0] == alone[0]


def test_a_prompt_is_formatted_with_or_put_before_each_question():
    model = tiny()
    seen = []
    original = model.question_ids
    model.question_ids = lambda questions: seen.append(list(questions)) or original(questions)
    samples = {"image": images(1), "text_input": "what shape?"}
    model.predict_answers(samples, max_len=3, prompt="question : {} short answer :")
    model.predict_answers(samples, max_len=3, prompt="a picture of ")
    model.predict_answers(samples, max_len=3)
    assert seen == [["question : what shape? short answer :"], ["a picture of what shape?"], ["what shape?"]]


# ---------------------------------------------------------------- ranking
def test_rank_picks_the_most_likely_candidate_and_k_1_keeps_the_top_first_token():
    model = sharpen(tiny())
    samples = {"image": images(2), "text_input": QUESTIONS}
    full = model.predict_answers(samples, inference_method="rank", answer_list=CANDIDATES, num_ans_candidates=128)
    top1 = model.predict_answers(samples, inference_method="rank", answer_list=CANDIDATES, num_ans_candidates=1)
    assert all(a in CANDIDATES for a in full + top1)
    with torch.no_grad():
        for b in range(2):
            likelihood = [-answer_logprob(model, images(2)[b], QUESTIONS[b], a) for a in CANDIDATES]
            first = [answer_logprob(model, images(2)[b], QUESTIONS[b], a, reduce_first=True) for a in CANDIDATES]
            assert full[b] == CANDIDATES[int(torch.stack(likelihood).argmax())]
            assert top1[b] == CANDIDATES[int(torch.stack(first).argmax())]
    assert full != top1  # the two stages can disagree here, so both checks have teeth


def test_the_answer_list_is_tokenized_once_per_list_and_rank_needs_one():
    model = tiny()
    calls = []
    original = model.answer_ids
    model.answer_ids = lambda answers: calls.append(list(answers)) or original(answers)
    samples = {"image": images(2), "text_input": QUESTIONS}
    for answer_list in (CANDIDATES, list(CANDIDATES), ["yes", "no"], ["yes", "no"]):
        model.predict_answers(samples, inference_method="rank", answer_list=answer_list, num_ans_candidates=3)
    assert calls == [CANDIDATES, ["yes", "no"]]
    with pytest.raises(ValueError, match="answer_list"):
        model.predict_answers(samples, inference_method="rank")
    with pytest.raises(ValueError, match="inference_method"):
        model.predict_answers(samples, inference_method="beam")


# ---------------------------------------------------------------- checkpoints
def answers_of(model: BlipVqa):
    samples = {"image": images(2), "text_input": QUESTIONS}
    return (model.predict_answers(samples, num_beams=3, max_len=6),
            model.predict_answers(samples, inference_method="rank", answer_list=CANDIDATES))


def write_lavis_checkpoint(model: BlipVqa, path):
    """The model's weights under LAVIS ``blip_vqa`` names, with what LAVIS files also hold."""
    state = {hf_to_lavis_key(k): v.clone() for k, v in model.blip.state_dict().items()}
    for prefix in ("text_encoder.", "text_decoder.bert."):  # BERT's persistent position_ids buffer in LAVIS
        n_pos = state[f"{prefix}embeddings.position_embeddings.weight"].shape[0]
        state[f"{prefix}embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
    state["itm_head.weight"] = torch.randn(2, 64)  # pretraining parts a VQA model drops
    state["temp"] = torch.tensor(0.07)
    atomic_save({"model": state}, path)
    return state


def test_a_lavis_checkpoint_loads_through_from_config_and_load_checkpoint(tmp_path):
    source = sharpen(tiny(seed=0))
    path = tmp_path / "model_base_vqa_capfilt_large.pth"
    state = write_lavis_checkpoint(source, path)
    for name in ("visual_encoder.blocks.0.attn.qkv.weight", "visual_encoder.pos_embed",
                 "text_encoder.embeddings.word_embeddings.weight",
                 "text_encoder.encoder.layer.1.crossattention.self.query.weight",
                 "text_decoder.bert.encoder.layer.0.crossattention.output.dense.bias",
                 "text_decoder.cls.predictions.decoder.weight"):
        assert name in state, name
    assert not any(k.startswith("vision_model.") for k in state)

    loaded = BlipVqa.from_config(tiny_cfg(BlipVqa, load_pretrained=True, pretrained=str(path))).eval()
    theirs = source.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=key)
    assert answers_of(loaded) == answers_of(source)

    other = tiny(seed=2)
    assert other.load_checkpoint(str(path)) == ([], [])
    assert answers_of(other) == answers_of(source)

    state["text_encoder.encoder.layer.0.attention.self.relative_bias"] = torch.zeros(3)
    atomic_save({"model": state}, path)
    with pytest.raises(KeyError, match="relative_bias"):
        tiny(seed=3).load_checkpoint(str(path))


def test_okvqa_and_aokvqa_types_load_as_lavis_configures_them(tmp_path):
    url = "https://storage.googleapis.com/sfr-vision-language-research"
    for model_type, name in (("okvqa", "blip_okvqa.pth"), ("aokvqa", "blip_aokvqa.pth")):
        cfg = OmegaConf.load(BlipVqa.default_config_path(model_type)).model
        assert cfg.finetuned == f"{url}/LAVIS/models/BLIP/{name}" and cfg.load_finetuned and cfg.image_size == 480
        assert cfg.pretrained == f"{url}/BLIP/models/model_base_vqa_capfilt_large.pth"
    # LAVIS's rule: with load_finetuned a complete LAVIS checkpoint replaces `pretrained`, which is never read
    source = sharpen(tiny(seed=0))
    path = tmp_path / "blip_okvqa.pth"
    write_lavis_checkpoint(source, path)
    loaded = BlipVqa.from_config(tiny_cfg(BlipVqa, load_finetuned=True, finetuned=str(path), load_pretrained=True,
                                          pretrained=str(tmp_path / "absent.pth"))).eval()
    assert answers_of(loaded) == answers_of(source)
    # a vlft checkpoint (trainable weights only) goes on top of `pretrained`
    other = sharpen(tiny(seed=1), seed=5)
    decoder_only = {k: v for k, v in other.state_dict().items() if k.startswith("blip.text_decoder.")}
    vlft_path = atomic_save({"model": decoder_only}, tmp_path / "checkpoint_best.pth")
    both = BlipVqa.from_config(tiny_cfg(BlipVqa, load_pretrained=True, pretrained=str(path), load_finetuned=True,
                                        finetuned=str(vlft_path))).eval()
    state = both.state_dict()
    assert torch.equal(state["blip.vision_model.encoder.layers.0.self_attn.qkv.weight"],
                       source.state_dict()["blip.vision_model.encoder.layers.0.self_attn.qkv.weight"])
    assert torch.equal(state["blip.text_decoder.cls.predictions.transform.dense.weight"],
                       other.state_dict()["blip.text_decoder.cls.predictions.transform.dense.weight"])


def test_vlft_checkpoint_round_trip(tmp_path):
    model = sharpen(tiny())
    path = atomic_save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    fresh = tiny(seed=1)
    assert fresh.load_checkpoint(str(path)) == ([], [])
    assert answers_of(fresh) == answers_of(model)


# ---------------------------------------------------------------- HF export, LoRA
def test_save_hf_reloads_as_blip_for_question_answering_with_the_same_answers(tmp_path):
    from transformers import AutoProcessor, AutoTokenizer, BlipForQuestionAnswering

    model = sharpen(tiny())
    _, vis, txt = load_model_and_preprocess(name="blip_vqa", model_type="tiny")
    out = model.save_hf(str(tmp_path / "hf"))
    reloaded = BlipForQuestionAnswering.from_pretrained(out).eval()
    for key, value in model.blip.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert reloaded.config.text_config.label_smoothing == 0.1

    again = BlipVqa(reloaded, AutoTokenizer.from_pretrained(out)).eval()
    answer = model.answer_ids(["green circle"])
    logits = []
    for m in (model, again):
        with torch.no_grad():
            states, mask = m.encode_question(images(1), QUESTIONS[:1])
            logits.append(m.blip.text_decoder(input_ids=answer.input_ids, encoder_hidden_states=states,
                                              encoder_attention_mask=mask).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    assert answers_of(again) == answers_of(model)

    # transformers' own processor + generate on a PIL image answer as vlft does
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "BlipProcessor"
    image = make_scene(0, image_size=32)["image"]
    question = txt["eval"]("What colour is the left shape?")
    inputs = processor(images=image, text=question, return_tensors="pt")
    hf_answer = processor.decode(reloaded.generate(**inputs, num_beams=3, max_length=6)[0], skip_special_tokens=True)
    ours = model.predict_answers({"image": vis["eval"](image).unsqueeze(0), "text_input": [question]}, num_beams=3, max_len=6)
    assert hf_answer.strip() == ours[0]


def test_a_hf_directory_loads_through_from_config_at_another_image_size(tmp_path):
    model = sharpen(tiny())
    out = model.save_hf(str(tmp_path / "hf"))
    same = BlipVqa.from_config(tiny_cfg(BlipVqa, load_pretrained=True, pretrained=str(out))).eval()
    assert answers_of(same) == answers_of(model)

    bigger = BlipVqa.from_config(tiny_cfg(BlipVqa, load_pretrained=True, pretrained=str(out), image_size=48)).eval()
    key = "blip.vision_model.embeddings.position_embedding"
    pos, old = bigger.state_dict()[key], model.state_dict()[key]
    assert pos.shape == (1, 1 + 6 * 6, 64) and bigger.blip.config.vision_config.image_size == 48
    torch.testing.assert_close(pos[:, 0], old[:, 0], rtol=0, atol=0)  # [CLS] keeps its position
    answers = bigger.predict_answers({"image": torch.randn(2, 3, 48, 48), "text_input": QUESTIONS})
    assert len(answers) == 2
    from transformers import BlipImageProcessor

    saved = bigger.save_hf(str(tmp_path / "hf48"))
    assert BlipImageProcessor.from_pretrained(saved).size == {"height": 48, "width": 48}


def test_lora_trains_only_the_adapters_and_merges_to_the_same_answers():
    model = sharpen(tiny())
    peft_model = apply_peft(model, {"method": "lora", "target_modules": ["query", "value"], "r": 4})
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".text_encoder." in n for n in trainable) and any(".text_decoder." in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}

    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = peft_model(batch())["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in peft_model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n

    peft_model.eval()
    with torch.no_grad():
        adapted_loss = peft_model(batch())["loss"]
    adapted_answers = answers_of(peft_model)
    merged = peft_model.merge_and_unload()
    assert isinstance(merged, BlipVqa) and not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(batch())["loss"], adapted_loss, rtol=1e-4, atol=1e-5)
    assert answers_of(merged) == adapted_answers
