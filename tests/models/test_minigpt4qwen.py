"""MiniGPT4-Qwen on its tiny type: the reference's freezing defaults and keys, the image
tokens' embeddings replaced by the projected queries in order, batched left-padded
generation equal to one-by-one, answer ranking, chat with streaming, half precision,
gradient checkpointing, and a Qwen3 LLM."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import threading

import pytest
import torch
from omegaconf import OmegaConf

from vlft.common.utils import resolve_config_file
from vlft.datasets.synthetic_shapes import make_scene
from vlft.processors.blip_processors import BlipImageEvalProcessor

TINY = OmegaConf.load(resolve_config_file("configs/models/minigpt4qwen/tiny.yaml")).model


def build(**overrides):
    from vlft.models.minigpt4qwen import MiniGPT4Qwen

    torch.manual_seed(0)
    return MiniGPT4Qwen.from_config(OmegaConf.merge(TINY, overrides))


@pytest.fixture(scope="module")
def model():
    return build()


def images(n: int, start: int = 0) -> torch.Tensor:
    vis = BlipImageEvalProcessor(image_size=32)
    return torch.stack([vis(make_scene(start + i, image_size=32)["image"]) for i in range(n)])


def chat_batch():
    conv = [
        [{"role": "user", "content": "<Img><ImageHere></Img> what colour is the left shape?"},
         {"role": "assistant", "content": "red"}],
        [{"role": "user", "content": "<ImageHere> then <ImageHere>: is there a blue square?"},
         {"role": "assistant", "content": "yes"}, {"role": "user", "content": "is the left shape a circle?"},
         {"role": "assistant", "content": "no"}],
        [{"role": "user", "content": "no image here"}, {"role": "assistant", "content": "yes"}],
    ]
    return {"image": images(3), "n_images": torch.tensor([1, 2, 0]), "conversation": conv,
            "sample_id": ["a", "b", "c"]}


def test_defaults_train_only_the_projection(model):
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"llm_proj.weight", "llm_proj.bias"}
    model.train()
    assert not model.vision_model.training and not model.qformer.training  # the reference's disabled_train
    assert model.llm_model.training
    model.eval()
    assert model.qformer.config.use_qformer_text_input is False
    assert not hasattr(model.qformer, "embeddings")  # no text input: no word / position embeddings


def test_unknown_model_key_is_an_error_with_the_nearest_name():
    with pytest.raises(ValueError, match="unknown model key 'freeze_qfromer'.*freeze_qformer"):
        build(freeze_qfromer=True)


def test_every_type_has_a_yaml_with_the_reference_keys():
    from vlft.models.minigpt4qwen import MiniGPT4Qwen

    keys = {"vit_model", "image_size", "vit_precision", "freeze_vit", "num_query_token", "llm_model", "max_txt_len",
            "freeze_qformer", "freeze_queries", "freeze_proj", "freeze_llm", "get_lora", "lora_r", "lora_alpha",
            "lora_dropout"}
    for name, path in MiniGPT4Qwen.PRETRAINED_MODEL_CONFIG_DICT.items():
        section = OmegaConf.load(resolve_config_file(path)).model
        assert keys <= set(section), (name, keys - set(section))
        assert (section.freeze_vit, section.freeze_qformer, section.freeze_queries, section.freeze_proj,
                section.freeze_llm) == (True, True, True, False, True), name
    v1 = OmegaConf.load(resolve_config_file("configs/models/minigpt4qwen/qwen7b_chat.yaml")).model
    assert v1.trust_remote_code and v1.image_token == "<|extra_0|>" and list(v1.lora_target_modules) == ["c_attn"]
    assert v1.num_query_token == 32 and v1.vit_precision == "fp16" and v1.label_style == "reference"


def test_queries_replace_the_image_token_embeddings_in_order(model):
    batch = chat_batch()
    from vlft.processors.chat import pad_batch

    encoded = [model.chat_encoder.encode(c, int(k)) for c, k in zip(batch["conversation"], batch["n_images"])]
    ids = pad_batch([e.input_ids for e in encoded], model.pad_id)["input_ids"]
    with torch.no_grad():
        embeds = model.embed(ids, batch["image"])
        queries = model.encode_images(batch["image"])  # [3 images, 4 queries, 64]
        plain = model.llm_model.get_input_embeddings()(ids)
    slots = ids == model.chat_encoder.image_token_id
    assert slots.sum(1).tolist() == [4, 8, 0]
    assert torch.equal(embeds[slots], queries.reshape(-1, queries.shape[-1]))
    assert torch.equal(embeds[~slots], plain[~slots])
    with pytest.raises(ValueError, match="8 image tokens in the batch but 4 query embeddings"):
        model.embed(ids[1:2], batch["image"][:1])


def test_forward_loss_trains_the_projection_through_the_images(model):
    batch = chat_batch()
    model.train()
    out = model(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.llm_proj.weight.grad.abs().sum() > 0
    model.zero_grad()
    other = dict(batch, image=images(3, start=50))
    with torch.no_grad():
        assert model(other)["loss"].item() != model(batch)["loss"].item()  # the images reach the loss
    model.eval()


def test_batched_generation_with_left_padding_equals_one_by_one(model):
    batch = chat_batch()
    convs, counts = batch["conversation"], [1, 2, 0]
    decoding = dict(do_sample=False, num_beams=1, max_new_tokens=5, min_new_tokens=5)
    together = model.generate_ids(convs, counts, ["a", "b", "c"], batch["image"], decoding)
    starts = [0, 1, 3]
    for i in range(3):
        image = batch["image"][starts[i]:starts[i] + counts[i]] if counts[i] else None
        alone = model.generate_ids([convs[i]], [counts[i]], ["x"], image, decoding)
        assert torch.equal(together[i], alone[0]), i
    assert together.shape == (3, 5)  # only new tokens come back
    texts = model.generate(batch, num_beams=2, max_length=4, num_captions=2)
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)


def test_rank_picks_the_most_likely_candidate(model):
    batch = {"image": images(2), "text_input": ["what colour is the left shape?", "is there a red circle?"]}
    candidates = ["red", "blue", "yes"]
    convs = [[{"role": "user", "content": model.question_prompt(q)}] for q in batch["text_input"]]
    scores = model.candidate_logprobs(convs, [1, 1], [0, 1], batch["image"], candidates)
    with torch.no_grad():
        for i in range(2):
            for j, c in enumerate(candidates):
                one = {"image": batch["image"][i:i + 1], "n_images": [1],
                       "conversation": [convs[i] + [{"role": "assistant", "content": c}]]}
                out = model(one)
                assert scores[i, j].item() == pytest.approx(-(out["loss"] * out["n_label_tokens"]).item(), rel=1e-4)
    answers = model.predict_answers(batch, inference_method="rank", answer_list=candidates)
    assert answers == [candidates[k] for k in scores.argmax(1).tolist()]
    with pytest.raises(ValueError, match="answer_list"):
        model.predict_answers(batch, inference_method="rank")


def test_chat_streams_the_same_text_it_returns(model):
    from transformers import TextIteratorStreamer

    history = [{"role": "user", "content": "<ImageHere> and <ImageHere> which is red?"}]
    streamer = TextIteratorStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(text=model.chat(
        images(2), history, streamer=streamer, max_new_tokens=6, min_new_tokens=6)))
    worker.start()
    chunks = list(streamer)
    worker.join()
    assert "".join(chunks).strip() == result["text"]
    with pytest.raises(ValueError, match="placeholder"):
        model.chat(images(1), history)


def test_half_precision_frozen_parts_and_gradient_checkpointing():
    half = build(vit_precision="bf16", llm_precision="bf16")
    assert half.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert half.llm_model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert half.llm_proj.weight.dtype == torch.float32  # trained: fp32 master weights
    half.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = half(chat_batch())["loss"]
    loss.backward()
    assert torch.isfinite(loss) and half.llm_proj.weight.grad is not None

    plain, ckpt = build(), build(llm_grad_checkpoint=True, freeze_llm=False)
    plain.train(), ckpt.train()
    assert getattr(ckpt.llm_model, "is_activation_checkpointing", None) or ckpt.llm_model.is_gradient_checkpointing
    batch = chat_batch()
    assert torch.allclose(plain(batch)["loss"], ckpt(batch)["loss"], atol=1e-6)


def test_a_qwen3_llm_with_its_nothink_template():
    qwen3 = build(llm_config={"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "head_dim": 16,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "max_position_embeddings": 512, "tie_word_embeddings": True},
                  chat_template="qwen3_nothink")
    assert type(qwen3.llm_model).__name__ == "Qwen3ForCausalLM"
    assert torch.isfinite(qwen3(chat_batch())["loss"])
    assert len(qwen3.generate(chat_batch(), num_beams=1, max_length=3)) == 3


def test_captions_and_vqa_batches_become_conversations(model):
    caps = model.conversations({"text_input": ["a red circle"]})
    assert caps[0][0]["content"] == model.caption_prompt and caps[0][1] == {"role": "assistant", "content": "a red circle"}
    vqa = model.conversations({"text_input": ["what colour?"], "answers": ["red", "blue", "blue"],
                               "weights": torch.tensor([0.2, 0.4, 0.4]), "n_answers": torch.tensor([3])})
    assert vqa[0] == [{"role": "user", "content": "<Img><ImageHere></Img> what colour?"},
                      {"role": "assistant", "content": "blue"}]
    assert model.question_prompt("x", "Question: {} Short answer:") == "<Img><ImageHere></Img> Question: x Short answer:"


def test_padding_to_max_length_gives_the_same_loss(model):
    wide = build(padding="max_length", max_txt_len=120)
    batch = chat_batch()
    with torch.no_grad():
        assert torch.allclose(wide(batch)["loss"], model.eval()(batch)["loss"], atol=1e-5)
    with pytest.raises(ValueError, match="padding"):
        build(padding="left")


def test_reference_unfreeze_pos_embed_trains_the_frozen_vits_position_embedding():
    model = build(unfreeze_pos_embed=True, vit_precision="fp16", qformer_text_input=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"llm_proj.weight", "llm_proj.bias", "vision_model.embeddings.position_embedding"}
    pos = model.vision_model.embeddings.position_embedding
    assert pos.dtype == torch.float32 and model.vision_model.embeddings.patch_embedding.weight.dtype == torch.float16
    model.train()
    out = model(chat_batch())
    out["loss"].backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="qformer_text_input: true is not supported"):
        build(qformer_text_input=True)


def test_reference_text_processor_base_instruction_is_the_identity():
    from vlft.common.registry import registry

    proc = registry.get_processor_class("base_instruction").from_config({"max_words": 100})
    text = "<Img><ImageHere></Img> Describe THIS image, in detail!"
    assert proc(text) == text and proc.max_words == 100
