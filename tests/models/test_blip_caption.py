"""BLIP captioning (``blip_caption``) on the tiny model type: the zoo API, loss,
generation, checkpoints, LAVIS checkpoint conversion and HF export."""
from __future__ import annotations

from tests.helpers import sharpen, tiny_model, tiny_cfg  # (sets HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
import torch.nn.functional as F

import vlft.models  # noqa: F401  (registers the models)
from vlft.datasets.synthetic_shapes import make_scene
from vlft.models.blip.blip_caption import BlipCaption
from vlft.models.convert.lavis_blip import hf_to_lavis_key
from vlft.runners.checkpoint import atomic_save
from vlft.zoo import load_model, load_model_and_preprocess

CAPTIONS = ["a picture of a red circle to the left of a blue square",
            "a picture of a green triangle to the left of a red square"]


def tiny(seed: int = 0, **overrides) -> BlipCaption:
    return tiny_model(BlipCaption, seed, **overrides)


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def logits(model: BlipCaption, image: torch.Tensor) -> torch.Tensor:
    text = model.tokenize(CAPTIONS[: image.size(0)])
    with torch.no_grad():
        return model.blip(pixel_values=image, input_ids=text.input_ids, attention_mask=text.attention_mask).logits


# ---------------------------------------------------------------- zoo API, loss, generation
def test_load_model_and_preprocess_gives_model_and_processors_that_caption_a_pil_image():
    model, vis, txt = load_model_and_preprocess(name="blip_caption", model_type="tiny", is_eval=True, device="cpu")
    assert isinstance(model, BlipCaption) and not model.training
    assert set(vis) == {"train", "eval"} and set(txt) == {"train", "eval"}
    assert all(p is not None for p in [*vis.values(), *txt.values()])
    image = make_scene(0, image_size=64)["image"]
    for split in ("train", "eval"):
        assert vis[split](image).shape == (3, 32, 32)
    assert txt["train"]("A Red circle.").startswith("a picture of ")  # LAVIS: the prompt is part of the target
    captions = model.generate({"image": vis["eval"](image).unsqueeze(0)}, max_length=12, min_length=6)
    assert len(captions) == 1 and isinstance(captions[0], str) and captions[0]


def test_forward_backward_gives_a_finite_loss_and_gradients_in_vision_and_text():
    model = tiny().train()
    loss = model({"image": images(2), "text_input": CAPTIONS})["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("blip.vision_model.embeddings.patch_embedding.weight",
                 "blip.vision_model.encoder.layers.0.self_attn.qkv.weight",
                 "blip.text_decoder.bert.encoder.layer.0.crossattention.self.query.weight",
                 "blip.text_decoder.bert.encoder.layer.1.attention.self.value.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_prompt_and_padding_are_excluded_from_the_loss():
    model = tiny()
    seen = {}

    def capture(module, args, kwargs):
        seen.update(kwargs)

    handle = model.blip.register_forward_pre_hook(capture, with_kwargs=True)
    texts = [CAPTIONS[0], "a picture of a red circle"]  # the second is shorter: padded
    loss = model({"image": images(2), "text_input": texts})["loss"]
    handle.remove()

    tok = model.tokenizer
    ids, labels = seen["input_ids"], seen["labels"]
    plain = tok(texts, padding="longest", return_tensors="pt").input_ids
    prompt_len = len(tok("a picture of ").input_ids) - 1  # [CLS] a picture of
    assert model.prompt_length == prompt_len == 4
    assert (ids[:, 0] == tok.bos_token_id).all()  # the decoder starts from [DEC], not [CLS]
    assert (labels[:, :prompt_len] == -100).all()
    pad = plain == tok.pad_token_id
    assert pad[1].any() and (labels[pad] == -100).all()
    keep = ~pad
    keep[:, :prompt_len] = False
    assert torch.equal(labels[keep], plain[keep])

    # the same loss by hand: next-token cross-entropy (label smoothing 0.1) over caption words only
    with torch.no_grad():
        scores = model.blip(pixel_values=images(2), input_ids=ids, attention_mask=seen["attention_mask"]).logits
    targets = plain.masked_fill(pad, -100)
    targets[:, :prompt_len] = -100
    expected = F.cross_entropy(scores[:, :-1].reshape(-1, scores.size(-1)), targets[:, 1:].reshape(-1),
                               ignore_index=-100, label_smoothing=0.1)
    torch.testing.assert_close(loss.detach(), expected)
    with_prompt = F.cross_entropy(scores[:, :-1].reshape(-1, scores.size(-1)), plain.masked_fill(pad, -100)[:, 1:].reshape(-1),
                                  ignore_index=-100, label_smoothing=0.1)
    assert not torch.isclose(with_prompt, expected)  # the check above can tell the difference


def test_generate_beam_search_returns_num_captions_per_image_without_the_prompt():
    model = sharpen(tiny())
    captions = model.generate({"image": images(2)}, num_beams=3, num_captions=2, max_length=10, min_length=6)
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    single = model.generate({"image": images(2)}, num_beams=3, max_length=10, min_length=6)
    assert len(single) == 2
    # max_length counts the prompt's [DEC] a picture of (4 tokens), as in LAVIS
    assert all(len(c.split()) <= 10 - model.prompt_length for c in captions + single)
    # the decoder continues "[DEC] a picture of" and the prompt is cut from what it wrote
    prompt_ids = model.tokenizer(["a picture of "] * 2, return_tensors="pt").input_ids
    raw = model.blip.generate(pixel_values=images(2), input_ids=prompt_ids, num_beams=3, max_length=10, min_length=6)
    raw = model.tokenizer.batch_decode(raw, skip_special_tokens=True)
    assert all(r.startswith("a picture of ") for r in raw)
    assert single == [r[len("a picture of "):].strip() for r in raw]
    bare = model.generate({"image": images(2)}, num_beams=1, max_length=10, min_length=6, prompt="")
    prompted = model.generate({"image": images(2)}, num_beams=1, max_length=10, min_length=6)
    assert bare != prompted  # the prompt conditions the decoder


def test_nucleus_sampling_returns_captions_and_follows_the_seed():
    model = sharpen(tiny())
    torch.manual_seed(3)
    a = model.generate({"image": images(2)}, use_nucleus_sampling=True, top_p=0.9, num_captions=3, max_length=12, min_length=5)
    torch.manual_seed(3)
    b = model.generate({"image": images(2)}, use_nucleus_sampling=True, top_p=0.9, num_captions=3, max_length=12, min_length=5)
    assert len(a) == 6 and all(isinstance(c, str) and c for c in a)
    assert a == b
    assert len(set(a)) > 1  # sampled, not the same beam six times


def test_vlft_checkpoint_round_trip_gives_identical_logits_and_captions(tmp_path):
    model = sharpen(tiny(seed=0))
    path = atomic_save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    fresh = tiny(seed=1)
    assert not torch.allclose(logits(fresh, images(2)), logits(model, images(2)))
    missing, unexpected = fresh.load_checkpoint(str(path))
    assert missing == [] and unexpected == []
    torch.testing.assert_close(logits(fresh, images(2)), logits(model, images(2)), rtol=0, atol=0)
    kw = dict(num_beams=3, max_length=12, min_length=5)
    assert fresh.generate({"image": images(2)}, **kw) == model.generate({"image": images(2)}, **kw)


def test_load_model_with_a_checkpoint_applies_it(tmp_path):
    model = sharpen(tiny())
    path = atomic_save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    loaded = load_model("blip_caption", "tiny", is_eval=True, checkpoint=str(path))
    torch.testing.assert_close(logits(loaded, images(2)), logits(model, images(2)), rtol=0, atol=0)


# ---------------------------------------------------------------- LAVIS checkpoints
LAVIS_NAMES = [
    "visual_encoder.cls_token",
    "visual_encoder.pos_embed",
    "visual_encoder.patch_embed.proj.weight",
    "visual_encoder.patch_embed.proj.bias",
    "visual_encoder.blocks.0.norm1.weight",
    "visual_encoder.blocks.0.attn.qkv.weight",
    "visual_encoder.blocks.0.attn.qkv.bias",
    "visual_encoder.blocks.0.attn.proj.weight",
    "visual_encoder.blocks.0.norm2.bias",
    "visual_encoder.blocks.1.mlp.fc1.weight",
    "visual_encoder.blocks.1.mlp.fc2.bias",
    "visual_encoder.norm.weight",
    "visual_encoder.norm.bias",
    "text_decoder.bert.embeddings.word_embeddings.weight",
    "text_decoder.bert.embeddings.position_embeddings.weight",
    "text_decoder.bert.embeddings.LayerNorm.weight",
    "text_decoder.bert.encoder.layer.0.attention.self.query.weight",
    "text_decoder.bert.encoder.layer.0.crossattention.self.key.weight",
    "text_decoder.bert.encoder.layer.1.crossattention.output.LayerNorm.bias",
    "text_decoder.bert.encoder.layer.1.intermediate.dense.weight",
    "text_decoder.bert.encoder.layer.1.output.dense.weight",
    "text_decoder.cls.predictions.bias",
    "text_decoder.cls.predictions.transform.dense.weight",
    "text_decoder.cls.predictions.decoder.weight",
]


def write_lavis_checkpoint(model: BlipCaption, path, extra=True):
    """The model's weights under LAVIS ``blip_caption`` names, as LAVIS saves them."""
    state = {hf_to_lavis_key(k): v.clone() for k, v in model.blip.state_dict().items()}
    if extra:
        # what a LAVIS / BLIP checkpoint also holds: BERT's persistent position_ids buffer and,
        # in a pretraining checkpoint, the ITC / ITM parts a captioner has no use for
        n_pos = state["text_decoder.bert.embeddings.position_embeddings.weight"].shape[0]
        state["text_decoder.bert.embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
        state["text_encoder.embeddings.word_embeddings.weight"] = torch.randn(4, 4)
        state["text_encoder.embeddings.position_ids"] = torch.arange(4).unsqueeze(0)
        state["vision_proj.weight"] = torch.randn(4, 64)
        state["itm_head.bias"] = torch.randn(2)
        state["temp"] = torch.tensor(0.07)
    atomic_save({"model": state}, path)
    return state


def test_a_lavis_checkpoint_loads_through_from_config(tmp_path):
    source = sharpen(tiny(seed=0))
    path = tmp_path / "model_base_caption.pth"
    state = write_lavis_checkpoint(source, path)
    assert set(LAVIS_NAMES) <= set(state), sorted(set(LAVIS_NAMES) - set(state))
    assert not any(k.startswith(("vision_model.", "blip.")) or ".self_attn." in k for k in state)

    torch.manual_seed(1)
    loaded = BlipCaption.from_config(tiny_cfg(BlipCaption, load_pretrained=True, pretrained=str(path))).eval()
    theirs = source.state_dict()
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=key)
    kw = dict(num_beams=3, max_length=12, min_length=5)
    assert loaded.generate({"image": images(2)}, **kw) == source.generate({"image": images(2)}, **kw)

    # the same file as a finetuned checkpoint (model.load_checkpoint recognises LAVIS keys)
    other = tiny(seed=2)
    other.load_checkpoint(str(path))
    torch.testing.assert_close(logits(other, images(2)), logits(source, images(2)), rtol=0, atol=0)


def test_a_lavis_checkpoint_with_keys_blip_lacks_fails_naming_them(tmp_path):
    source = tiny()
    state = write_lavis_checkpoint(source, tmp_path / "x.pth", extra=False)
    state["visual_encoder.blocks.0.attn.relative_position_bias_table"] = torch.zeros(3)
    atomic_save({"model": state}, tmp_path / "x.pth")
    with pytest.raises(KeyError, match="relative_position_bias_table"):
        BlipCaption.from_config(tiny_cfg(BlipCaption, load_pretrained=True, pretrained=str(tmp_path / "x.pth")))


def test_pos_embed_of_a_smaller_image_size_is_interpolated_keeping_cls(tmp_path):
    small = tiny(seed=0, image_size=16)  # patch 8: a 2x2 grid, 5 positions
    key = "blip.vision_model.embeddings.position_embedding"
    with torch.no_grad():  # rows differ, columns do not: a transposed grid would show
        rows = torch.tensor([1.0, -1.0]).view(2, 1, 1).expand(2, 2, 64).reshape(1, 4, 64)
        small.state_dict()[key][:, 1:] = rows
    path = tmp_path / "small.pth"
    write_lavis_checkpoint(small, path)

    big = BlipCaption.from_config(tiny_cfg(BlipCaption, load_pretrained=True, pretrained=str(path))).eval()  # 32 px: 4x4 grid
    pos = big.state_dict()[key]
    assert pos.shape == (1, 17, 64)
    torch.testing.assert_close(pos[:, 0], small.state_dict()[key][:, 0], rtol=0, atol=0)  # [CLS] unchanged
    grid = pos[0, 1:].reshape(4, 4, 64)
    torch.testing.assert_close(grid, grid[:, :1].expand(4, 4, 64))  # each row constant
    assert (grid[:2, 0, 0] > 0).all() and (grid[2:, 0, 0] < 0).all()  # top rows from row 0, bottom from row 1
    expected = F.interpolate(rows.reshape(1, 2, 2, 64).permute(0, 3, 1, 2), size=(4, 4), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1).reshape(16, 64)
    torch.testing.assert_close(pos[0, 1:], expected)
    # everything else is the small model's
    torch.testing.assert_close(big.state_dict()["blip.vision_model.encoder.layers.0.self_attn.qkv.weight"],
                               small.state_dict()["blip.vision_model.encoder.layers.0.self_attn.qkv.weight"])
    assert big.generate({"image": images(2)}, max_length=8, min_length=5)  # and the model runs at 32 px


# ---------------------------------------------------------------- HF export
def test_save_hf_loads_in_a_transformers_pipeline_and_captions_like_vlft(tmp_path):
    from transformers import AutoProcessor, BlipForConditionalGeneration, pipeline

    model = sharpen(tiny())
    _, vis, _ = load_model_and_preprocess(name="blip_caption", model_type="tiny")
    out = model.save_hf(str(tmp_path / "hf"))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    reloaded = BlipForConditionalGeneration.from_pretrained(out)
    for key, value in model.blip.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "BlipProcessor"

    # transformers 5 folded "image-to-text" into "image-text-to-text" (a text prompt is required)
    captioner = pipeline("image-text-to-text", model=str(out))
    scenes = [make_scene(i, image_size=32)["image"] for i in range(3)]
    greedy = dict(num_beams=1, max_length=16, min_length=0)
    ours = [model.generate({"image": vis["eval"](im).unsqueeze(0)}, **greedy)[0] for im in scenes]
    assert len(set(ours)) > 1  # captions depend on the image, so the comparison checks preprocessing too
    for image, caption in zip(scenes, ours):
        result = captioner(image, text="a picture of", generate_kwargs=greedy)
        assert result[0]["generated_text"] == f"a picture of {caption}"
    # with the pipeline's own decoding defaults too (they once ran past the tiny decoder's 32 positions)
    default = captioner(scenes[0], text="a picture of")[0]["generated_text"]
    assert default.startswith("a picture of ") and len(default.split()) > 3
